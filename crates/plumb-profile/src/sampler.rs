//! Loading the profiler, one perf event per CPU, following process notes
//! while it runs, and reading the kernel's counts at the end.

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/profile.skel.rs"));
}

use crate::assemble::{self, Sampled, Want};
use crate::notes::{self, Captures, Note};
use crate::symbols::{Image, ProcKey, Symbols};
use crate::{perf, Completeness, Error, Profile, ProfileOptions, Result};
use bytemuck::{Pod, Zeroable};
use libbpf_rs::{MapCore, MapFlags};
use plumb_core::enrich::Enricher;
use plumb_core::event::Header;
use plumb_core::filter::Filter;
use plumb_core::loader::{self, Loaded};
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const GADGET: &str = "profile";
/// PROFILE_MAX_DEPTH of profile.h.
const MAX_DEPTH: usize = 127;

/// `struct sample_key` of profile.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct RawKey {
    cgroup_id: u64,
    start_ns: u64,
    exec_id: u32,
    pad: u32,
    pid: u32,
    tid: u32,
    kstack: i32,
    ustack: i32,
    comm: [u8; 16],
}
const _: () =
    assert!(std::mem::size_of::<skel::types::sample_key>() == std::mem::size_of::<RawKey>());
const _: () =
    assert!(std::mem::size_of::<skel::types::proc_note>() == std::mem::size_of::<notes::RawNote>());
/// `struct image_id` of profile.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct RawImage {
    start_ns: u64,
    exec_id: u32,
    pad: u32,
}
const _: () =
    assert!(std::mem::size_of::<skel::types::image_id>() == std::mem::size_of::<RawImage>());

impl RawKey {
    fn proc(&self) -> ProcKey {
        ProcKey {
            pid: self.pid,
            image: Image {
                start_ns: self.start_ns,
                exec_id: self.exec_id,
            },
        }
    }
}

/// Slots of the `stats` array (enum profile_stat).
mod stat {
    pub const SAMPLES: u32 = 0;
    pub const IDLE: u32 = 1;
    pub const FILTERED: u32 = 2;
    pub const LOST_FULL: u32 = 3;
    pub const NOTE_LOST: u32 = 4;
}

/// Where a running profile is.
#[derive(Debug, Clone)]
pub struct Progress {
    pub elapsed: Duration,
    pub duration: Duration,
    /// Samples the kernel aggregated so far (before the user-space filter).
    pub samples: u64,
}

/// The program and its perf events. Dropping it detaches everything: each
/// perf-event link (in `loaded`) owns its event's descriptor and closes it.
struct Running {
    loaded: Loaded<skel::ProfileSkel<'static>>,
    /// The events' descriptors, owned by the links; kept to pause them.
    events: Vec<RawFd>,
}

fn attach_error(hook: &str, source: libbpf_rs::Error) -> Error {
    Error::Core(plumb_core::Error::Attach {
        gadget: GADGET,
        hook: hook.to_string(),
        source,
    })
}

impl Running {
    fn start(opts: &ProfileOptions, filter: &Filter) -> Result<Running> {
        let raw = filter.kernel();
        let mut loaded =
            loader::load(GADGET, skel::ProfileSkelBuilder::default(), |open| {
                let ro = open.maps.rodata_data.as_deref_mut().ok_or_else(|| {
                    plumb_core::Error::Open {
                        gadget: GADGET,
                        source: libbpf_rs::Error::from(std::io::Error::other(
                            "BPF object has no .rodata",
                        )),
                    }
                })?;
                loader::set_filter(&mut ro.plumb_filter, &raw);
                ro.want_kernel = opts.kernel as u32;
                ro.want_user = opts.user as u32;
                ro.exclude_tgid = opts.excluded_tgid();
                ro.task_btf = plumb_core::kernel::perf_event_has_task_btf() as u32;
                open.maps
                    .events
                    .set_max_entries(256 << 10)
                    .map_err(|source| plumb_core::Error::Open {
                        gadget: GADGET,
                        source,
                    })?;
                Ok(())
            })?;
        if opts.user {
            // Before the clocks start, so no exec or new mapping of a
            // sampled process goes unseen.
            let link = loaded
                .skel_mut()
                .progs
                .plumb_profile_exec
                .attach()
                .map_err(|e| attach_error("tracepoint sched:sched_process_exec", e))?;
            loaded.keep_link(link);
            let link = loaded
                .skel_mut()
                .progs
                .plumb_profile_mmap
                .attach()
                .map_err(|e| attach_error("tracepoint syscalls:sys_enter_mmap", e))?;
            loaded.keep_link(link);
        }
        // On error, `loaded` and the links so far are dropped: detached.
        let mut events = Vec::new();
        for (cpu, fd) in perf::open_all(opts.frequency)? {
            let link = loaded
                .skel_mut()
                .progs
                .plumb_profile_sample
                .attach_perf_event(fd.as_raw_fd())
                .map_err(|e| attach_error(&format!("perf_event cpu-clock on CPU {cpu}"), e))?;
            loaded.keep_link(link);
            // The link closes the event when it is destroyed.
            events.push(fd.into_raw_fd());
        }
        Ok(Running { loaded, events })
    }

