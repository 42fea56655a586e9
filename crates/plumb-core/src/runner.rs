//! The pipeline: attach a gadget, read its ring buffer without busy polling
//! (epoll via libbpf), decode, enrich, filter, hand to a sink; stop on the
//! first of duration, event count, a stop request or a closed sink; detach.

use crate::enrich::Enricher;
use crate::error::{Error, Result};
use crate::event::{Clock, Event, Header};
use crate::filter::Filter;
use crate::gadgets::net::kernel::{KernelNet, REFRESH};
use crate::gadgets::{Attached, GadgetDesc, Params};
use crate::loader::StartCtx;
use crate::raw;
use crate::sink::Sink;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How to run a gadget.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub filter: Filter,
    pub params: Params,
    pub duration: Option<Duration>,
    pub max_events: Option<u64>,
    pub ring_bytes: u32,
    pub wakeup_bytes: u32,
    /// Longest wait for a wake-up before reading anyway.
    pub poll_interval: Duration,
    pub node: Arc<str>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            filter: Filter::default(),
            params: Params::default(),
            duration: None,
            max_events: None,
            ring_bytes: StartCtx::DEFAULT_RING_BYTES,
            wakeup_bytes: StartCtx::DEFAULT_WAKEUP_BYTES,
            poll_interval: Duration::from_millis(50),
            node: Arc::from(node_name().as_str()),
        }
    }
}

/// This host's name (the `node` of every event).
pub fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Duration,
    MaxEvents,
    Stopped,
    SinkClosed,
}

/// What a run saw. `seen` events were delivered; `lost` never left the
/// kernel; `malformed` records were skipped; `filtered` did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStats {
    pub seen: u64,
    pub lost: u64,
    pub malformed: u64,
    pub filtered: u64,
    pub prog_ids: Vec<u32>,
    pub skipped: Vec<String>,
    pub reason: StopReason,
    /// The gadget's own counts of what it could not fully report, and the
    /// enrichment's (lookups left unanswered), as (what, how many).
    pub counters: Vec<(String, u64)>,
    /// Records the kernel wrote to the ring buffer, where the gadget
    /// counts them (network gadgets).
    pub kernel_written: Option<u64>,
}

/// Called once a gadget is attached, with its kernel program ids.
pub type OnReady = Box<dyn FnOnce(&[u32]) + Send>;

/// Hooks for whoever drives the run (CLI, agent, tests).
#[derive(Default)]
pub struct Control {
    /// Set to stop the run (signal handler, disconnected client).
    pub stop: Arc<AtomicBool>,
    /// Called once everything is attached, with the program ids.
    pub on_ready: Option<OnReady>,
}

struct State<'a> {
    enricher: &'a mut Enricher,
    filter: &'a Filter,
    sink: &'a mut dyn Sink,
    clock: Clock,
    node: Arc<str>,
    max: Option<u64>,
    seen: u64,
    malformed: u64,
    filtered: u64,
    done: Option<StopReason>,
    error: Option<io::Error>,
}

impl State<'_> {
    /// The event a decoded record stands for, enriched.
    fn event(&mut self, d: crate::gadgets::Decoded) -> Event {
        let (cgroup, workload) = self.enricher.resolve(d.hdr.cgroup_id, d.hdr.pid);
        let task = d.hdr.flags & raw::HDR_NO_TASK == 0;
        let mut ev = Event {
            body: d.body,
            header: Header {
                timestamp: self.clock.wall(d.hdr.ts_ns),
                node: self.node.clone(),
                pid: task.then_some(d.hdr.pid),
                tid: task.then_some(d.hdr.tid),
                uid: task.then_some(d.hdr.uid),
                comm: task.then(|| raw::cstr(&d.hdr.comm)),
                cgroup_id: d.hdr.cgroup_id,
                cgroup,
                workload,
            },
        };
        ev.body.enrich(self.enricher);
        ev
    }

    fn on_record(&mut self, attached: &dyn Attached, data: &[u8]) -> i32 {
        if self.done.is_some() {
            return 1;
        }
        let d = match attached.decode(data) {
            Ok(d) => d,
            Err(_) => {
                self.malformed += 1;
                return 0;
            }
        };
        let ev = self.event(d);
        if !self.filter.matches(&ev) || !attached.keep(&ev) {
            self.filtered += 1;
            return 0;
        }
        self.deliver(&ev, 1)
    }

    /// Events counted in the kernel: `n` of `d`. The kernel applied the
    /// filter exactly (counting is only chosen when it can: no workload
    /// selection, see [`run`]); the gadget's own check still applies.
    fn on_counted(&mut self, attached: &dyn Attached, d: crate::gadgets::Decoded, n: u64) {
        if self.done.is_some() {
            return;
        }
        let mut ev = self.event(d);
        ev.header.timestamp = SystemTime::now();
        if !attached.keep(&ev) {
            self.filtered += n;
            return;
        }
        let n = self.max.map_or(n, |m| n.min(m.saturating_sub(self.seen)));
        self.deliver(&ev, n);
    }

    fn deliver(&mut self, ev: &Event, n: u64) -> i32 {
        self.seen += n;
        let r = if n == 1 {
            self.sink.event(ev)
        } else {
            self.sink.event_count(ev, n)
        };
        if let Err(e) = r {
            if e.kind() == io::ErrorKind::BrokenPipe {
                self.done = Some(StopReason::SinkClosed);
            } else {
                self.error = Some(e);
                self.done = Some(StopReason::SinkClosed);
            }
            return 1;
        }
        if self.max.is_some_and(|m| self.seen >= m) {
            self.done = Some(StopReason::MaxEvents);
            return 1;
        }
        0
    }

    /// Hand on what the gadget counted in the kernel since the last call.
    fn take_counted(&mut self, attached: &dyn Attached) {
        for (d, n) in attached.counted().unwrap_or_default() {
            self.on_counted(attached, d, n);
        }
    }
}

