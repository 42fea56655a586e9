//! What the binary's integration tests share: the `plumb` binary run or
//! spawned, child processes that are always reaped (and woken first, for
//! tests that SIGSTOP them), temporary files, agents started from the
//! binary and the `plumb remote` commands that reach them, markers run as
//! chosen commands or in chosen cgroups, and the BPF programs a process
//! holds. HTTP scrapes live in `http`, test certificates in `certs`, fake
//! kubelet-style pods in `fake_pod`, agents of the stand-in cluster in
//! `kube`, a cluster of QEMU guests in `vm_cluster`.

// Every test binary compiles this module whole but calls only its own part
// of it; what one binary leaves unused is not dead code in another.
#![allow(dead_code)]

pub mod certs;
pub mod fake_pod;
pub mod http;
pub mod kube;
pub mod vm_cluster;

use plumb_core::testing::{marker, patience};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn plumb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plumb"))
}

/// Run `plumb ARGS` to its end: exit code (-1 for a signal), stdout, stderr.
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = plumb().args(args).output().expect("run plumb");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Hold this while a test must run alone among the tests of its binary
/// that take it too (each binary has its own lock; its file says why its
/// tests need it). A test that panicked while holding it does not poison
/// it for the others.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process, woken (SIGCONT) and killed (SIGKILL) and reaped when
/// the test ends, however it ends; its stdout and stderr lines arrive on
/// channels.
pub struct Proc {
    pub child: Child,
    pub out: mpsc::Receiver<String>,
    pub err: mpsc::Receiver<String>,
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

/// Every line still to come from an exited process's stream: read until its
/// reader thread reaches the end (bounded by 10 s, in case a grandchild
/// holds the pipe). Unlike `try_iter`, it does not miss the last lines the
/// reader has not forwarded yet when the exit is noticed.
pub fn drain(rx: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    let mut got = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => got.push(l),
            Err(_) => break,
        }
    }
    got
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
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

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Wait for the exit status (after a signal, or at the natural end).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + patience(timeout);
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
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first line from `rx` satisfying `pred`, within `timeout`; lines
/// seen are appended to `seen` for failure messages.
pub fn wait_line(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
    seen: &mut Vec<String>,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + patience(timeout);
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
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, content: &str) -> TempFile {
        let p = std::env::temp_dir().join(marker(tag));
        std::fs::write(&p, content).expect("write temp file");
        TempFile(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A directory removed with its content when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        Self::new_in(&std::env::temp_dir(), tag)
    }
    /// In `parent` (for files guests must see: their /tmp is their own).
    pub fn new_in(parent: &Path, tag: &str) -> TempDir {
        let p = parent.join(marker(tag));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A token file with a fresh secret.
pub fn token() -> TempFile {
    TempFile::new("token", &format!("{}\n", marker("secret")))
}

/// A running agent and where it listens.
pub struct Agent {
    pub proc: Proc,
    pub api: String,
    /// host:port of its metrics listener, if it was given one.
    pub metrics_addr: Option<String>,
    pub node: String,
    pub counter_progs: Vec<u32>,
    /// Its stderr lines read so far (the ready line included).
    pub log: Vec<String>,
}

impl Agent {
    /// host:port of its metrics listener (`--metrics-listen` is needed).
    pub fn metrics(&self) -> &str {
        self.metrics_addr
            .as_deref()
            .unwrap_or_else(|| panic!("agent {} has no metrics listener", self.node))
    }

    /// Read what the agent has logged since the last call.
    pub fn read_log(&mut self) -> &[String] {
        self.log.extend(self.proc.err.try_iter());
        &self.log
    }

    /// SIGTERM, exit 0, and the always-on programs are gone.
    pub fn stop(mut self) {
        self.proc.signal(libc::SIGTERM);
        assert_eq!(
            self.proc.wait(Duration::from_secs(20)),
            Some(0),
            "{}",
            self.node
        );
        plumb_core::testing::assert_no_programs_left(&self.counter_progs);
    }
}

/// `plumb agent --listen LISTEN --node-name NODE`, with a token unless
/// `token` is None, then `args` (`--metrics-listen`, TLS files, limits).
pub fn agent_cmd(node: &str, listen: &str, token: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = plumb();
    cmd.args(["agent", "--listen", listen, "--node-name", node]);
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    cmd.args(args);
    cmd
}

/// Start the agent of [`agent_cmd`] and wait until it is ready.
pub fn start_agent(node: &str, listen: &str, token: Option<&Path>, args: &[&str]) -> Agent {
    spawn_agent(node, agent_cmd(node, listen, token, args))
}

/// Spawn `cmd`, an agent for `node`, and wait for its ready line.
pub fn spawn_agent(node: &str, cmd: Command) -> Agent {
    let proc = Proc::spawn(cmd);
    let mut log = Vec::new();
    let ready = wait_line(&proc.err, Duration::from_secs(60), &mut log, |l| {
        l.starts_with("plumb agent: node ")
    })
    .unwrap_or_else(|| panic!("agent {node} did not start: {log:?}"));
    // plumb agent: node N api A metrics http://M/metrics counter programs 1,2
    // ("metrics off" without a metrics listener)
    let word_after = |w: &str| {
        let mut it = ready.split_whitespace();
        it.find(|x| *x == w);
        it.next().unwrap_or_default().to_string()
    };
    let metrics_addr = word_after("metrics")
        .strip_prefix("http://")
        .and_then(|m| m.strip_suffix("/metrics"))
        .map(str::to_string);
    let counter_progs = ids(&ready);
    assert!(!counter_progs.is_empty(), "{ready}");
    Agent {
        api: word_after("api"),
        metrics_addr,
        node: node.to_string(),
        counter_progs,
        proc,
        log,
    }
}

/// `plumb -v remote --agents A,B [--token-file T] ARGS`.
pub fn remote(agents: &[&Agent], token: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = plumb();
    let addrs: Vec<&str> = agents.iter().map(|a| a.api.as_str()).collect();
    cmd.args(["-v", "remote", "--agents", &addrs.join(",")]);
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    cmd.args(args);
    cmd
}

/// BPF program ids at the end of a line ("... ids 1,2,3").
pub fn ids(line: &str) -> Vec<u32> {
    line.rsplit(' ')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Run `program` (a path; its basename becomes the comm) with `mark` as
/// its argument; its pid.
pub fn exec_as(program: &Path, mark: &str) -> u32 {
    let mut c = Command::new(program).arg(mark).spawn().expect("run marker");
    let pid = c.id();
    c.wait().expect("wait marker");
    pid
}

/// Run `/bin/true MARK`; its pid.
pub fn exec_true(mark: &str) -> u32 {
    exec_as(Path::new("/bin/true"), mark)
}

/// A busy shell loop, killed when the test ends.
pub struct Busy(pub Child);

impl Busy {
    pub fn start() -> Busy {
        Busy(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("start a busy loop"),
        )
    }

    /// The loop inside the cgroup `dir` (the shell moves itself there
    /// first).
    pub fn start_in(dir: &Path) -> Busy {
        let script = format!(
            "echo $$ > {} && while :; do :; done",
            dir.join("cgroup.procs").display()
        );
        Busy(
            Command::new("/bin/sh")
                .arg("-c")
                .arg(script)
                .spawn()
                .expect("start a busy loop"),
        )
    }

    pub fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `/bin/true MARK` inside the cgroup `dir`; its pid.
pub fn exec_in_cgroup(dir: &Path, mark: &str) -> u32 {
    let script = format!(
        "echo $$ > {} && exec /bin/true {mark}",
        dir.join("cgroup.procs").display()
    );
    let mut c = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .spawn()
        .expect("sh");
    let pid = c.id();
    assert!(c.wait().expect("wait sh").success(), "{script}");
    pid
}

/// A program that is /bin/true under a short unique name (the comm of
/// what runs it): a symlink in `dir`.
pub fn named_true(dir: &Path, tag: &str) -> (PathBuf, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The kernel keeps 15 characters of a comm.
    let comm: String = format!("{tag}{:x}{n}", std::process::id())
        .chars()
        .take(15)
        .collect();
    let path = dir.join(&comm);
    std::os::unix::fs::symlink("/bin/true", &path).expect("symlink /bin/true");
    (path, comm)
}

/// One exec event as (node, pid, args, the whole object).
pub type Exec = (String, u64, Vec<String>, serde_json::Value);

/// JSON exec events on `rx` whose line contains `needle`, until `n` have
/// arrived or `timeout` passed.
pub fn execs(
    rx: &mpsc::Receiver<String>,
    needle: &str,
    n: usize,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> Vec<Exec> {
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(l) = wait_line(rx, left, seen, |l| l.contains(needle)) else {
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
            v,
        ));
    }
    got
}

/// The BPF programs process `pid` holds (its fds' fdinfo `prog_id`).
pub fn prog_ids_of(pid: i32) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in rd.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for l in text.lines() {
            if let Some(v) = l.strip_prefix("prog_id:") {
                if let Ok(id) = v.trim().parse() {
                    ids.insert(id);
                }
            }
        }
    }
    ids
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// Cgroups laid out as the kubelet's cgroupfs driver names them
/// (`kubepods-.../pod<UID>`), one per pod UID, removed when the test ends.
pub struct PodCgroups {
    top: PathBuf,
    pub pods: Vec<PathBuf>,
}

impl PodCgroups {
    pub fn new(uids: &[&str]) -> PodCgroups {
        let top = cgroup2_root().join(format!("kubepods-{}", marker("cg")));
        std::fs::create_dir(&top).expect("create cgroup");
        let pods = uids
            .iter()
            .map(|u| {
                let p = top.join(format!("pod{u}"));
                std::fs::create_dir(&p).expect("create pod cgroup");
                p
            })
            .collect();
        PodCgroups { top, pods }
    }

    /// The cgroup path events carry (relative to the hierarchy).
    pub fn rel(&self, i: usize) -> String {
        let root = cgroup2_root();
        format!(
            "/{}",
            self.pods[i]
                .strip_prefix(&root)
                .unwrap_or(&self.pods[i])
                .display()
        )
    }
}

impl Drop for PodCgroups {
    fn drop(&mut self) {
        // A cgroup can be removed once its last process has gone.
        for d in self.pods.iter().chain(std::iter::once(&self.top)) {
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// tshark's fields of every packet of `file` (`-e` each of `fields`),
/// one row per packet; the test fails if tshark cannot read the file.
pub fn tshark_fields(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    assert!(
        out.status.success(),
        "tshark cannot read {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}
