//! End to end: `plumb agent` serving the authenticated API, `plumb remote`
//! running gadgets through it (one agent, and a fan-out over three), and
//! the cleanup promises: a client that vanishes mid-stream and an agent
//! told to stop leave no BPF program behind. Root tests fail without root.
//!
//! The root tests run one at a time (`support::serial`): the Prometheus
//! test compares node-wide reset counters with what it generated, and the
//! others kill processes (which can make the kernel send resets).

mod support;

use plumb_core::testing::{assert_no_programs_left, marker, require_root};
use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::fake_pod;
use support::http::{sample, scrape, try_get};
use support::*;

/// `plumb agent` on loopback with a token and a metrics listener.
fn start_with_metrics(node: &str, token: &TempFile) -> Agent {
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    start_agent(node, "127.0.0.1:0", Some(token.path()), &metrics)
}

/// Exec events (JSON lines) of `mark` on stdout until `nodes` of them have
/// arrived, as (node, pid, args).
fn wait_marker(
    p: &Proc,
    mark: &str,
    nodes: usize,
    seen: &mut Vec<String>,
) -> Vec<(String, u64, Vec<String>)> {
    execs(&p.out, mark, nodes, Duration::from_secs(20), seen)
        .into_iter()
        .map(|(node, pid, args, _)| (node, pid, args))
        .collect()
}

#[test]
fn tcp_listen_without_auth_is_refused_in_one_line() {
    let out = plumb()
        .args(["agent", "--listen", "0.0.0.0:0"])
        .output()
        .expect("run plumb agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("plumb: refusing to listen on 0.0.0.0:0 without authentication"),
        "{err}"
    );
    let out = plumb()
        .args(["agent", "--listen", "127.0.0.1:0", "--tls-cert", "/x"])
        .output()
        .expect("run plumb agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "plumb: --tls-cert, --tls-key and --client-ca go together"
    );
}

