//! One API client's gadget run: the local pipeline on its own OS thread
//! (skeletons are not `Send`) with a sink that forwards into the client's
//! gRPC stream. The run stops when the client cancels or disconnects (the
//! stream's receiver is gone) or the agent shuts down, and then everything
//! it loaded is unloaded.
//!
//! The pipeline never waits for a client: the stream has a bounded queue,
//! and events that find it full are dropped, counted, and reported to the
//! client as lost (`slow_client`) as soon as there is room again. A client
//! that stops reading thus costs its own events, never the agent's
//! shutdown. At most `max_sessions` runs go at once.

use crate::metrics::{AgentStats, GadgetCounts, RingGauge};
use crate::progs;
use crate::proto::{trace_message::Kind, Done, Lost, Ready, TraceMessage, TraceRequest};
use crate::ringbuf::RingFill;
use plumb_core::enrich::{Enricher, MetadataSource};
use plumb_core::event::Event;
use plumb_core::filter::FilterArgs;
use plumb_core::gadgets::{self, Params};
use plumb_core::prepare::{prepare, Limits};
use plumb_core::runner::{self, Control, RunOptions, StopReason};
use plumb_core::sink::Sink;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::Status;

pub type Stream = mpsc::Receiver<Result<TraceMessage, Status>>;

/// Messages queued for one client before its events are dropped.
pub const QUEUE: usize = 1024;

/// How long the last messages of a run (ready, done, error) wait for room
/// in a slow client's queue; during shutdown, much less.
const LAST_WORDS: Duration = Duration::from_secs(5);
const LAST_WORDS_STOPPING: Duration = Duration::from_millis(200);

