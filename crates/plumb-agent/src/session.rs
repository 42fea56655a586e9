//! One API client's gadget run: the local pipeline on its own OS thread
//! (skeletons are not `Send`) with a sink that forwards into the client's
//! gRPC stream. The run stops when the client cancels or disconnects (the
//! stream's receiver is gone), and then everything it loaded is unloaded.

use crate::metrics::AgentStats;
use crate::proto::{trace_message::Kind, Done, Lost, Ready, TraceMessage, TraceRequest};
use crate::selection::PodSelection;
use plumb_core::enrich::{cgroupfs::CgroupFs, Enricher, MetadataSource};
use plumb_core::event::Event;
use plumb_core::filter::{Filter, FilterArgs};
use plumb_core::gadgets::{self, Params};
use plumb_core::runner::{self, Control, RunOptions, StopReason};
use plumb_core::sink::Sink;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tonic::Status;

pub type Stream = mpsc::Receiver<Result<TraceMessage, Status>>;

/// What every session needs from the agent.
#[derive(Clone)]
pub struct Shared {
    pub stats: Arc<AgentStats>,
    pub sources: Vec<Arc<dyn MetadataSource>>,
    pub node: Arc<str>,
    /// Set when the agent shuts down: every run ends.
    pub shutdown: Arc<AtomicBool>,
}

/// The error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}

