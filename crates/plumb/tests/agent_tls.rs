//! End to end: `plumb agent` with mutual TLS. Certificates are made for
//! the test with the `openssl` CLI: a CA, the agent's certificate for
//! 127.0.0.1 and a client certificate signed by that CA, and an unrelated
//! CA with a client certificate of its own. The right client runs a remote
//! `trace exec`; a client without a certificate and one from the other CA
//! are refused in one line, and each refusal is counted in /metrics. Root
//! tests fail without root.

mod support;

use plumb_core::testing::{assert_no_programs_left, marker, require_root};
use std::path::Path;
use std::time::Duration;
use support::certs::{make_ca, make_leaf};
use support::http::{sample, scrape};
use support::*;

/// A CA, the agent's certificate for 127.0.0.1 and a client certificate
/// it signed; an unrelated CA and a client certificate of its own.
fn make_certs() -> TempDir {
    let dir = TempDir::new("tls");
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_leaf(d, "agent", "ca", "IP:127.0.0.1", "serverAuth");
    make_leaf(d, "client", "ca", "DNS:plumb-client", "clientAuth");
    make_leaf(d, "rogue", "other-ca", "DNS:plumb-rogue", "clientAuth");
    dir
}

/// Refusals by reason, as the agent's /metrics counts them.
fn auth_failures(metrics: &str) -> (Option<f64>, Option<f64>) {
    let text = scrape(metrics);
    let n = |r| sample(&text, "plumb_api_auth_failures_total", &[("reason", r)]);
    (n("missing"), n("invalid"))
}

#[test]
fn mutual_tls_admits_the_right_client_and_counts_the_others() {
    require_root();
    let certs = make_certs();
    let p = |n: &str| certs.path().join(n);
    std::fs::write(p("garbage.pem"), "not a certificate\n").expect("write garbage");

    // A file that holds no certificate: one line, before anything starts.
    let out = plumb()
        .args(["agent", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(p("garbage.pem"))
        .arg("--tls-key")
        .arg(p("agent.key"))
        .arg("--client-ca")
        .arg(p("ca.crt"))
        .output()
        .expect("run plumb agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines().last(),
        Some("plumb: TLS configuration: TLS certificate: no PEM certificate in it"),
        "{err}"
    );
    assert!(!err.contains("plumb agent: node "), "{err}");

    let s = |n: &str| p(n).display().to_string();
    let agent = start_agent(
        "node-tls",
        "127.0.0.1:0",
        None,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &s("agent.crt"),
            "--tls-key",
            &s("agent.key"),
            "--client-ca",
            &s("ca.crt"),
        ],
    );
    let (api, metrics) = (agent.api.as_str(), agent.metrics());
    assert!(api.starts_with("127.0.0.1:"), "{:?}", agent.log);

    let remote = |tls: &[&Path], args: &[&str]| {
        let mut cmd = remote(&[&agent], None, &[]);
        for (flag, file) in ["--tls-ca", "--tls-cert", "--tls-key"].iter().zip(tls) {
            cmd.arg(flag).arg(file);
        }
        cmd.args(args);
        cmd
    };

    // No client certificate (the agent itself is verified), then a
    // certificate from a CA the agent does not trust: refused in one line,
    // nothing on stdout, and each counted once under its reason.
    let (ca, cert, key) = (p("ca.crt"), p("client.crt"), p("client.key"));
    let (rogue_cert, rogue_key) = (p("rogue.crt"), p("rogue.key"));
    let cases: [(&[&Path], &str, (f64, f64)); 2] = [
        (
            &[&ca],
            "this agent requires a client certificate (give --tls-cert and --tls-key)",
            (1.0, 0.0),
        ),
        (
            &[&ca, &rogue_cert, &rogue_key],
            "this agent refused our client certificate (TLS alert UnknownCA: is it signed by the agent's client CA?)",
            (1.0, 1.0),
        ),
    ];
    for (tls, msg, (missing, invalid)) in cases {
        let out = remote(tls, &["trace", "exec", "-o", "json", "--duration", "5s"])
            .output()
            .expect("run plumb remote");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let first = err.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            format!("plumb: agent {api}: {msg} (Unauthenticated)"),
            "{err}"
        );
        assert!(
            err.lines().any(|l| l == "plumb: 1 of 1 agents failed"),
            "{err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            auth_failures(metrics),
            (Some(missing), Some(invalid)),
            "after {tls:?}"
        );
    }

    // A client whose CA file holds no certificate: one line, not counted.
    let garbage = p("garbage.pem");
    let out = remote(&[&garbage], &["gadgets"])
        .output()
        .expect("run plumb remote");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines().next(),
        Some("plumb: TLS configuration: CA certificate: no PEM certificate in it"),
        "{err}"
    );
    assert_eq!(auth_failures(metrics), (Some(1.0), Some(1.0)));

    // The right certificate: the marker exec arrives with its argv and pid.
    let mut client = Proc::spawn(remote(
        &[&ca, &cert, &key],
        &["trace", "exec", "-o", "json", "--duration", "60s"],
    ));
    let mut seen = Vec::new();
    let attached = wait_line(&client.err, Duration::from_secs(30), &mut seen, |l| {
        l.contains("exec attached, BPF program ids")
    })
    .unwrap_or_else(|| panic!("remote exec did not attach over mutual TLS: {seen:?}"));
    assert!(
        attached.starts_with(&format!("plumb: node node-tls ({api})")),
        "{attached}"
    );
    let session_progs = ids(&attached);
    assert!(!session_progs.is_empty(), "{attached}");
    let mark = marker("tls-exec");
    let pid = exec_true(&mark) as u64;
    let mut out_seen = Vec::new();
    let line = wait_line(&client.out, Duration::from_secs(20), &mut out_seen, |l| {
        l.contains(&mark)
    })
    .unwrap_or_else(|| panic!("the marker exec did not arrive: {out_seen:?}"));
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON event");
    assert_eq!(v["node"], "node-tls", "{line}");
    assert_eq!(v["pid"].as_u64(), Some(pid), "{line}");
    assert_eq!(v["args"], serde_json::json!(["/bin/true", mark]), "{line}");

    // Ctrl-C: the client ends cleanly and the agent unloads its session.
    client.signal(libc::SIGINT);
    assert_eq!(client.wait(Duration::from_secs(20)), Some(0));
    assert_no_programs_left(&session_progs);
    // The admitted client was not counted as a refusal.
    assert_eq!(auth_failures(metrics), (Some(1.0), Some(1.0)));

    agent.stop();
}
