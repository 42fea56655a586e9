//! Helpers for root integration tests that run real BPF programs: run a
//! gadget on a thread, do something, collect what it saw, and check that
//! nothing it loaded is left in the kernel afterwards.
//!
//! Root tests never skip: without root they fail, saying why.

use crate::enrich::Enricher;
use crate::event::Event;
use crate::gadgets::GadgetDesc;
use crate::loader;
use crate::runner::{self, Control, RunOptions, RunStats};
use crate::sink::Sink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Fail (never skip) when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads BPF programs and must run as root (CI runs it as root)"
    );
    crate::preflight::check_all().expect("tracing preflight");
}

/// `d` stretched for a slow machine: multiplied by `PLUMB_TEST_SLOWDOWN`
/// (a whole number, default 1). The kernel-matrix guests run under TCG,
/// many times slower than the host, and set it (scripts/guest-suite.sh);
/// every deadline a test waits against goes through here, and no assertion
/// about what a test saw depends on it.
pub fn patience(d: Duration) -> Duration {
    let k = std::env::var("PLUMB_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * k
}

/// A sink shared with the test thread.
#[derive(Clone, Default)]
pub struct SharedSink {
    pub events: Arc<Mutex<Vec<Event>>>,
    pub lost: Arc<Mutex<u64>>,
}

impl Sink for SharedSink {
    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        self.events
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .push(ev.clone());
        Ok(())
    }
    fn lost(&mut self, _g: &str, n: u64, _at: std::time::SystemTime) -> std::io::Result<()> {
        *self
            .lost
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))? += n;
        Ok(())
    }
}

/// A gadget running on its own thread.
pub struct Traced {
    pub sink: SharedSink,
    pub prog_ids: Vec<u32>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<crate::Result<RunStats>>>,
}

/// Start `desc` with `opts`; returns once its programs are attached.
pub fn start(desc: &'static GadgetDesc, opts: RunOptions) -> Traced {
    let sink = SharedSink::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let (s2, stop2) = (sink.clone(), stop.clone());
    let handle = std::thread::spawn(move || {
        let mut enricher = Enricher::new(vec![]);
        let mut sink = s2;
        let ready_tx = tx.clone();
        let control = Control {
            stop: stop2,
            on_ready: Some(Box::new(move |ids: &[u32]| {
                let _ = ready_tx.send(Ok(ids.to_vec()));
            })),
        };
        let r = runner::run(desc, &opts, &mut enricher, &mut sink, control);
        if let Err(e) = &r {
            let _ = tx.send(Err(e.to_string()));
        }
        r
    });
    let prog_ids = match rx.recv_timeout(patience(Duration::from_secs(60))) {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => panic!("gadget {} failed to start: {e}", desc.name),
        Err(_) => panic!("gadget {} did not start within 60s", desc.name),
    };
    assert!(
        !prog_ids.is_empty(),
        "gadget {} loaded no programs",
        desc.name
    );
    Traced {
        sink,
        prog_ids,
        stop,
        handle: Some(handle),
    }
}