    /// Stop sampling on every CPU; the maps stay readable.
    fn pause(&self) {
        for &fd in &self.events {
            // SAFETY: an ioctl without argument on a perf event whose link
            // (and so the descriptor) is still alive.
            unsafe { libc::ioctl(fd, perf::ioc_disable(), 0) };
        }
    }

    fn stat(&self, slot: u32) -> u64 {
        let map = &self.loaded.skel().maps.stats;
        match map.lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY) {
            Ok(Some(vals)) => vals
                .iter()
                .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .sum(),
            _ => 0,
        }
    }

    /// Times the kernel skipped the program because another BPF program
    /// was running on that CPU when the timer fired: samples lost.
    fn recursion_misses(&self) -> u64 {
        plumb_core::loader::recursion_misses(&self.loaded.skel().progs.plumb_profile_sample)
    }

    fn stack(&self, id: i32) -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        let map = &self.loaded.skel().maps.stacks;
        let Ok(Some(bytes)) = map.lookup(&(id as u32).to_ne_bytes(), MapFlags::ANY) else {
            return Vec::new();
        };
        bytes
            .chunks_exact(8)
            .take(MAX_DEPTH)
            .filter_map(|c| c.try_into().ok().map(u64::from_ne_bytes))
            .take_while(|&ip| ip != 0)
            .collect()
    }

    fn counts(&self) -> Vec<(RawKey, u64)> {
        let map = &self.loaded.skel().maps.counts;
        map.keys()
            .filter_map(|k| {
                let key: RawKey = bytemuck::try_pod_read_unaligned(&k).ok()?;
                let v = map.lookup(&k, MapFlags::ANY).ok()??;
                let n = u64::from_ne_bytes(v.get(..8)?.try_into().ok()?);
                Some((key, n))
            })
            .collect()
    }

    /// The image `pid` runs now, as far as the kernel side saw.
    fn latest(&self, pid: u32) -> Option<Image> {
        let map = &self.loaded.skel().maps.latest;
        let v = map.lookup(&pid.to_ne_bytes(), MapFlags::ANY).ok()??;
        image_of(&v)
    }

    fn all_latest(&self) -> HashMap<u32, Image> {
        let map = &self.loaded.skel().maps.latest;
        map.keys()
            .filter_map(|k| {
                let pid = u32::from_ne_bytes(k.get(..4)?.try_into().ok()?);
                let v = map.lookup(&k, MapFlags::ANY).ok()??;
                Some((pid, image_of(&v)?))
            })
            .collect()
    }
}

fn image_of(bytes: &[u8]) -> Option<Image> {
    let raw: RawImage =
        bytemuck::try_pod_read_unaligned(bytes.get(..std::mem::size_of::<RawImage>())?).ok()?;
    Some(Image {
        start_ns: raw.start_ns,
        exec_id: raw.exec_id,
    })
}

/// The user-space half of the filter (pod, namespace, container, comm
/// where the kernel did not check it), asked with the same header for a
/// process note and for a sampled stack.
struct UserFilter {
    filter: Filter,
    enricher: Enricher,
    node: Arc<str>,
    started: SystemTime,
}

impl UserFilter {
    fn wants(&mut self, pid: u32, tid: u32, comm: &str, cgroup_id: u64) -> bool {
        let (cgroup, workload) = self.enricher.resolve(cgroup_id, pid);
        let header = Header {
            timestamp: self.started,
            node: self.node.clone(),
            pid: Some(pid),
            tid: Some(tid),
            uid: None,
            comm: Some(comm.to_string()),
            cgroup_id,
            cgroup,
            workload,
        };
        self.filter.matches_header(&header)
    }
}

/// CPU time this thread has used, in ns.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

