//! End to end: `plumb agent` with mutual TLS. Certificates are made for
//! the test with the `openssl` CLI: a CA, the agent's certificate for
//! 127.0.0.1 and a client certificate signed by that CA, and an unrelated
//! CA with a client certificate of its own. The right client runs a remote
//! `trace exec`; a client without a certificate and one from the other CA
//! are refused in one line, and each refusal is counted in /metrics. Root
//! tests fail without root.

use plumb_core::testing::{assert_no_programs_left, marker, require_root};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn plumb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plumb"))
}

/// A child process killed (SIGKILL) and reaped when the test ends, however
/// it ends; its stdout and stderr lines arrive on channels.
struct Proc {
    child: Child,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plumb");
        let out = lines(child.stdout.take().expect("stdout"));
        let err = lines(child.stderr.take().expect("stderr"));
        Proc { child, out, err }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_line(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
    seen: &mut Vec<String>,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let l = rx.recv_timeout(left).ok()?;
        seen.push(l.clone());
        if pred(&l) {
            return Some(l);
        }
    }
}

/// A directory of certificates, removed when the test ends.
struct CertDir(PathBuf);

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl CertDir {
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (in .ci/apt-packages)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA `name`.crt/.key.
fn make_ca(dir: &Path, name: &str) {
    let (crt, key, subj) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &subj,
            "-keyout",
            &key,
            "-out",
            &crt,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf certificate `name`.crt/.key signed by CA `ca`.
fn make_leaf(dir: &Path, name: &str, ca: &str, san: &str, usage: &str) {
    let (crt, key, subj) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("/CN={name}"),
    );
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    let (san, usage) = (
        format!("subjectAltName={san}"),
        format!("extendedKeyUsage={usage}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &subj,
            "-keyout",
            &key,
            "-out",
            &crt,
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            &san,
            "-addext",
            &usage,
        ],
    );
}

fn make_certs() -> CertDir {
    let dir = CertDir(std::env::temp_dir().join(marker("tls")));
    std::fs::create_dir_all(&dir.0).expect("cert dir");
    make_ca(&dir.0, "ca");
    make_ca(&dir.0, "other-ca");
    make_leaf(&dir.0, "agent", "ca", "IP:127.0.0.1", "serverAuth");
    make_leaf(&dir.0, "client", "ca", "DNS:plumb-client", "clientAuth");
    make_leaf(&dir.0, "rogue", "other-ca", "DNS:plumb-rogue", "clientAuth");
    dir
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read metrics");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (n == name && all).then(|| value.parse().ok())?
    })
}

/// Refusals by reason, as the agent's /metrics counts them.
fn auth_failures(metrics: &str) -> (Option<f64>, Option<f64>) {
    let text = http_get(metrics, "/metrics");
    let n = |r| sample(&text, "plumb_api_auth_failures_total", &[("reason", r)]);
    (n("missing"), n("invalid"))
}

/// BPF program ids at the end of a line ("... ids 1,2,3").
fn ids(line: &str) -> Vec<u32> {
    line.rsplit(' ')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn mutual_tls_admits_the_right_client_and_counts_the_others() {
    require_root();
    let certs = make_certs();
    let p = |n: &str| certs.path(n);
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

    let mut cmd = plumb();
    cmd.args(["agent", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--node-name", "node-tls"])
        .arg("--tls-cert")
        .arg(p("agent.crt"))
        .arg("--tls-key")
        .arg(p("agent.key"))
        .arg("--client-ca")
        .arg(p("ca.crt"));
    let mut agent = Proc::spawn(cmd);
    let mut seen = Vec::new();
    let ready = wait_line(&agent.err, Duration::from_secs(60), &mut seen, |l| {
        l.starts_with("plumb agent: node ")
    })
    .unwrap_or_else(|| panic!("agent did not start: {seen:?}"));
    let word_after = |w: &str| {
        let mut it = ready.split_whitespace();
        it.find(|x| *x == w);
        it.next().unwrap_or_default().to_string()
    };
    let api = word_after("api");
    let metrics = word_after("metrics")
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let counter_progs = ids(&ready);
    assert!(api.starts_with("127.0.0.1:"), "{ready}");
    assert!(!counter_progs.is_empty(), "{ready}");

    let remote = |tls: &[&Path], args: &[&str]| {
        let mut cmd = plumb();
        cmd.args(["-v", "remote", "--agents", &api]);
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
            auth_failures(&metrics),
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
    assert_eq!(auth_failures(&metrics), (Some(1.0), Some(1.0)));

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
    let mut c = Command::new("/bin/true")
        .arg(&mark)
        .spawn()
        .expect("run /bin/true");
    let pid = c.id() as u64;
    c.wait().expect("wait /bin/true");
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
    assert_eq!(auth_failures(&metrics), (Some(1.0), Some(1.0)));

    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(20)), Some(0));
    assert_no_programs_left(&counter_progs);
}