#[test]
fn remote_trace_needs_the_token_and_a_vanished_client_leaves_nothing_loaded() {
    require_root();
    let _serial = serial();
    let token = token();
    let wrong = TempFile::new("wrong", "not-the-token\n");
    let agent = start_with_metrics("node-solo", &token);

    // Wrong and missing tokens: refused, in one clear line, and counted.
    for (tok, msg) in [
        (Some(wrong.path()), "wrong bearer token"),
        (None, "this agent requires a bearer token"),
    ] {
        let out = remote(&[&agent], tok, &["trace", "exec", "--duration", "2s"])
            .output()
            .expect("run plumb remote");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("plumb: agent {}: {msg}", agent.api))
                && first.ends_with("(Unauthenticated)"),
            "{err}"
        );
        assert!(err.contains("1 of 1 agents failed"), "{err}");
        assert_eq!(out.stdout.iter().filter(|&&b| b == b'\n').count(), 1);
    }
    let text = scrape(agent.metrics());
    assert_eq!(
        sample(
            &text,
            "plumb_api_auth_failures_total",
            &[("reason", "invalid")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "plumb_api_auth_failures_total",
            &[("reason", "missing")]
        ),
        Some(1.0),
        "{text}"
    );

    // The right token: the marker exec arrives with its argv and pid.
    let mut client = Proc::spawn(remote(
        &[&agent],
        Some(token.path()),
        &["trace", "exec", "-o", "json", "--duration", "60s"],
    ));
    let mut seen = Vec::new();
    let attached = wait_line(&client.err, Duration::from_secs(30), &mut seen, |l| {
        l.contains("exec attached, BPF program ids")
    })
    .unwrap_or_else(|| panic!("remote exec did not attach: {seen:?}"));
    assert!(
        attached.starts_with("plumb: node node-solo ("),
        "{attached}"
    );
    let session_progs = ids(&attached);
    assert!(!session_progs.is_empty(), "{attached}");
    let mark = marker("remote-exec");
    let pid = exec_true(&mark);
    let mut out_seen = Vec::new();
    let got = wait_marker(&client, &mark, 1, &mut out_seen);
    assert_eq!(
        got,
        vec![(
            "node-solo".to_string(),
            pid as u64,
            vec!["/bin/true".to_string(), mark.clone()]
        )],
        "stdout: {out_seen:?}"
    );

    // The client vanishes mid-stream (SIGKILL: no goodbye): the agent
    // notices, stops the gadget and unloads its programs, and keeps serving.
    client.signal(libc::SIGKILL);
    assert!(client.wait(Duration::from_secs(10)).is_some());
    assert_no_programs_left(&session_progs);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = scrape(agent.metrics());
        if sample(&text, "plumb_api_sessions", &[("node", "node-solo")]) == Some(0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sample(&text, "plumb_api_sessions", &[("node", "node-solo")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "plumb_bpf_programs", &[("node", "node-solo")]),
        Some(agent.counter_progs.len() as f64),
        "{text}"
    );
    // The marker (at least) was delivered, and counted for the exec gadget.
    let delivered = sample(&text, "plumb_gadget_events_total", &[("gadget", "exec")]);
    assert!(delivered.is_some_and(|n| n >= 1.0), "{text}");
    for id in &agent.counter_progs {
        assert!(
            plumb_core::loader::prog_exists(*id),
            "counter program {id} gone"
        );
    }

    // SIGTERM: the agent exits 0 and its always-on programs are gone.
    agent.stop();
}

#[test]
fn fan_out_merges_three_nodes_and_survives_one_dying() {
    require_root();
    let _serial = serial();
    let token = token();
    let names = ["node-a", "node-b", "node-c"];
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|n| start_with_metrics(n, &token))
        .collect();
    let ports: BTreeSet<&str> = agents.iter().map(|a| a.api.as_str()).collect();
    assert_eq!(ports.len(), 3);

    let refs: Vec<&Agent> = agents.iter().collect();
    let mut client = Proc::spawn(remote(
        &refs,
        Some(token.path()),
        &["trace", "exec", "-o", "json", "--duration", "60s"],
    ));
    let mut seen = Vec::new();
    let mut session_progs = Vec::new();
    for _ in 0..3 {
        let l = wait_line(&client.err, Duration::from_secs(30), &mut seen, |l| {
            l.contains("exec attached")
        })
        .unwrap_or_else(|| panic!("not every agent attached: {seen:?}"));
        session_progs.extend(ids(&l));
    }

    // Every agent sees this host's execs: the marker arrives once per node.
    let mark = marker("fan-out");
    let pid = exec_true(&mark);
    let mut out_seen = Vec::new();
    let got = wait_marker(&client, &mark, 3, &mut out_seen);
    let nodes: BTreeSet<String> = got.iter().map(|g| g.0.clone()).collect();
    assert_eq!(
        nodes,
        names.iter().map(|s| s.to_string()).collect(),
        "{out_seen:?}"
    );
    assert!(got.iter().all(|g| g.1 == pid as u64), "{got:?}");

    // node-b dies: reported on stderr, the other two go on.
    let dead = agents.remove(1);
    let dead_api = dead.api.clone();
    drop(dead);
    let l = wait_line(&client.err, Duration::from_secs(20), &mut seen, |l| {
        l.contains(&dead_api)
    })
    .unwrap_or_else(|| panic!("the dead agent was not reported: {seen:?}"));
    assert!(l.contains("[node node-b]"), "{l}");
    assert!(l.ends_with("; the others go on"), "{l}");
    let mark2 = marker("fan-out-after");
    let pid2 = exec_true(&mark2);
    let got = wait_marker(&client, &mark2, 2, &mut out_seen);
    let nodes: BTreeSet<String> = got.iter().map(|g| g.0.clone()).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["node-a".to_string(), "node-c".to_string()]),
        "{out_seen:?}"
    );
    assert!(got.iter().all(|g| g.1 == pid2 as u64), "{got:?}");

    // Interrupting the client stops the gadgets on the survivors; the
    // exit code says one node failed.
    client.signal(libc::SIGINT);
    assert_eq!(client.wait(Duration::from_secs(20)), Some(1));
    let rest = drain(&client.err);
    assert!(
        rest.iter()
            .any(|l| l.contains(", from 2 of 3 agents") && l.ends_with("(interrupted)")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l == "plumb: 1 of 3 agents failed"),
        "{rest:?}"
    );
    assert_no_programs_left(&session_progs);
    for a in agents {
        a.stop();
    }
}