pub fn run(
    opts: &ProfileOptions,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Profile> {
    if opts.frequency == 0 {
        return Err(Error::Frequency("must be at least 1 Hz".into()));
    }
    if let Some(max) = perf::max_sample_rate() {
        if opts.frequency > max {
            return Err(Error::Frequency(format!(
                "{} Hz is above this kernel's limit of {max} Hz (kernel.perf_event_max_sample_rate)",
                opts.frequency
            )));
        }
    }
    if !opts.kernel && !opts.user {
        return Err(Error::Frequency(
            "nothing to sample: kernel and user stacks are both off".into(),
        ));
    }
    let plumb_core::prepare::Prepared { filter, fs } =
        plumb_core::prepare::prepare(&opts.filter, None, &opts.sources)?;
    let running = Running::start(opts, &filter)?;
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let node: Arc<str> = plumb_core::runner::node_name().into();
    // The uid is checked in the kernel; a header has none to compare.
    let mut user_filter = UserFilter {
        filter: Filter {
            uid: None,
            ..filter
        },
        enricher: with_created_cgroups(Enricher::with_fs(
            fs,
            opts.sources.clone(),
            Enricher::DEFAULT_CAPACITY,
        )),
        node: node.clone(),
        started: started_wall,
    };
    let mut symbols = Symbols::new();
    let mut captures = Captures::default();
    let still_current = |key: ProcKey| running.latest(key.pid) == Some(key.image);

    // Process images announced by the kernel: capture their mappings now,
    // while they exist, if the filter wants them.
    let fresh: RefCell<Vec<Note>> = RefCell::new(Vec::new());
    let mut builder = libbpf_rs::RingBufferBuilder::new();
    builder
        .add(&running.loaded.skel().maps.events, |data: &[u8]| {
            fresh.borrow_mut().extend(notes::decode(data));
            0
        })
        .map_err(|source| plumb_core::Error::RingBuffer {
            gadget: GADGET,
            source,
        })?;
    let ring = builder
        .build()
        .map_err(|source| plumb_core::Error::RingBuffer {
            gadget: GADGET,
            source,
        })?;
    let mut take_notes = |symbols: &mut Symbols, captures: &mut Captures| {
        let now = Instant::now();
        for n in fresh.borrow_mut().drain(..) {
            if user_filter.wants(n.key.pid, n.tid, &n.comm, n.cgroup_id) {
                captures.noted(n.key, now, symbols, &still_current);
            }
        }
    };
    let mut last_tick = Instant::now();
    while started.elapsed() < opts.duration && !stop.load(Ordering::Relaxed) {
        let left = opts.duration.saturating_sub(started.elapsed());
        // An interrupted poll (a signal) is not an error: the loop checks stop.
        let _ = ring.poll(left.min(Duration::from_millis(100)));
        take_notes(&mut symbols, &mut captures);
        captures.run_due(Some(Instant::now()), &mut symbols, &still_current);
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            progress(&Progress {
                elapsed: started.elapsed(),
                duration: opts.duration,
                samples: running.stat(stat::SAMPLES),
            });
        }
    }
    running.pause();
    let elapsed = started.elapsed();
    let _ = ring.consume();
    take_notes(&mut symbols, &mut captures);
    captures.run_due(None, &mut symbols, &still_current);
    drop(ring);

    let symbolize_started = Instant::now();
    let cpu_started = thread_cpu_ns();
    let aggregated = running.stat(stat::SAMPLES);
    let mut done = Completeness {
        lost: running.stat(stat::LOST_FULL),
        missed: running.recursion_misses(),
        idle: running.stat(stat::IDLE),
        filtered_in_kernel: running.stat(stat::FILTERED),
        process_notes_lost: running.stat(stat::NOTE_LOST),
        ..Completeness::default()
    };
    // The user-space filter first: stacks of processes it rejects are
    // never read, symbolized or captured.
    let counts = running.counts();
    let read: u64 = counts.iter().map(|(_, n)| n).sum();
    // Counts the kernel made but that could not be read back are lost too.
    done.lost += aggregated.saturating_sub(read);
    let (kept, filtered) = assemble::select(counts, |k| {
        user_filter.wants(k.pid, k.tid, &notes::comm_str(&k.comm), k.cgroup_id)
    });
    done.filtered_in_user_space = filtered;
    let mut stacks: HashMap<i32, Arc<[u64]>> = HashMap::new();
    let mut stack = |id: i32| -> Arc<[u64]> {
        stacks
            .entry(id)
            .or_insert_with(|| running.stack(id).into())
            .clone()
    };
    let sampled: Vec<Sampled> = kept
        .into_iter()
        .map(|(k, count)| Sampled {
            proc: k.proc(),
            tid: k.tid,
            comm: notes::comm_str(&k.comm),
            cgroup_id: k.cgroup_id,
            kstack_id: k.kstack,
            ustack_id: k.ustack,
            kstack: stack(k.kstack),
            ustack: stack(k.ustack),
            count,
        })
        .collect();
    let latest = running.all_latest();
    let cpus = running.events.len() as u32;
    let prog_ids = running.loaded.prog_ids();
    // Everything is read: unload before the (slower) symbolization.
    drop(running);

    let want = Want {
        kernel: opts.kernel,
        user: opts.user,
        depth: perf::stack_depth_limit(MAX_DEPTH),
    };
    // After the end, /proc shows an image only if the kernel saw no exec
    // since (and the pid was not reused: the capture checks that itself).
    let may_recapture = |key: ProcKey| latest.get(&key.pid) == Some(&key.image);
    let stacks = assemble::assemble(
        sampled,
        want,
        &mut symbols,
        &may_recapture,
        &mut user_filter.enricher,
        &mut done,
    );
    Ok(Profile {
        node: node.to_string(),
        frequency_hz: opts.frequency,
        started: started_wall,
        duration_ns: elapsed.as_nanos() as u64,
        symbolize_ns: symbolize_started.elapsed().as_nanos() as u64,
        symbolize_cpu_ns: thread_cpu_ns().saturating_sub(cpu_started),
        cpus,
        max_stack_depth: want.depth as u32,
        completeness: done,
        stacks,
        prog_ids,
    })
}

/// The profile's enricher, keeping the paths of cgroups made during the
/// profile: a process of a container that ended is still attributed. Without
/// it (no permission for the watcher) only that is lost.
fn with_created_cgroups(mut e: Enricher) -> Enricher {
    let _ = e.remember_new_cgroups();
    e
}
