//! End to end: `plumb remote ... logs` follows the agent's own log. Two
//! followers at once each receive the lines the test makes the agent log
//! (a refused wrong token at WARN, a remote run at INFO whose event count
//! matches what the client received), and both streams end cleanly when
//! the agent gets SIGTERM. Root tests fail without root.

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

fn remote(api: &str, token: &Path, args: &[&str]) -> Command {
    let mut cmd = plumb();
    cmd.args(["-v", "remote", "--agents", api, "--token-file"])
        .arg(token)
        .args(args);
    cmd
}

/// Log lines (JSON) from a follower until one satisfies `pred`; every line
/// seen is kept in `seen`.
fn wait_log(
    follower: &Proc,
    seen: &mut Vec<serde_json::Value>,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let l = follower.out.recv_timeout(left).ok()?;
        let v: serde_json::Value = serde_json::from_str(&l).expect("a JSON log line");
        seen.push(v.clone());
        if pred(&v) {
            return Some(v);
        }
    }
}

#[test]
fn two_followers_get_the_agents_log_until_it_stops() {
    require_root();
    let token = TempFile::new("token", &format!("{}\n", marker("secret")));
    let wrong = TempFile::new("wrong", "not-the-token\n");
    let mut cmd = plumb();
    cmd.args(["agent", "--listen", "127.0.0.1:0"])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--node-name",
            "node-logs",
        ])
        .arg("--token-file")
        .arg(token.path());
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
    let counter_progs: Vec<u32> = ready
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(!counter_progs.is_empty(), "{ready}");

    // Two followers; each says when the agent has subscribed it.
    let mut followers: Vec<Proc> = (0..2)
        .map(|_| Proc::spawn(remote(&api, token.path(), &["logs", "-o", "json"])))
        .collect();
    for f in &followers {
        let mut seen = Vec::new();
        let l = wait_line(&f.err, Duration::from_secs(20), &mut seen, |l| {
            l.contains("following its log")
        })
        .unwrap_or_else(|| panic!("follower did not start: {seen:?}"));
        assert_eq!(
            l,
            format!("plumb: node node-logs ({api}): following its log")
        );
    }

    // A wrong token: refused, and logged at WARN.
    let out = remote(&api, wrong.path(), &["gadgets"])
        .output()
        .expect("run plumb remote");
    assert_eq!(out.status.code(), Some(1));
    let text = http_get(&metrics, "/metrics");
    assert_eq!(
        sample(
            &text,
            "plumb_api_auth_failures_total",
            &[("reason", "invalid")]
        ),
        Some(1.0),
        "{text}"
    );

    // A remote run with a marker exec: logged at INFO when it starts and
    // when it ends, with the number of events the client received.
    let mark = marker("logs-exec");
    let mut run = Proc::spawn(remote(
        &api,
        token.path(),
        &["trace", "exec", "-o", "json", "--duration", "3s"],
    ));
    let mut run_err = Vec::new();
    wait_line(&run.err, Duration::from_secs(30), &mut run_err, |l| {
        l.contains("exec attached")
    })
    .unwrap_or_else(|| panic!("remote exec did not attach: {run_err:?}"));
    let mut c = Command::new("/bin/true")
        .arg(&mark)
        .spawn()
        .expect("run /bin/true");
    c.wait().expect("wait /bin/true");
    assert_eq!(run.wait(Duration::from_secs(30)), Some(0), "{run_err:?}");
    let events: Vec<String> = run.out.try_iter().collect();
    assert!(
        events.iter().any(|l| l.contains(&mark)),
        "the marker exec is among the events: {events:?}"
    );
    let summary: Vec<String> = run.err.try_iter().collect();
    assert!(
        summary
            .iter()
            .any(|l| l == &format!("plumb: {} events from 1 of 1 agents, 0 lost", events.len())),
        "{summary:?}"
    );

    for f in &followers {
        let mut seen = Vec::new();
        let refused = wait_log(f, &mut seen, |v| {
            v["message"] == "refused a call with a wrong token"
        })
        .unwrap_or_else(|| panic!("the refusal was not streamed: {seen:?}"));
        assert_eq!(refused["level"], "WARN", "{refused}");
        assert_eq!(refused["node"], "node-logs", "{refused}");
        assert_eq!(refused["target"], "plumb_agent::auth", "{refused}");
        let started = wait_log(f, &mut seen, |v| {
            v["message"] == "remote run started gadget=exec"
        })
        .unwrap_or_else(|| panic!("the run's start was not streamed: {seen:?}"));
        assert_eq!(started["level"], "INFO", "{started}");
        let want = format!(
            "remote run ended gadget=exec seen={} lost=0 dropped=0 filtered=0 reason=Duration",
            events.len()
        );
        let ended = wait_log(f, &mut seen, |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("remote run ended"))
        })
        .unwrap_or_else(|| panic!("the run's end was not streamed: {seen:?}"));
        assert_eq!(ended["message"], want.as_str(), "{ended}");
        assert_eq!(ended["level"], "INFO", "{ended}");
        // Each line once: exactly one refusal was made.
        let refusals = seen
            .iter()
            .filter(|v| v["message"] == "refused a call with a wrong token")
            .count();
        assert_eq!(refusals, 1, "{seen:?}");
    }

    // SIGTERM: the agent ends both streams and exits; the followers exit 0.
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(20)), Some(0));
    for f in &mut followers {
        assert_eq!(f.wait(Duration::from_secs(20)), Some(0));
        let err: Vec<String> = f.err.try_iter().collect();
        assert!(
            err.contains(&format!(
                "plumb: node node-logs ({api}): the agent ended its log stream"
            )),
            "{err:?}"
        );
        assert!(
            err.iter().any(|l| l.starts_with("plumb: ")
                && l.ends_with("log lines from 1 of 1 agents, 1 ended")),
            "{err:?}"
        );
    }
    assert_no_programs_left(&counter_progs);
}