#[test]
fn remote_profile_returns_the_nodes_folded_stacks() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = start_with_metrics("node-prof", &token);
    let busy = Busy::start();
    let pid = busy.pid();
    let out = remote(
        &[&agent],
        Some(token.path()),
        &[
            "profile",
            "cpu",
            "--duration",
            "2s",
            "--frequency",
            "99",
            "--pid",
            &pid,
            "-o",
            "folded",
        ],
    )
    .output()
    .expect("run plumb remote profile");
    drop(busy);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // plumb: node node-prof: N samples on C CPUs in 2.0s, L lost, ...
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("plumb: node node-prof: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    let samples: u64 = summary
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    // One CPU busy for 2 s at 99 Hz: about 198 samples.
    assert!((100..=230).contains(&samples), "{summary}");
    let mut total = 0;
    // Each stack under its node, then the process.
    for l in stdout.lines() {
        assert!(l.starts_with("node-prof;sh;"), "{l}");
        let (_, n) = l.rsplit_once(' ').expect("folded: stack count");
        total += n.parse::<u64>().expect("a count");
    }
    assert_eq!(total, samples, "{stdout}");
    agent.stop();
}

#[test]
fn remote_profile_leaves_the_agents_own_threads_out_unless_asked_for() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = start_with_metrics("node-self", &token);
    let agent_pid = u64::try_from(agent.proc.pid()).expect("a pid");
    let profile = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "profile",
            "cpu",
            "--duration",
            "2s",
            "-F",
            "999",
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = remote(&[&agent], Some(token.path()), &args)
            .output()
            .expect("run plumb remote profile");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        serde_json::from_slice(&out.stdout).expect("JSON profile")
    };
    let of_agent = |p: &serde_json::Value| -> u64 {
        p["stacks"]
            .as_array()
            .expect("stacks")
            .iter()
            .filter(|s| s["pid"].as_u64() == Some(agent_pid))
            .map(|s| s["count"].as_u64().unwrap_or(0))
            .sum()
    };
    // No filter: the node's every process, but not the agent sampling it.
    let p = profile(&[]);
    assert!(p["samples"].as_u64().unwrap_or(0) > 0, "nothing sampled");
    assert_eq!(of_agent(&p), 0, "the agent ({agent_pid}) is in its profile");
    assert_eq!(p["filtered_in_user_space"], 0);
    // --include-self travels to the agent: nothing is left out at all.
    let p = profile(&["--include-self"]);
    assert_eq!(p["filtered_in_kernel"], 0, "no filter, nothing left out");
    assert!(p["samples"].as_u64().unwrap_or(0) > 0, "nothing sampled");
    agent.stop();
}

