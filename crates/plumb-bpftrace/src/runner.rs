//! Running bpftrace: its output line by line, a deadline, and a stop that
//! leaves nothing behind.
//!
//! bpftrace prints its maps when it gets SIGINT, then exits; that is how
//! every run ends here (the deadline, the caller's stop, or a reader that
//! went away), and only if it has not exited `grace` later is it killed.
//! It runs in its own process group, so a Ctrl-C at the terminal reaches
//! plumb, which passes it on once, rather than bpftrace directly; and with
//! a parent-death signal, so a plumb that is killed outright takes its
//! bpftrace with it. The BPF programs are bpftrace's file descriptors: when
//! its process is gone, so are they. Output is line-buffered (`-B line`),
//! so each line is passed on as bpftrace prints it.

use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One bpftrace run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub binary: PathBuf,
    /// The script, context variables already substituted.
    pub script: String,
    /// bpftrace's positional parameters `$1`, `$2`, ...
    pub args: Vec<String>,
    /// SIGINT after this long.
    pub deadline: Option<Duration>,
    /// How long bpftrace has to print its maps and exit after SIGINT.
    pub grace: Duration,
}

impl Spec {
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

    /// bpftrace's arguments. The positional parameters come after `--`, so
    /// one that starts with `-` is not taken for an option.
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![
            "-B".to_string(),
            "line".to_string(),
            "-e".to_string(),
            self.script.clone(),
            "--".to_string(),
        ];
        v.extend(self.args.iter().cloned());
        v
    }
}

/// Which of bpftrace's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where the lines go.
pub trait Output {
    /// One line, without its newline. An error means nobody reads any more:
    /// bpftrace is stopped.
    fn line(&mut self, stream: Stream, line: &str) -> std::io::Result<()>;
    /// Called about every 50 ms, lines or not: an error stops bpftrace
    /// (the agent's client went away while the script was quiet).
    fn tick(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why bpftrace was stopped, if it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited by itself (the script called `exit()`, or was rejected).
    Exited,
    /// The deadline passed.
    Deadline,
    /// The caller's stop flag (Ctrl-C, the agent's shutdown).
    Stopped,
    /// The output failed (a closed pipe, a client that went away).
    ReaderGone,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Exited => "exited",
            Ended::Deadline => "deadline",
            Ended::Stopped => "stopped",
            Ended::ReaderGone => "reader_gone",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub pid: u32,
    pub ended: Ended,
    /// bpftrace's exit code; None when a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// It had to be killed: it did not exit within the grace period.
    pub killed: bool,
    pub lines: u64,
}

impl Outcome {
    /// bpftrace finished as it should: exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

enum Msg {
    Line(Stream, String),
    Eof,
}

fn read_lines(r: impl Read + Send + 'static, stream: Stream, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    if tx.send(Msg::Line(stream, line)).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Msg::Eof);
    });
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: a signal to our own child (or its process group), which has
    // not been reaped yet: the id cannot have been reused.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Run bpftrace as `spec` says until it exits; its lines go to `out` as
/// they come. `on_start` is told its pid once it runs.
pub fn run(
    spec: &Spec,
    out: &mut dyn Output,
    stop: &AtomicBool,
    on_start: &mut dyn FnMut(u32),
) -> Result<Outcome> {
    let parent = std::process::id();
    let mut cmd = Command::new(&spec.binary);
    cmd.args(spec.argv())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the death signal was armed.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("plumb exited"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        binary: spec.binary.clone(),
        source,
    })?;
    let pid = child.id();
    on_start(pid);
    let (tx, rx) = mpsc::channel();
    if let Some(o) = child.stdout.take() {
        read_lines(o, Stream::Stdout, tx.clone());
    }
    if let Some(e) = child.stderr.take() {
        read_lines(e, Stream::Stderr, tx.clone());
    }
    drop(tx);
    let started = Instant::now();
    let mut ended: Option<Ended> = None;
    let mut interrupted_at: Option<Instant> = None;
    let (mut killed, mut open, mut lines) = (false, 2, 0u64);
    let mut status = None;
    let mut exited_at: Option<Instant> = None;
    let mut reading = true;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Msg::Line(s, l)) => {
                lines += 1;
                if reading && out.line(s, &l).is_err() {
                    reading = false;
                    ended.get_or_insert(Ended::ReaderGone);
                }
            }
            Ok(Msg::Eof) => open -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => open = 0,
        }
        if status.is_none() {
            status = child.try_wait().map_err(Error::Wait)?;
            if status.is_some() {
                exited_at = Some(Instant::now());
            }
        }
        if ended.is_none() {
            if stop.load(Ordering::Relaxed) {
                ended = Some(Ended::Stopped);
            } else if spec.deadline.is_some_and(|d| started.elapsed() >= d) {
                ended = Some(Ended::Deadline);
            } else if reading && out.tick().is_err() {
                reading = false;
                ended = Some(Ended::ReaderGone);
            }
        }
        // Signals only while it is not reaped (its pid is still ours).
        if status.is_none() {
            if ended.is_some() && interrupted_at.is_none() {
                signal(pid as i32, libc::SIGINT);
                interrupted_at = Some(Instant::now());
            }
            if !killed && interrupted_at.is_some_and(|t| t.elapsed() >= spec.grace) {
                signal(-(pid as i32), libc::SIGKILL);
                killed = true;
            }
        }
        // Done when both pipes are closed and it has exited; a process it
        // started (`system()`) may hold the pipes: a second is enough to
        // read what bpftrace itself printed.
        if status.is_some()
            && (open == 0 || exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(1)))
        {
            break;
        }
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().map_err(Error::Wait)?,
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(Outcome {
        pid,
        ended: ended.unwrap_or(Ended::Exited),
        code: status.code(),
        signal: status.signal(),
        killed,
        lines,
    })
}