impl Traced {
    /// Wait until an event satisfies `pred` (or `timeout` passes); returns it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + patience(timeout);
        loop {
            if let Some(e) = self.sink.events.lock().ok()?.iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Events seen so far that satisfy `pred`.
    pub fn matching(&self, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.sink
            .events
            .lock()
            .map(|v| v.iter().filter(|e| pred(e)).cloned().collect())
            .unwrap_or_default()
    }

    /// Stop, wait, and check that every program it loaded is gone.
    pub fn finish(mut self) -> (Vec<Event>, RunStats) {
        self.stop.store(true, Ordering::Relaxed);
        let stats = self
            .handle
            .take()
            .map(|h| {
                h.join()
                    .expect("gadget thread panicked")
                    .expect("gadget run failed")
            })
            .expect("already finished");
        assert_no_programs_left(&self.prog_ids);
        let events = std::mem::take(&mut *self.sink.events.lock().expect("events"));
        (events, stats)
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Run `desc` into `sink` on a thread, call `load` once it is attached,
/// stop shortly after, and hand back the run's statistics and the sink.
pub fn run_with_sink<S: Sink + Send + 'static>(
    desc: &'static GadgetDesc,
    opts: RunOptions,
    sink: S,
    load: impl FnOnce(),
) -> (RunStats, S) {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let stop2 = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut enricher = Enricher::new(vec![]);
        let mut sink = sink;
        let control = Control {
            stop: stop2,
            on_ready: Some(Box::new(move |ids: &[u32]| {
                let _ = tx.send(ids.to_vec());
            })),
        };
        let r = runner::run(desc, &opts, &mut enricher, &mut sink, control);
        (r, sink)
    });
    let ids = rx.recv_timeout(patience(Duration::from_secs(30))).ok();
    if ids.is_some() {
        load();
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let (r, sink) = handle.join().expect("gadget thread panicked");
    let stats = r.expect("gadget run failed");
    assert_no_programs_left(&ids.expect("attached"));
    (stats, sink)
}

/// Assert that none of these program ids exists in the kernel any more.
pub fn assert_no_programs_left(ids: &[u32]) {
    // The kernel frees a program asynchronously (after an RCU grace period)
    // once its last reference is gone: give it a moment.
    let mut left: Vec<u32> = ids.to_vec();
    for _ in 0..100 {
        left.retain(|&id| loader::prog_exists(id));
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        left.is_empty(),
        "BPF programs still loaded after teardown: {left:?}"
    );
}

/// A string unique to this test run, for markers.
pub fn marker(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "plumb-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Run options for `desc` with these gadget parameters.
pub fn with_params(pairs: &[(&str, &str)]) -> RunOptions {
    let mut o = RunOptions::default();
    for (k, v) in pairs {
        o.params.0.insert(k.to_string(), v.to_string());
    }
    o
}

/// Packets counted by the first iptables rule of `chain` whose text
/// contains `needle`, read with `iptables -vnxL` through `run` (a command
/// runner inside the right namespace).
pub fn iptables_packets(listing: &str, needle: &str) -> Option<u64> {
    listing
        .lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A cgroup v2 directory a test made (with any parents it made), removed
/// with them when dropped, once the processes in it are gone.
pub struct TestCgroup {
    /// The cgroup, full path.
    pub path: std::path::PathBuf,
    /// Directories to remove, deepest first.
    made: Vec<std::path::PathBuf>,
}

impl TestCgroup {
    /// Make `rel` (a path below the cgroup v2 root) and its missing parents.
    pub fn new(rel: &str) -> Self {
        let root = crate::enrich::cgroupfs::CgroupFs::discover()
            .expect("a cgroup v2 hierarchy is mounted")
            .root()
            .to_path_buf();
        let path = root.join(rel.trim_start_matches('/'));
        let mut made = Vec::new();
        let mut p = path.clone();
        while !p.exists() {
            made.push(p.clone());
            match p.parent() {
                Some(parent) => p = parent.to_path_buf(),
                None => break,
            }
        }
        std::fs::create_dir_all(&path).expect("make the test cgroup");
        TestCgroup { path, made }
    }

    /// The cgroup's id, as `bpf_get_current_cgroup_id()` gives it.
    pub fn id(&self) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&self.path).expect("cgroup"))
    }

    /// Spawn `cmd` inside this cgroup: the child moves itself there before
    /// exec, so its exec already belongs to the cgroup.
    pub fn spawn(&self, cmd: &mut std::process::Command) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(
            self.path
                .join("cgroup.procs")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .expect("path");
        // SAFETY: only async-signal-safe calls (open, write, close) between
        // fork and exec, on a path prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(err)
                }
            });
        }
        cmd.spawn().expect("spawn in the test cgroup")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in &self.made {
            // Removable once its last process has gone.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A TCP socket bound to a port of `ip` and never put in listen: a connect
/// to it is refused (RST), and while it lives no other socket of the test
/// process can take the port, so parallel tests cannot race for it.
pub struct BoundPort {
    fd: std::os::fd::OwnedFd,
    pub port: u16,
}

impl BoundPort {
    /// Bind to an ephemeral port of `ip` in the calling thread's network
    /// namespace.
    pub fn new(ip: std::net::Ipv4Addr) -> std::io::Result<BoundPort> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: socket(2) returns a new descriptor that OwnedFd closes.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let port = bind_v4(fd.as_raw_fd(), ip, 0)?;
        Ok(BoundPort { fd, port })
    }

    /// Give up a connect after `n` SYN retransmits (TCP_SYNCNT), so a
    /// connect into a DROP rule fails in seconds, not minutes.
    pub fn set_syn_retries(&self, n: i32) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: setsockopt(2) on our descriptor with an int we own.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_SYNCNT,
                &n as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Connect this socket to `target` (so the local port is known even when
    /// the connect fails); returns the errno of a failed connect.
    pub fn connect(&self, target: std::net::SocketAddrV4) -> Option<i32> {
        use std::os::fd::AsRawFd;
        let d = sockaddr_v4(*target.ip(), target.port());
        // SAFETY: connect(2) on our descriptor with a sockaddr_in we own.
        let rc = unsafe {
            libc::connect(
                self.fd.as_raw_fd(),
                &d as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn sockaddr_v4(ip: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    a.sin_family = libc::AF_INET as u16;
    a.sin_port = port.to_be();
    a.sin_addr.s_addr = u32::from(ip).to_be();
    a
}

/// bind(2) `fd` to `ip:port` and return the port the kernel gave it.
fn bind_v4(fd: i32, ip: std::net::Ipv4Addr, port: u16) -> std::io::Result<u16> {
    let mut a = sockaddr_v4(ip, port);
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: bind/getsockname on a descriptor the caller owns, with a
    // sockaddr_in of the right size.
    unsafe {
        if libc::bind(fd, &a as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getsockname(fd, &mut a as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(u16::from_be(a.sin_port))
}