/// What every session needs from the agent.
#[derive(Clone)]
pub struct Shared {
    pub stats: Arc<AgentStats>,
    pub sources: Vec<Arc<dyn MetadataSource>>,
    pub node: Arc<str>,
    /// Set when the agent shuts down: every run ends.
    pub shutdown: Arc<AtomicBool>,
    /// The most gadget runs at once.
    pub max_sessions: usize,
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

/// A place among the running sessions (the `plumb_api_sessions` gauge),
/// given back when the run's thread is done.
pub(crate) struct Slot(Arc<AgentStats>);

impl Slot {
    pub(crate) fn take(stats: &Arc<AgentStats>, max: usize) -> Option<Slot> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        stats
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(stats.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

type Tx = mpsc::Sender<Result<TraceMessage, Status>>;

fn msg(kind: Kind) -> Result<TraceMessage, Status> {
    Ok(TraceMessage { kind: Some(kind) })
}

/// Queue `m`, waiting up to `within` for room; false if it could not be.
fn send_within(tx: &Tx, mut m: Result<TraceMessage, Status>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match tx.try_send(m) {
            Ok(()) => return true,
            Err(TrySendError::Closed(_)) => return false,
            Err(TrySendError::Full(back)) => {
                if Instant::now() >= deadline {
                    return false;
                }
                m = back;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "client went away")
}

/// The ring buffers, mapped by the ready hook and picked up by the sink.
type RingSlot = Arc<Mutex<Option<RingFill>>>;

struct Forward {
    tx: Tx,
    gadget: &'static str,
    stats: Arc<AgentStats>,
    /// Counted here, added to the agent's metrics every tick (not under a
    /// lock per event).
    pending: GadgetCounts,
    /// Not yet told to the client: kernel losses, events dropped for it.
    untold_lost: u64,
    untold_dropped: u64,
    delivered: u64,
    dropped: u64,
    /// Kernel losses the pipeline reported to this sink.
    lost: u64,
    session: u64,
    rings: RingSlot,
    ring: Option<RingFill>,
    /// The fill seen when the current batch of records began.
    batch_fill: Option<f64>,
    peak_fill: f64,
    /// This run's stop, set at a tick once the agent shuts down.
    stop: Arc<AtomicBool>,
    /// The agent's own stop, passed on to `stop` at every tick.
    shutdown: Arc<AtomicBool>,
}

impl Forward {
    /// Tell the client what it missed, oldest first. Ok(false): no room.
    fn tell_losses(&mut self) -> io::Result<bool> {
        let gadget = self.gadget.to_string();
        for (count, cause) in [
            (&mut self.untold_lost, "kernel"),
            (&mut self.untold_dropped, "slow_client"),
        ] {
            if *count == 0 {
                continue;
            }
            let lost = Lost {
                gadget: gadget.clone(),
                count: *count,
                cause: cause.to_string(),
            };
            match self.tx.try_send(msg(Kind::Lost(lost))) {
                Ok(()) => *count = 0,
                Err(TrySendError::Full(_)) => return Ok(false),
                Err(TrySendError::Closed(_)) => return Err(gone()),
            }
        }
        Ok(true)
    }

    fn drop_one(&mut self) {
        self.dropped += 1;
        self.untold_dropped += 1;
        self.pending.dropped += 1;
    }

    fn ring_fill(&mut self) -> Option<f64> {
        if self.ring.is_none() {
            self.ring = self.rings.try_lock().ok()?.take();
        }
        self.ring.as_ref().map(RingFill::ratio)
    }

    fn publish(&mut self) {
        if self.pending != GadgetCounts::default() {
            self.stats.add(self.gadget, self.pending);
            self.pending = GadgetCounts::default();
        }
        if let Some(now) = self.ring_fill() {
            let fill = self.batch_fill.take().unwrap_or(0.0).max(now);
            self.peak_fill = self.peak_fill.max(fill);
            self.stats.set_ring(
                self.session,
                Some(RingGauge {
                    gadget: self.gadget,
                    fill,
                    peak: self.peak_fill,
                }),
            );
        }
    }
}

impl Sink for Forward {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if self.batch_fill.is_none() {
            // The first record of a batch: libbpf has not yet moved the
            // consumer past it, so this is the whole backlog.
            self.batch_fill = Some(self.ring_fill().unwrap_or(0.0));
        }
        // Full: drop before paying for the serialisation.
        if self.tx.capacity() == 0 || !self.tell_losses()? {
            self.drop_one();
            return Ok(());
        }
        let bytes = serde_json::to_vec(ev)?;
        match self.tx.try_send(msg(Kind::EventJson(bytes))) {
            Ok(()) => {
                self.delivered += 1;
                self.pending.delivered += 1;
            }
            Err(TrySendError::Full(_)) => self.drop_one(),
            Err(TrySendError::Closed(_)) => return Err(gone()),
        }
        Ok(())
    }

    fn lost(&mut self, _gadget: &str, count: u64, _at: SystemTime) -> io::Result<()> {
        self.lost += count;
        self.untold_lost += count;
        self.pending.lost += count;
        self.tell_losses().map(|_| ())
    }

    /// Called every poll interval even when nothing happens: notices a
    /// client that left while the gadget was quiet.
    fn tick(&mut self) -> io::Result<()> {
        if self.shutdown.load(Ordering::Relaxed) {
            self.stop.store(true, Ordering::Relaxed);
        }
        self.publish();
        self.tell_losses()?;
        if self.tx.is_closed() {
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
    let mut args: FilterArgs = json("filter", &req.filter_json)?;
    // The pods a label selection resolved to, checked like -n/--pod: in
    // the kernel (their cgroups and network namespaces) and in user space.
    args.pods.extend(
        req.pods
            .iter()
            .map(|p| (p.namespace.clone(), p.name.clone())),
    );
    let prepared = prepare(&args, Some((desc, &params)), &shared.sources).map_err(|e| match e {
        plumb_core::Error::BadFilter { .. } | plumb_core::Error::BadParam { .. } => {
            Status::invalid_argument(chain(&e))
        }
        _ => Status::failed_precondition(chain(&e)),
    })?;
    let opts = prepared.run_options(
        params,
        Limits {
            duration: (req.duration_ms > 0).then(|| Duration::from_millis(req.duration_ms)),
            max_events: (req.max_events > 0).then_some(req.max_events),
            ring_bytes: None,
        },
        shared.node.clone(),
    );
    let Some(slot) = Slot::take(&shared.stats, shared.max_sessions) else {
        shared
            .stats
            .sessions_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            gadget = desc.name,
            max = shared.max_sessions,
            "gadget run refused: too many sessions"
        );
        return Err(Status::resource_exhausted(format!(
            "node {}: {} gadget sessions already run, the most this agent allows (--max-sessions)",
            shared.node, shared.max_sessions
        )));
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name(format!("plumb-{}", desc.name))
        .spawn(move || run(desc, opts, prepared.fs, tx, shared, slot))
        .map_err(|e| Status::resource_exhausted(format!("cannot start a thread: {e}")))?;
    Ok(rx)
}

fn run(
    desc: &'static gadgets::GadgetDesc,
    opts: RunOptions,
    fs: Option<plumb_core::enrich::cgroupfs::CgroupFs>,
    tx: Tx,
    shared: Shared,
    _slot: Slot,
) {
    // This run's stop: the agent's shutdown, passed on at each tick.
    let stop = Arc::new(AtomicBool::new(shared.shutdown.load(Ordering::Relaxed)));
    let stats = shared.stats.clone();
    let session = stats.session_id();
    let rings: RingSlot = Arc::default();
    let mut enricher = Enricher::with_fs(fs, shared.sources.clone(), Enricher::DEFAULT_CAPACITY);
    // Names for containers that end before their events are read; without
    // the watcher (an old kernel) only those stay unnamed.
    let _ = enricher.remember_new_cgroups();
    let mut sink = Forward {
        tx: tx.clone(),
        gadget: desc.name,
        stats: stats.clone(),
        pending: GadgetCounts::default(),
        untold_lost: 0,
        untold_dropped: 0,
        delivered: 0,
        dropped: 0,
        lost: 0,
        session,
        rings: rings.clone(),
        ring: None,
        batch_fill: None,
        peak_fill: 0.0,
        stop: stop.clone(),
        shutdown: shared.shutdown.clone(),
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
            let facts = progs::facts(ids);
            match RingFill::of_maps(&facts.map_ids) {
                Ok(r) => {
                    if let Ok(mut slot) = rings.lock() {
                        *slot = Some(r);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "ring buffer fill not available"),
            }
            let ready = Ready {
                node,
                prog_ids: ids.to_vec(),
                skipped: facts.unlinked,
            };
            send_within(&ready_tx, msg(Kind::Ready(ready)), LAST_WORDS);
        })),
        // The agent's stop ends the run as stopped (the client gets its
        // Done), not as a closed stream.
        stop,
    };
    tracing::info!(gadget = desc.name, "remote run started");
    let result = runner::run(desc, &opts, &mut enricher, &mut sink, control);
    // What the last ticks did not publish, before the session counts as over.
    sink.publish();
    stats.set_ring(session, None);
    sink.ring = None;
    stats
        .session_programs
        .fetch_sub(progs.load(Ordering::Relaxed), Ordering::Relaxed);
    let within = if shared.shutdown.load(Ordering::Relaxed) {
        LAST_WORDS_STOPPING
    } else {
        LAST_WORDS
    };
    match result {
        Ok(st) => {
            // Losses the sink was not told about (it had closed) count too.
            stats.add(
                desc.name,
                GadgetCounts {
                    lost: st.lost.saturating_sub(sink.lost),
                    filtered: st.filtered,
                    ..GadgetCounts::default()
                },
            );
            tracing::info!(gadget = desc.name, seen = sink.delivered, lost = st.lost, dropped = sink.dropped, filtered = st.filtered, reason = ?st.reason, "remote run ended");
            if st.reason != StopReason::SinkClosed {
                let deadline = Instant::now() + within;
                while !matches!(sink.tell_losses(), Ok(true) | Err(_)) && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let reason = st.reason;
                let done = Done {
                    seen: sink.delivered,
                    lost: st.lost + sink.dropped,
                    filtered: st.filtered,
                    reason: format!("{reason:?}").to_lowercase(),
                };
                let left = deadline.saturating_duration_since(Instant::now());
                send_within(&tx, msg(Kind::Done(done)), left);
            }
        }
        Err(e) => {
            let msg = chain(&e);
            tracing::warn!(gadget = desc.name, error = %msg, "remote run failed");
            send_within(&tx, Err(Status::failed_precondition(msg)), within);
        }
    }
}
