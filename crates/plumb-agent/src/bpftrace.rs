//! The `Bpftrace` call: an API client's bpftrace script, run with the
//! node's bpftrace by plumb-bpftrace (the code `plumb bpftrace` runs
//! locally), its output forwarded line by line into the client's stream.
//!
//! It is root in the kernel on the client's say-so, so it is off unless
//! the agent was started with `--allow-bpftrace`, every script is logged
//! with the caller's identity, and every run has a deadline: the client's,
//! never longer than the agent's cap. The run stops (SIGINT, then SIGKILL
//! after the grace period) when the client cancels or disconnects, at the
//! deadline, or when the agent shuts down; bpftrace's maps, printed at
//! SIGINT, are forwarded before the stream's last message.

use crate::proto::{
    bpftrace_message::Kind, BpftraceDone, BpftraceLine, BpftraceMessage, BpftraceRequest,
    BpftraceStarted,
};
use crate::session::{Shared, Slot};
use plumb_bpftrace::runner::{self, Output, Spec, Stream as Out};
use plumb_bpftrace::{preflight, script, Context, Error};
use plumb_core::enrich::cgroupfs::CgroupFs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::Status;

/// What `--allow-bpftrace` turns on.
#[derive(Debug, Clone)]
pub struct BpftraceConfig {
    /// `--bpftrace PATH`; None: the first `bpftrace` on PATH.
    pub binary: Option<PathBuf>,
    /// The longest run (`--max-bpftrace-duration`); also the deadline of
    /// a run that asked for none.
    pub max_duration: Duration,
    pub grace: Duration,
}

impl BpftraceConfig {
    pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(600);

    pub fn new() -> Self {
        BpftraceConfig {
            binary: None,
            max_duration: Self::DEFAULT_MAX_DURATION,
            grace: Spec::DEFAULT_GRACE,
        }
    }
}

impl Default for BpftraceConfig {
    fn default() -> Self {
        Self::new()
    }
}

pub type Stream = mpsc::Receiver<Result<BpftraceMessage, Status>>;
type Tx = mpsc::Sender<Result<BpftraceMessage, Status>>;

/// How long one line waits for room in a slow client's queue before it
/// is dropped (and counted in Done).
const LINE_WAIT: Duration = Duration::from_secs(5);

fn msg(kind: Kind) -> Result<BpftraceMessage, Status> {
    Ok(BpftraceMessage { kind: Some(kind) })
}

/// A bpftrace error as the status the client sees, naming the node.
fn status(node: &str, e: &Error) -> Status {
    let text = format!("node {node}: {}", crate::session::chain(e));
    match e {
        Error::NoPod(_) | Error::NoProcess(_) | Error::EmptyPod(_) => Status::not_found(text),
        Error::NoContext(_) | Error::TooLong(_) | Error::Empty | Error::AmbiguousPod { .. } => {
            Status::invalid_argument(text)
        }
        _ => Status::failed_precondition(text),
    }
}

/// The script's context, resolved on this node.
fn context(req: &BpftraceRequest, shared: &Shared) -> Result<Option<Context>, Error> {
    let fs = CgroupFs::discover();
    match (&req.pod, req.pid) {
        (Some(p), _) => {
            let ns = (!p.namespace.is_empty()).then_some(p.namespace.as_str());
            Context::of_pod(ns, &p.name, fs.as_ref(), &shared.sources).map(Some)
        }
        (None, 0) => Ok(None),
        (None, pid) => Context::of_pid(pid, fs.as_ref()).map(Some),
    }
}