fn sink_result(r: io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Error::Output(e)),
    }
}

/// Run `desc` until it is told to stop. Everything it attached is detached
/// before this returns, on success and on error.
pub fn run(
    desc: &GadgetDesc,
    opts: &RunOptions,
    enricher: &mut Enricher,
    sink: &mut dyn Sink,
    control: Control,
) -> Result<RunStats> {
    crate::gadgets::check_filter(desc, &opts.filter)?;
    let network = !crate::gadgets::has_task(desc);
    let owned = |f: &Filter, e: &Enricher| {
        if network && KernelNet::follows_pods(f) {
            crate::filter::netns::owned_by(f, &|w| e.fill_names(w))
        } else {
            BTreeSet::new()
        }
    };
    let mut kernel_net = if network {
        KernelNet::new(&opts.filter, &owned(&opts.filter, enricher))
    } else {
        KernelNet::default()
    };
    // Counting in the kernel skips the user-space filter, so it is chosen
    // only where the kernel's check is the whole filter (no pod, namespace
    // or container names to check).
    let count_keys = (!opts.filter.needs_workload())
        .then(|| sink.summary_keys().map(<[String]>::to_vec))
        .flatten();
    let ctx = StartCtx {
        filter: opts.filter.kernel(),
        params: &opts.params,
        ring_bytes: opts.ring_bytes,
        wakeup_bytes: opts.wakeup_bytes,
        net: kernel_net.clone(),
        count_keys,
    };
    let attached = (desc.start)(&ctx)?;
    let prog_ids = attached.prog_ids();
    let skipped = attached.skipped();
    if let Some(f) = control.on_ready {
        f(&prog_ids);
    }
    let started = Instant::now();
    let state = RefCell::new(State {
        enricher,
        filter: &opts.filter,
        sink,
        clock: Clock::new(),
        node: opts.node.clone(),
        max: opts.max_events,
        seen: 0,
        malformed: 0,
        filtered: 0,
        done: None,
        error: None,
    });
    let mut reported_lost = 0u64;
    let mut refreshed = Instant::now();
    let reason;
    {
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        for map in attached.ring_buffers() {
            builder
                .add(map, |data: &[u8]| {
                    state.borrow_mut().on_record(&*attached, data)
                })
                .map_err(|source| Error::RingBuffer {
                    gadget: desc.name,
                    source,
                })?;
        }
        let rb = builder.build().map_err(|source| Error::RingBuffer {
            gadget: desc.name,
            source,
        })?;
        loop {
            // A non-zero return from the callback also ends poll/consume
            // early; that is our own stop, not an error.
            let _ = rb.poll(opts.poll_interval);
            if state.borrow().done.is_none() {
                let _ = rb.consume();
            }
            state.borrow_mut().take_counted(&*attached);
            if network && KernelNet::follows_pods(&opts.filter) && refreshed.elapsed() >= REFRESH {
                refreshed = Instant::now();
                let now = owned(&opts.filter, state.borrow().enricher);
                if let (Some(old), Some(map)) =
                    (kernel_net.refresh(&opts.filter, &now), attached.netns_map())
                {
                    crate::gadgets::net::kernel::sync(map, &old, &kernel_net.netns).map_err(
                        |source| Error::RingBuffer {
                            gadget: desc.name,
                            source,
                        },
                    )?;
                }
            }
            let lost = attached.lost();
            let mut st = state.borrow_mut();
            if lost > reported_lost {
                let open = sink_result(st.sink.lost(
                    desc.name,
                    lost - reported_lost,
                    SystemTime::now(),
                ))?;
                reported_lost = lost;
                if !open {
                    st.done.get_or_insert(StopReason::SinkClosed);
                }
            }
            if !sink_result(st.sink.flush())? || !sink_result(st.sink.tick())? {
                st.done.get_or_insert(StopReason::SinkClosed);
            }
            if let Some(e) = st.error.take() {
                return Err(Error::Output(e));
            }
            if let Some(r) = st.done {
                reason = r;
                break;
            }
            if control.stop.load(Ordering::Relaxed) {
                reason = StopReason::Stopped;
                break;
            }
            if opts.duration.is_some_and(|d| started.elapsed() >= d) {
                reason = StopReason::Duration;
                // Read what is already in the buffer before detaching.
                drop(st);
                let _ = rb.consume();
                break;
            }
        }
    }
    if reason != StopReason::SinkClosed {
        // What was counted in the kernel since the last poll.
        state.borrow_mut().take_counted(&*attached);
    }
    let lost = attached.lost();
    let kernel_written = attached.kernel_written();
    let mut counters: Vec<(String, u64)> = attached
        .counters()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    drop(attached);
    let st = state.into_inner();
    if let Some(net) = st.enricher.net_stats() {
        counters.push((
            "address lookups left unanswered (namespace scan rate-limited)".into(),
            net.skipped_lookups,
        ));
    }
    if lost > reported_lost && reason != StopReason::SinkClosed {
        sink_result(
            st.sink
                .lost(desc.name, lost - reported_lost, SystemTime::now()),
        )?;
    }
    if reason != StopReason::SinkClosed {
        sink_result(st.sink.finish())?;
    }
    Ok(RunStats {
        seen: st.seen,
        lost,
        malformed: st.malformed,
        filtered: st.filtered,
        prog_ids,
        skipped,
        reason,
        counters,
        kernel_written,
    })
}
