//! The `Capture` call: the packets of a client's pods on this node, read
//! by plumb-capture (the code `plumb capture` runs locally) and streamed
//! in timestamp order, in batches, each with a watermark that lets the
//! client merge many nodes in time order.
//!
//! Capturing shows payloads, so it is more sensitive than tracing: it is
//! off unless the agent names who may capture (`--capture-token-file`, a
//! token separate from the API's, or `--capture-subject` for client
//! certificates), it only ever captures in the network namespaces of the
//! pods the client named (optionally only in `--capture-namespaces`), and
//! every run is logged with its caller and capped in duration, packets
//! and bytes by the agent's own limits.

use crate::auth::Token;
use crate::proto::{
    capture_message::Kind, CaptureDone, CaptureInterface, CaptureInterfaceStats, CaptureMessage,
    CapturePackets, CaptureRequest, CaptureStarted, CapturedPacket,
};
use crate::session::{Shared, Slot};
use plumb_bpftrace::Context;
use plumb_capture::ring::Packet;
use plumb_capture::{Capture, Limits, Place, RingSize, Sink, Spec};
use plumb_core::enrich::cgroupfs::CgroupFs;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::Status;

/// Who may capture, and the agent's caps.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Clients presenting this token in `x-plumb-capture-token`.
    pub token: Option<Token>,
    /// Clients whose certificate subject has one of these (`CN=alice`).
    pub subjects: Vec<String>,
    /// Only pods of these Kubernetes namespaces; empty: any.
    pub namespaces: Vec<String>,
    pub max_duration: Duration,
    pub max_packets: u64,
    pub max_bytes: u64,
    /// The ring of each socket.
    pub ring_bytes: u64,
}

impl CaptureConfig {
    pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(300);
    pub const DEFAULT_MAX_PACKETS: u64 = 1_000_000;
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
    pub const DEFAULT_RING_BYTES: u64 = 4 << 20;

    pub fn new() -> Self {
        CaptureConfig {
            token: None,
            subjects: Vec::new(),
            namespaces: Vec::new(),
            max_duration: Self::DEFAULT_MAX_DURATION,
            max_packets: Self::DEFAULT_MAX_PACKETS,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            ring_bytes: Self::DEFAULT_RING_BYTES,
        }
    }