pub(crate) fn json<T: serde::de::DeserializeOwned + Default>(
    what: &str,
    b: &[u8],
) -> Result<T, Status> {
    if b.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

struct Forward {
    tx: mpsc::Sender<Result<TraceMessage, Status>>,
    shutdown: Arc<AtomicBool>,
    gadget: &'static str,
    stats: Arc<AgentStats>,
    /// Counted here, added to the agent's metrics every tick (not under a
    /// lock per event).
    seen: u64,
    lost: u64,
    /// Everything reported to the metrics so far.
    lost_reported: u64,
    /// The request's pods (see `selection`), and what it left out.
    pods: Option<PodSelection>,
    left_out: u64,
    /// Events sent in all; with a pod selection the sink, not the runner,
    /// enforces max_events (the runner would count left-out events), and
    /// ends the run through `stop`.
    sent: u64,
    max: Option<u64>,
    stop: Arc<AtomicBool>,
}

impl Forward {
    fn publish(&mut self) {
        if self.seen > 0 || self.lost > 0 {
            self.stats.add_events(self.gadget, self.seen, self.lost);
            self.lost_reported += self.lost;
            self.seen = 0;
            self.lost = 0;
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "client went away")
}

impl Forward {
    fn send(&self, kind: Kind) -> io::Result<()> {
        self.tx
            .blocking_send(Ok(TraceMessage { kind: Some(kind) }))
            .map_err(|_| gone())
    }
}

impl Sink for Forward {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if self.pods.as_ref().is_some_and(|p| !p.keeps_event(ev)) {
            self.left_out += 1;
            return Ok(());
        }
        if self.max.is_some_and(|m| self.sent >= m) {
            return Ok(()); // the run stops at the next poll
        }
        let bytes = serde_json::to_vec(ev)?;
        self.send(Kind::EventJson(bytes))?;
        self.seen += 1;
        self.sent += 1;
        if self.max.is_some_and(|m| self.sent >= m) {
            self.stop.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
    fn lost(&mut self, gadget: &str, count: u64, _at: SystemTime) -> io::Result<()> {
        self.lost += count;
        self.send(Kind::Lost(Lost {
            gadget: gadget.to_string(),
            count,
        }))
    }
    /// Called every poll interval even when nothing happens: notices a
    /// client that left while the gadget was quiet.
    fn tick(&mut self) -> io::Result<()> {
        self.publish();
        if self.tx.is_closed() || self.shutdown.load(Ordering::Relaxed) {
            return Err(gone());
        }
        Ok(())
    }
}

/// Validate the request and start the run; events arrive on the stream.
pub fn start(req: TraceRequest, shared: Shared) -> Result<Stream, Status> {
    let desc = gadgets::find(&req.gadget).map_err(|e| Status::not_found(chain(&e)))?;
    if let Err(why) = gadgets::availability(desc) {
        return Err(Status::failed_precondition(format!(
            "gadget {} cannot run on node {}: {why}",
            desc.name, shared.node
        )));
    }
    let params: Params = json("params", &req.params_json)?;
    params
        .check(desc)
        .map_err(|e| Status::invalid_argument(chain(&e)))?;
    let args: FilterArgs = json("filter", &req.filter_json)?;
    let fs = CgroupFs::discover();
    let mut filter = Filter::parse(&args, fs.as_ref().map(|f| f.root()))
        .map_err(|e| Status::invalid_argument(chain(&e)))?;
    if let Some(fs) = &fs {
        filter.narrow_to_containers(fs);
    }
    let pods = PodSelection::from_request(&req.pods);
    let max = (req.max_events > 0).then_some(req.max_events);
    let opts = RunOptions {
        filter,
        params,
        duration: (req.duration_ms > 0).then(|| Duration::from_millis(req.duration_ms)),
        max_events: max.filter(|_| pods.is_none()),
        node: shared.node.clone(),
        ..RunOptions::default()
    };
    let (tx, rx) = mpsc::channel(512);
    let sink_max = max.filter(|_| pods.is_some());
    std::thread::Builder::new()
        .name(format!("plumb-{}", desc.name))
        .spawn(move || run(desc, opts, (pods, sink_max), tx, shared))
        .map_err(|e| Status::resource_exhausted(format!("cannot start a thread: {e}")))?;
    Ok(rx)
}

fn run(
    desc: &'static gadgets::GadgetDesc,
    opts: RunOptions,
    (pods, max): (Option<PodSelection>, Option<u64>),
    tx: mpsc::Sender<Result<TraceMessage, Status>>,
    shared: Shared,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = shared.stats.clone();
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    let mut enricher = Enricher::new(shared.sources.clone());
    let mut sink = Forward {
        tx: tx.clone(),
        shutdown: shared.shutdown.clone(),
        gadget: desc.name,
        stats: stats.clone(),
        seen: 0,
        lost: 0,
        lost_reported: 0,
        pods,
        left_out: 0,
        sent: 0,
        max,
        stop: stop.clone(),
    };
    let ready_tx = tx.clone();
    let node = shared.node.to_string();
    let progs = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let (progs2, stats2) = (progs.clone(), stats.clone());
    let control = Control {
        on_ready: Some(Box::new(move |ids: &[u32]| {
            progs2.store(ids.len() as i64, Ordering::Relaxed);
            stats2
                .session_programs
                .fetch_add(ids.len() as i64, Ordering::Relaxed);
            let _ = ready_tx.blocking_send(Ok(TraceMessage {
                kind: Some(Kind::Ready(Ready {
                    node,
                    prog_ids: ids.to_vec(),
                    skipped: Vec::new(),
                })),
            }));
        })),
        stop,
    };
    tracing::info!(gadget = desc.name, "remote run started");
    let result = runner::run(desc, &opts, &mut enricher, &mut sink, control);
    // What the last ticks did not publish, before the session counts as over.
    sink.publish();
    stats
        .session_programs
        .fetch_sub(progs.load(Ordering::Relaxed), Ordering::Relaxed);
    stats.sessions.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(st) => {
            // Losses the sink was not told about (it had closed) count too.
            let unreported = st.lost.saturating_sub(sink.lost_reported);
            stats.add_events(desc.name, 0, unreported);
            tracing::info!(gadget = desc.name, seen = st.seen, lost = st.lost, reason = ?st.reason, "remote run ended");
            if st.reason != StopReason::SinkClosed {
                let reason = match st.reason {
                    StopReason::Stopped if sink.max.is_some_and(|m| sink.sent >= m) => {
                        StopReason::MaxEvents
                    }
                    r => r,
                };
                let _ = tx.blocking_send(Ok(TraceMessage {
                    kind: Some(Kind::Done(Done {
                        seen: sink.sent,
                        lost: st.lost,
                        filtered: st.filtered + sink.left_out,
                        reason: format!("{reason:?}").to_lowercase(),
                    })),
                }));
            }
        }
        Err(e) => {
            let msg = chain(&e);
            tracing::warn!(gadget = desc.name, error = %msg, "remote run failed");
            let _ = tx.blocking_send(Err(Status::failed_precondition(msg)));
        }
    }
}
