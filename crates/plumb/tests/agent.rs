//! End to end: `plumb agent` serving the authenticated API, `plumb remote`
//! running gadgets through it (one agent, and a fan-out over three), and
//! the cleanup promises: a client that vanishes mid-stream and an agent
//! told to stop leave no BPF program behind. Root tests fail without root.

use plumb_core::testing::{assert_no_programs_left, marker, require_root};
use std::collections::BTreeSet;
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

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Wait for the exit status (after a signal, or at the natural end).
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

/// The first line from `rx` satisfying `pred`, within `timeout`; lines
/// seen are appended to `seen` for failure messages.
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

/// A file removed when the test ends.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, content: &str) -> TempFile {
        let p = std::env::temp_dir().join(marker(tag));
        std::fs::write(&p, content).expect("write temp file");
        TempFile(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running agent and where it listens.
struct Agent {
    proc: Proc,
    api: String,
    metrics: String,
    node: String,
    counter_progs: Vec<u32>,
}

fn start_agent(node: &str, token: &Path) -> Agent {
    let mut cmd = plumb();
    cmd.args([
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .arg("--token-file")
    .arg(token)
    .args(["--node-name", node]);
    let proc = Proc::spawn(cmd);
    let mut seen = Vec::new();
    let ready = wait_line(&proc.err, Duration::from_secs(60), &mut seen, |l| {
        l.starts_with("plumb agent: node ")
    })
    .unwrap_or_else(|| panic!("agent {node} did not start: {seen:?}"));
    // plumb agent: node N api A metrics http://M/metrics counter programs 1,2
    let word_after = |w: &str| {
        let mut it = ready.split_whitespace();
        it.find(|x| *x == w);
        it.next().unwrap_or_default().to_string()
    };
    let metrics = word_after("metrics")
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let counter_progs = ready
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect::<Vec<u32>>();
    assert!(!counter_progs.is_empty(), "{ready}");
    Agent {
        api: word_after("api"),
        metrics,
        node: node.to_string(),
        counter_progs,
        proc,
    }
}

/// GET http://addr/path with a plain HTTP/1.1 request; the body.
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

/// The value of the sample `name{labels}` in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn remote(agents: &[&Agent], token: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = plumb();
    let addrs: Vec<&str> = agents.iter().map(|a| a.api.as_str()).collect();
    cmd.args(["-v", "remote", "--agents", &addrs.join(",")]);
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    cmd.args(args);
    cmd
}

/// Run a program whose argv holds `mark`; its pid.
fn exec_marker(mark: &str) -> u32 {
    let mut c = Command::new("/bin/true")
        .arg(mark)
        .spawn()
        .expect("run /bin/true");
    let pid = c.id();
    c.wait().expect("wait /bin/true");
    pid
}

/// Exec events (JSON lines) of `mark` on stdout until `nodes` of them have
/// arrived, as (node, pid, args).
fn wait_marker(
    p: &Proc,
    mark: &str,
    nodes: usize,
    seen: &mut Vec<String>,
) -> Vec<(String, u64, Vec<String>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < nodes {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(l) = wait_line(&p.out, left, seen, |l| l.contains(mark)) else {
            break;
        };
        let v: serde_json::Value = serde_json::from_str(&l).expect("a JSON event");
        let args = v["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        got.push((
            v["node"].as_str().unwrap_or_default().to_string(),
            v["pid"].as_u64().unwrap_or_default(),
            args,
        ));
    }
    got
}

/// BPF program ids from the client's `-v` "attached" lines.
fn attached_ids(line: &str) -> Vec<u32> {
    line.rsplit(' ')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
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
    let token = TempFile::new("token", &format!("{}\n", marker("secret")));
    let wrong = TempFile::new("wrong", "not-the-token\n");
    let mut agent = start_agent("node-solo", token.path());

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
    let text = http_get(&agent.metrics, "/metrics");
    assert_eq!(
        sample(&text, "plumb_api_auth_failures_total{reason=\"invalid\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "plumb_api_auth_failures_total{reason=\"missing\"}"),
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
    let session_progs = attached_ids(&attached);
    assert!(!session_progs.is_empty(), "{attached}");
    let mark = marker("remote-exec");
    let pid = exec_marker(&mark);
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
        text = http_get(&agent.metrics, "/metrics");
        if sample(&text, "plumb_api_sessions") == Some(0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sample(&text, "plumb_api_sessions"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "plumb_bpf_programs"),
        Some(agent.counter_progs.len() as f64),
        "{text}"
    );
    for id in &agent.counter_progs {
        assert!(
            plumb_core::loader::prog_exists(*id),
            "counter program {id} gone"
        );
    }

    // SIGTERM: the agent exits 0 and its always-on programs are gone.
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(agent.proc.wait(Duration::from_secs(20)), Some(0));
    assert_no_programs_left(&agent.counter_progs);
}

#[test]
fn fan_out_merges_three_nodes_and_survives_one_dying() {
    require_root();
    let token = TempFile::new("token", &format!("{}\n", marker("secret")));
    let names = ["node-a", "node-b", "node-c"];
    let mut agents: Vec<Agent> = names.iter().map(|n| start_agent(n, token.path())).collect();
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
        session_progs.extend(attached_ids(&l));
    }

    // Every agent sees this host's execs: the marker arrives once per node.
    let mark = marker("fan-out");
    let pid = exec_marker(&mark);
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
    let pid2 = exec_marker(&mark2);
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
    let rest: Vec<String> = client.err.try_iter().collect();
    assert!(
        rest.iter()
            .any(|l| l.contains("events from 2 of 3 agents") && l.ends_with("(interrupted)")),
        "{rest:?}"
    );
    assert!(
        rest.iter().any(|l| l == "plumb: 1 of 3 agents failed"),
        "{rest:?}"
    );
    assert_no_programs_left(&session_progs);
    for a in &mut agents {
        a.proc.signal(libc::SIGTERM);
        assert_eq!(a.proc.wait(Duration::from_secs(20)), Some(0), "{}", a.node);
        assert_no_programs_left(&a.counter_progs);
    }
}
