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

/// The root tests run one at a time: the Prometheus test compares node-wide
/// reset counters with what it generated, and the others kill processes
/// (which can make the kernel send resets).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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

/// The value of the sample `name` whose labels include `labels`.
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
    let _serial = serial();
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
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(agent.proc.wait(Duration::from_secs(20)), Some(0));
    assert_no_programs_left(&agent.counter_progs);
}

#[test]
fn fan_out_merges_three_nodes_and_survives_one_dying() {
    require_root();
    let _serial = serial();
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

/// A busy shell loop, killed when the test ends.
struct Busy(Child);

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn remote_profile_returns_the_nodes_folded_stacks() {
    require_root();
    let _serial = serial();
    let token = TempFile::new("token", &format!("{}\n", marker("secret")));
    let mut agent = start_agent("node-prof", token.path());
    let busy = Busy(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("start a busy loop"),
    );
    let pid = busy.0.id().to_string();
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
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(agent.proc.wait(Duration::from_secs(20)), Some(0));
    assert_no_programs_left(&agent.counter_progs);
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

/// GET, returning None unless the answer is 200.
fn try_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    if !resp.starts_with("HTTP/1.1 200") {
        return None;
    }
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
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
    let body = try_get(&p.addr, &path)?;
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
    let token = TempFile::new("token", &format!("{}\n", marker("secret")));
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
    let mut agent = start_agent("node-prom", token.path());
    let prom = start_prometheus(&agent.metrics);

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
    agent.proc.signal(libc::SIGTERM);
    assert_eq!(agent.proc.wait(Duration::from_secs(20)), Some(0));
    assert_no_programs_left(&agent.counter_progs);
}

#[path = "support/fake_pod.rs"]
mod fake_pod;