/// Check the permission and the request, resolve the context and start
/// bpftrace; its output arrives on the stream. `caller` is who asked (see
/// `identity`), for the log.
pub fn start(
    req: BpftraceRequest,
    caller: String,
    cfg: Option<&BpftraceConfig>,
    shared: Shared,
) -> Result<Stream, Status> {
    let node = shared.node.to_string();
    let Some(cfg) = cfg else {
        tracing::warn!(caller = %caller, "bpftrace refused: not allowed on this agent");
        return Err(Status::permission_denied(format!(
            "node {node}: bpftrace is not allowed on this agent (start it with --allow-bpftrace)"
        )));
    };
    if req.pid != 0 && req.pod.is_some() {
        return Err(Status::invalid_argument(format!(
            "node {node}: give a pod or a pid, not both"
        )));
    }
    let max = cfg.max_duration;
    let deadline = match req.duration_ms {
        0 => max,
        ms if Duration::from_millis(ms) > max => {
            return Err(Status::invalid_argument(format!(
                "node {node}: --duration {} is longer than this agent allows (--max-bpftrace-duration {})",
                humantime::format_duration(Duration::from_millis(ms)),
                humantime::format_duration(max)
            )))
        }
        ms => Duration::from_millis(ms),
    };
    let binary = preflight::find_binary(cfg.binary.as_deref()).map_err(|e| status(&node, &e))?;
    preflight::check_btf().map_err(|e| status(&node, &e))?;
    let ctx = context(&req, &shared).map_err(|e| status(&node, &e))?;
    let text = script::substitute(&req.script, ctx.as_ref()).map_err(|e| status(&node, &e))?;
    let Some(slot) = Slot::take(&shared.stats, shared.max_sessions) else {
        shared
            .stats
            .sessions_refused
            .fetch_add(1, Ordering::Relaxed);
        return Err(Status::resource_exhausted(format!(
            "node {node}: {} sessions already run, the most this agent allows (--max-sessions)",
            shared.max_sessions
        )));
    };
    let pod = ctx
        .as_ref()
        .and_then(|c| c.pod.as_ref())
        .map(|(ns, p)| format!("{ns}/{p}"));
    tracing::info!(
        caller = %caller,
        pod = pod.as_deref().unwrap_or("-"),
        container_pid = ctx.as_ref().map_or(0, |c| c.pid),
        args = ?req.args,
        deadline = %humantime::format_duration(deadline),
        script = %req.script,
        "bpftrace run requested"
    );
    let spec = Spec {
        binary,
        script: text,
        args: req.args.clone(),
        deadline: Some(deadline),
        grace: cfg.grace,
    };
    let (tx, rx) = mpsc::channel(crate::session::QUEUE);
    std::thread::Builder::new()
        .name("plumb-bpftrace".into())
        .spawn(move || run(spec, ctx, tx, shared, caller, slot))
        .map_err(|e| Status::resource_exhausted(format!("cannot start a thread: {e}")))?;
    Ok(rx)
}

/// Lines into the client's stream.
struct Forward {
    tx: Tx,
    dropped: u64,
    shutdown: Arc<AtomicBool>,
}

/// Queue `m`, waiting up to `within` for room (less once the agent shuts
/// down). Ok(false): no room; Err: the client is gone.
fn send(
    tx: &Tx,
    shutdown: &AtomicBool,
    mut m: Result<BpftraceMessage, Status>,
    within: Duration,
) -> std::io::Result<bool> {
    let until = Instant::now() + within;
    loop {
        match tx.try_send(m) {
            Ok(()) => return Ok(true),
            Err(TrySendError::Closed(_)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "client went away",
                ))
            }
            Err(TrySendError::Full(back)) => {
                if Instant::now() >= until || shutdown.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                m = back;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Output for Forward {
    fn line(&mut self, stream: Out, line: &str) -> std::io::Result<()> {
        let l = BpftraceLine {
            text: line.to_string(),
            stderr: stream == Out::Stderr,
        };
        if !send(&self.tx, &self.shutdown, msg(Kind::Line(l)), LINE_WAIT)? {
            self.dropped += 1;
        }
        Ok(())
    }

    fn tick(&mut self) -> std::io::Result<()> {
        if self.tx.is_closed() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "client went away",
            ));
        }
        Ok(())
    }
}

fn run(spec: Spec, ctx: Option<Context>, tx: Tx, shared: Shared, caller: String, _slot: Slot) {
    let mut out = Forward {
        tx,
        dropped: 0,
        shutdown: shared.shutdown.clone(),
    };
    let deadline_ms = spec.deadline.map_or(0, |d| d.as_millis() as u64);
    let node = shared.node.to_string();
    let (start_tx, stopping) = (out.tx.clone(), shared.shutdown.clone());
    // Sent right after the spawn, before any line of bpftrace's.
    let mut on_start = |pid: u32| {
        let started = BpftraceStarted {
            node: node.clone(),
            pid,
            container_pid: ctx.as_ref().map_or(0, |c| c.pid),
            container_cgroup_id: ctx.as_ref().map_or(0, |c| c.cgroup_id),
            container_cgroup: ctx.as_ref().map(|c| c.cgroup.clone()).unwrap_or_default(),
            deadline_ms,
        };
        let _ = send(&start_tx, &stopping, msg(Kind::Started(started)), LINE_WAIT);
    };
    let result = runner::run(&spec, &mut out, &shared.shutdown, &mut on_start);
    match result {
        Ok(o) => {
            tracing::info!(caller = %caller, pid = o.pid, ended = o.ended.as_str(), exit_code = ?o.code, signal = ?o.signal, killed = o.killed, lines = o.lines, dropped = out.dropped, "bpftrace run ended");
            let done = BpftraceDone {
                exit_code: o.code.unwrap_or(-1),
                signal: o.signal.unwrap_or(0),
                ended: o.ended.as_str().to_string(),
                killed: o.killed,
                dropped: out.dropped,
            };
            let _ = send(&out.tx, &out.shutdown, msg(Kind::Done(done)), LINE_WAIT);
        }
        Err(e) => {
            let text = crate::session::chain(&e);
            tracing::warn!(caller = %caller, error = %text, "bpftrace run failed");
            let _ = send(
                &out.tx,
                &out.shutdown,
                Err(status(&shared.node, &e)),
                LINE_WAIT,
            );
        }
    }
}