    /// May a caller with this capture token and certificate subject capture?
    pub fn allows(&self, token: Option<&str>, subject: Option<&str>) -> bool {
        let by_token = matches!((&self.token, token), (Some(t), Some(given)) if t.matches(given));
        let by_subject = subject.is_some_and(|s| {
            let parts: Vec<&str> = s.split(',').map(str::trim).collect();
            self.subjects
                .iter()
                .any(|want| parts.contains(&want.as_str()))
        });
        by_token || by_subject
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The metadata key of the capture token.
pub const TOKEN_HEADER: &str = "x-plumb-capture-token";

pub type Stream = mpsc::Receiver<Result<CaptureMessage, Status>>;
type Tx = mpsc::Sender<Result<CaptureMessage, Status>>;

fn msg(kind: Kind) -> Result<CaptureMessage, Status> {
    Ok(CaptureMessage { kind: Some(kind) })
}

/// How long a batch waits for room in a slow client's queue before it is
/// dropped (its packets counted as unsent).
const BATCH_WAIT: Duration = Duration::from_secs(5);
/// A batch goes out at this size, or at each poll round.
const BATCH_BYTES: usize = 256 << 10;
/// How far behind now the watermark stays: longer than a packet can wait
/// in the kernel's ring and plumb-capture's reordering.
const WATERMARK_LAG: Duration = Duration::from_millis(150);

/// A request's limit against the agent's cap: 0 asks for the cap.
fn capped(asked: u64, cap: u64) -> u64 {
    if asked == 0 {
        cap
    } else {
        asked.min(cap)
    }
}

/// Check the permission and the request, resolve the pods and open the
/// sockets; the packets arrive on the stream.
pub fn start(
    req: CaptureRequest,
    caller: String,
    token: Option<String>,
    subject: Option<String>,
    cfg: Option<&CaptureConfig>,
    shared: Shared,
) -> Result<Stream, Status> {
    let node = shared.node.to_string();
    let allowed = cfg.filter(|c| c.allows(token.as_deref(), subject.as_deref()));
    let Some(cfg) = allowed else {
        tracing::warn!(caller = %caller, "capture refused: this client may not capture");
        let why = if cfg.is_none() {
            "capturing is not allowed on this agent (start it with --capture-token-file or --capture-subject)"
        } else {
            "this client may not capture (it needs the agent's capture token, --capture-token-file, or a certificate named by --capture-subject)"
        };
        return Err(Status::permission_denied(format!("node {node}: {why}")));
    };
    if req.pods.is_empty() {
        return Err(Status::invalid_argument(format!(
            "node {node}: a capture names its pods; this agent never captures the whole node"
        )));
    }
    let fs = CgroupFs::discover();
    let mut places = Vec::new();
    for p in &req.pods {
        let shown = format!("{}/{}", p.namespace, p.name);
        if !cfg.namespaces.is_empty() && !cfg.namespaces.contains(&p.namespace) {
            return Err(Status::permission_denied(format!(
                "node {node}: pod {shown}: this agent captures only in namespaces {}",
                cfg.namespaces.join(", ")
            )));
        }
        let ns = (!p.namespace.is_empty()).then_some(p.namespace.as_str());
        let c = Context::of_pod(ns, &p.name, fs.as_ref(), &shared.sources).map_err(|e| {
            Status::not_found(format!("node {node}: {}", crate::session::chain(&e)))
        })?;
        let netns = PathBuf::from(format!("/proc/{}/ns/net", c.pid));
        if plumb_capture::point::is_own_netns(&netns) {
            return Err(Status::failed_precondition(format!(
                "node {node}: pod {shown} has no network namespace of its own (hostNetwork: it \
                 shares the node's), and this agent captures only in pods' namespaces"
            )));
        }
        places.push(Place {
            netns: Some(netns),
            pod: c.pod,
            interfaces: Vec::new(),
            node_side: req.node_side,
        });
    }
    let limits = Limits {
        duration: Some(Duration::from_millis(capped(
            req.duration_ms,
            cfg.max_duration.as_millis() as u64,
        ))),
        packets: Some(capped(req.max_packets, cfg.max_packets)),
        bytes: Some(capped(req.max_bytes, cfg.max_bytes)),
    };
    let spec = Spec {
        node: node.clone(),
        expression: req.expression.clone(),
        snaplen: if req.snaplen == 0 {
            262144
        } else {
            req.snaplen.min(262144)
        },
        // A client may ask for a bigger ring than the default, up to 64 MiB.
        ring: RingSize::of_bytes(match req.ring_bytes {
            0 => cfg.ring_bytes,
            n => n.min(64 << 20),
        } as usize),
    };
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
    let cap = Capture::open(&places, &spec).map_err(|e| {
        let text = format!("node {node}: {}", crate::session::chain(&e));
        match e {
            plumb_capture::Error::Filter { .. } | plumb_capture::Error::NoInterface { .. } => {
                Status::invalid_argument(text)
            }
            _ => Status::failed_precondition(text),
        }
    })?;
    let pods: Vec<String> = req
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    tracing::info!(
        caller = %caller,
        pods = %pods.join(","),
        expression = %req.expression,
        node_side = req.node_side,
        duration = %humantime::format_duration(limits.duration.unwrap_or_default()),
        max_packets = limits.packets.unwrap_or(0),
        max_bytes = limits.bytes.unwrap_or(0),
        "capture requested"
    );
    let interfaces = cap
        .points()
        .iter()
        .map(|p| CaptureInterface {
            name: p.interface.clone(),
            linktype: u32::from(p.link.number()),
            description: p.description(),
            comment_in: p.comment(false),
            comment_out: p.comment(true),
            snaplen: spec.snaplen,
        })
        .collect();
    let started = CaptureStarted {
        node,
        interfaces,
        duration_ms: limits.duration.map_or(0, |d| d.as_millis() as u64),
        max_packets: limits.packets.unwrap_or(0),
        max_bytes: limits.bytes.unwrap_or(0),
    };
    let (tx, rx) = mpsc::channel(64);
    std::thread::Builder::new()
        .name("plumb-capture".into())
        .spawn(move || run(cap, started, limits, tx, shared, caller, slot))
        .map_err(|e| Status::resource_exhausted(format!("cannot start a thread: {e}")))?;
    Ok(rx)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Packets into the client's stream, in batches.
struct Forward {
    tx: Tx,
    batch: Vec<CapturedPacket>,
    bytes: usize,
    unsent: u64,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
    last_sent: Instant,
}

impl Forward {
    fn send(&mut self, m: Result<CaptureMessage, Status>) -> plumb_capture::Result<bool> {
        let until = Instant::now() + BATCH_WAIT;
        let mut m = m;
        loop {
            match self.tx.try_send(m) {
                Ok(()) => return Ok(true),
                Err(TrySendError::Closed(_)) => {
                    return Err(plumb_capture::Error::Write(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the client went away",
                    )))
                }
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= until || self.shutdown.load(Ordering::Relaxed) {
                        return Ok(false);
                    }
                    m = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

impl Sink for Forward {
    fn packet(&mut self, point: usize, p: &Packet<'_>) -> plumb_capture::Result<()> {
        self.bytes += p.data.len() + 32;
        self.batch.push(CapturedPacket {
            interface: point as u32,
            ts_ns: p.ts_ns,
            len: p.len,
            data: p.data.to_vec(),
            outgoing: p.outgoing,
        });
        if self.bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Send the batch (or, every 100 ms when there is none, the
    /// watermark alone, so that a quiet node does not hold up the merge).
    fn flush(&mut self) -> plumb_capture::Result<()> {
        if self.batch.is_empty() && self.last_sent.elapsed() < Duration::from_millis(100) {
            if self.tx.is_closed() {
                return Err(plumb_capture::Error::Write(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the client went away",
                )));
            }
            return Ok(());
        }
        let packets = std::mem::take(&mut self.batch);
        let n = packets.len() as u64;
        self.bytes = 0;
        let watermark_ns = now_ns().saturating_sub(WATERMARK_LAG.as_nanos() as u64);
        let m = msg(Kind::Packets(CapturePackets {
            packets,
            watermark_ns,
        }));
        if !self.send(m)? {
            self.unsent += n;
        }
        self.last_sent = Instant::now();
        Ok(())
    }
}

fn run(
    mut cap: Capture,
    started: CaptureStarted,
    limits: Limits,
    tx: Tx,
    shared: Shared,
    caller: String,
    _slot: Slot,
) {
    let mut out = Forward {
        tx,
        batch: Vec::new(),
        bytes: 0,
        unsent: 0,
        shutdown: shared.shutdown.clone(),
        last_sent: Instant::now(),
    };
    if !matches!(out.send(msg(Kind::Started(started))), Ok(true)) {
        return;
    }
    match cap.run(&mut out, limits, &shared.shutdown) {
        Ok(s) => {
            tracing::info!(caller = %caller, packets = s.packets, bytes = s.bytes, dropped = s.dropped(), unsent = out.unsent, ended = s.ended.as_str(), "capture ended");
            let stats = s
                .points
                .iter()
                .enumerate()
                .map(|(i, p)| CaptureInterfaceStats {
                    interface: i as u32,
                    received: p.kernel.received,
                    dropped: p.kernel.dropped,
                    delivered: p.delivered,
                })
                .collect();
            let done = CaptureDone {
                stats,
                ended: s.ended.as_str().to_string(),
                packets: s.packets - out.unsent,
                bytes: s.bytes,
                unsent: out.unsent,
            };
            let _ = out.send(msg(Kind::Done(done)));
        }
        Err(e) => {
            let text = crate::session::chain(&e);
            tracing::warn!(caller = %caller, error = %text, "capture failed");
            let _ = out.send(Err(Status::internal(format!(
                "node {}: {text}",
                shared.node
            ))));
        }
    }
}