/// A Prometheus server on loopback with its own config and data directory,
/// killed (by pid) and removed when the test ends.
struct Prometheus {
    proc: Proc,
    dir: PathBuf,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn start_prometheus(target: &str) -> Prometheus {
    let dir = std::env::temp_dir().join(marker("prometheus"));
    std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: plumb\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("prometheus config");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!("--web.listen-address={addr}"))
    .current_dir(&dir);
    let p = Prometheus {
        proc: Proc::spawn(cmd),
        dir,
        addr,
    };
    // Up, and the agent scraped at least once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if query(&p, "up{job=\"plumb\"}", None) == Some(1.0) {
            return p;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log: Vec<String> = p.proc.err.try_iter().collect();
    panic!("prometheus did not scrape the agent: {log:?}");
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The single value of an instant query through Prometheus's HTTP API
/// (`/api/v1/query`), at `time` (Unix seconds) or now; None when the
/// query matched nothing.
fn query(p: &Prometheus, q: &str, time: Option<f64>) -> Option<f64> {
    let mut path = format!("/api/v1/query?query={}", url_encode(q));
    if let Some(t) = time {
        path.push_str(&format!("&time={t:.3}"));
    }
    // Not up yet, or not answering 200: no value.
    let (code, _, body) = try_get(&p.addr, &path).ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    assert_eq!(v["status"], "success", "{body}");
    let r = v["data"]["result"].as_array()?;
    assert!(r.len() <= 1, "one series expected: {body}");
    r.first()?["value"][1].as_str()?.parse().ok()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Wait until Prometheus has scraped a value `baseline + want` for `q`; the
/// last value seen.
fn wait_increase(p: &Prometheus, q: &str, baseline: f64, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = query(p, q, None).unwrap_or(0.0);
    while last - baseline != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        last = query(p, q, None).unwrap_or(0.0);
    }
    last
}

#[test]
fn prometheus_sees_the_drops_and_resets_made_in_the_lab() {
    require_root();
    let _serial = serial();
    let token = token();
    let mut lab = plumb_netlab::Lab::new("prom").expect("lab");
    let client = lab.add_pod("cli").expect("client pod");
    let server = lab.add_pod("srv").expect("server pod");
    let (drop_port, closed_port) = (8091u16, 8092u16);
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {drop_port} -j DROP"
        ))
        .expect("DROP rule");
    // A process of a fake pod holds each lab namespace (before the agent
    // starts), so the series of this test's traffic carry these pods'
    // uids, whatever else the host does meanwhile.
    let client_pod = fake_pod::FakePod::new(Some(&client.ns.path()));
    let server_pod = fake_pod::FakePod::new(Some(&server.ns.path()));
    let agent = start_with_metrics("node-prom", &token);
    let prom = start_prometheus(agent.metrics());

    let drops_q = format!(
        "sum(plumb_packet_drops_total{{reason=\"NETFILTER_DROP\",pod_uid=\"{}\"}})",
        server_pod.uid
    );
    let sent_q = format!(
        "sum(plumb_tcp_resets_total{{direction=\"sent\",pod_uid=\"{}\"}})",
        server_pod.uid
    );
    let recv_q = format!(
        "sum(plumb_tcp_resets_total{{direction=\"received\",pod_uid=\"{}\"}})",
        client_pod.uid
    );
    let (drops_q, sent_q, recv_q) = (drops_q.as_str(), sent_q.as_str(), recv_q.as_str());
    // What Prometheus holds before the traffic (absent: nothing yet).
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = now_secs();
    let base = |q: &str| query(&prom, q, Some(t0)).unwrap_or(0.0);
    let (drops0, sent0, recv0) = (base(drops_q), base(sent_q), base(recv_q));
    let out_rsts0 = server.ns.snmp("Tcp", "OutRsts").expect("OutRsts");

    // N connects into the DROP rule (each SYN and its retransmit dropped)
    // and N to a closed port (one reset sent by the server, one received).
    let n = 3;
    for _ in 0..n {
        let target = std::net::SocketAddr::from((server.ip, drop_port));
        let r = client
            .ns
            .run(move || TcpStream::connect_timeout(&target, Duration::from_millis(1500)))
            .expect("connect in the lab");
        assert!(r.is_err(), "the DROP rule lets nothing through");
        let target = std::net::SocketAddr::from((server.ip, closed_port));
        let r = client
            .ns
            .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(2)))
            .expect("connect in the lab");
        assert_eq!(
            r.expect_err("nothing listens").kind(),
            std::io::ErrorKind::ConnectionRefused
        );
    }
    let listing = server.ns.sh("iptables -w -vnxL INPUT").expect("iptables");
    let rule = plumb_core::testing::iptables_packets(&listing, &format!("dpt:{drop_port}"))
        .expect("the rule's counter");
    assert!(rule >= n, "every connect sent at least one SYN: {listing}");
    let out_rsts = server.ns.snmp("Tcp", "OutRsts").expect("OutRsts") - out_rsts0;
    assert_eq!(
        out_rsts, n,
        "the server's kernel sent one reset per connect"
    );

    let drops = wait_increase(&prom, drops_q, drops0, rule as f64);
    assert_eq!(
        drops - drops0,
        rule as f64,
        "drops in Prometheus == rule counter"
    );
    let sent = wait_increase(&prom, sent_q, sent0, out_rsts as f64);
    assert_eq!(sent - sent0, out_rsts as f64, "resets sent == Tcp OutRsts");
    let recv = wait_increase(&prom, recv_q, recv0, n as f64);
    assert_eq!(
        recv - recv0,
        n as f64,
        "resets received == refused connects"
    );
    // Health series are there too.
    assert_eq!(
        query(&prom, "plumb_bpf_programs", None),
        Some(agent.counter_progs.len() as f64)
    );
    assert_eq!(query(&prom, "plumb_build_info", None), Some(1.0));

    drop(prom);
    agent.stop();
}
