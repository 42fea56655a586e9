//! Loading the profiler, one perf event per CPU, and reading the result.

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/profile.skel.rs"));
}

use crate::symbols::{Symbols, UserAddr};
use crate::{Completeness, Error, Frame, Profile, ProfileOptions, Result, Stack};
use bytemuck::{Pod, Zeroable};
use libbpf_rs::{MapCore, MapFlags};
use plumb_core::enrich::{cgroupfs::CgroupFs, Enricher};
use plumb_core::event::Header;
use plumb_core::filter::Filter;
use plumb_core::loader::{self, Loaded};
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const GADGET: &str = "profile";
const MAX_DEPTH: usize = 127;

/// `struct sample_key` of profile.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct RawKey {
    cgroup_id: u64,
    pid: u32,
    tid: u32,
    kstack: i32,
    ustack: i32,
    gen: u32,
    pad: u32,
    comm: [u8; 16],
}
const _: () =
    assert!(std::mem::size_of::<skel::types::sample_key>() == std::mem::size_of::<RawKey>());

/// Slots of the `stats` array (enum profile_stat).
mod stat {
    pub const SAMPLES: u32 = 0;
    pub const IDLE: u32 = 1;
    pub const FILTERED: u32 = 2;
    pub const LOST_FULL: u32 = 3;
    pub const KSTACK_LOST: u32 = 4;
    pub const USTACK_LOST: u32 = 5;
    pub const NOTE_LOST: u32 = 6;
}

/// Where a running profile is.
#[derive(Debug, Clone)]
pub struct Progress {
    pub elapsed: Duration,
    pub duration: Duration,
    pub samples: u64,
}

/// The CPUs the kernel has online (`0-3,5`).
fn online_cpus() -> Vec<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<u32>().ok()),
        }
    }
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        cpus.extend(0..n);
    }
    cpus
}

/// A software CPU-clock sampling event on one CPU, for every task.
fn open_cpu_clock(cpu: u32, frequency: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is plain data; all-zero is its default.
    let mut attr: libbpf_sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = libbpf_sys::PERF_TYPE_SOFTWARE;
    attr.size = std::mem::size_of::<libbpf_sys::perf_event_attr>() as u32;
    attr.config = libbpf_sys::PERF_COUNT_SW_CPU_CLOCK as u64;
    attr.__bindgen_anon_1.sample_freq = frequency as u64;
    attr.set_freq(1);
    // SAFETY: a valid attr; pid -1 with a cpu means every task on that CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const libbpf_sys::perf_event_attr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            libbpf_sys::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn max_sample_rate() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The program and its perf events. Dropping it detaches everything: each
/// perf-event link (in `loaded`) owns its event's descriptor and closes it.
struct Running {
    loaded: Loaded<skel::ProfileSkel<'static>>,
    /// The events' descriptors, owned by the links; kept to pause them.
    events: Vec<RawFd>,
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
                open.maps
                    .events
                    .set_max_entries(256 << 10)
                    .map_err(|source| plumb_core::Error::Open {
                        gadget: GADGET,
                        source,
                    })?;
                Ok(())
            })?;
        let mut events = Vec::new();
        for cpu in online_cpus() {
            let fd = match open_cpu_clock(cpu, opts.frequency) {
                Ok(fd) => fd,
                // A CPU that went offline since we listed them.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => continue,
                Err(source) => return Err(Error::PerfEvent { cpu, source }),
            };
            let link = loaded
                .skel_mut()
                .progs
                .plumb_profile_sample
                .attach_perf_event(fd.as_raw_fd())
                .map_err(|source| plumb_core::Error::Attach {
                    gadget: GADGET,
                    hook: format!("perf_event cpu-clock on CPU {cpu}"),
                    source,
                })?;
            loaded.keep_link(link);
            // The link closes the event when it is destroyed.
            events.push(fd.into_raw_fd());
        }
        if opts.user {
            // New images get their mappings captured under a new generation.
            let link = loaded
                .skel_mut()
                .progs
                .plumb_profile_exec
                .attach()
                .map_err(|source| plumb_core::Error::Attach {
                    gadget: GADGET,
                    hook: "tracepoint sched:sched_process_exec".into(),
                    source,
                })?;
            loaded.keep_link(link);
        }
        Ok(Running { loaded, events })
    }

    /// Stop sampling on every CPU; the maps stay readable.
    fn pause(&self) {
        for &fd in &self.events {
            // SAFETY: an ioctl without argument on a perf event whose link
            // (and so the descriptor) is still alive.
            unsafe { libc::ioctl(fd, perf_ioc_disable(), 0) };
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
        use std::os::fd::AsFd;
        let prog = &self.loaded.skel().progs.plumb_profile_sample;
        // SAFETY: bpf_prog_info is plain data; the kernel fills at most len bytes.
        let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: a valid program fd and a buffer of `len` bytes.
        let rc = unsafe {
            libbpf_sys::bpf_prog_get_info_by_fd(prog.as_fd().as_raw_fd(), &mut info, &mut len)
        };
        if rc == 0 {
            info.recursion_misses
        } else {
            0
        }
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
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
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
}

/// A frame that stands for something other than a function.
fn placeholder(name: &str, kernel: bool) -> Frame {
    Frame {
        name: Arc::from(name),
        module: None,
        kernel,
        symbolized: true,
    }
}

/// `_IO('$', 1)`: PERF_EVENT_IOC_DISABLE.
fn perf_ioc_disable() -> libc::c_ulong {
    ((b'$' as libc::c_ulong) << 8) | 1
}

fn comm_str(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

pub fn run(
    opts: &ProfileOptions,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Profile> {
    if opts.frequency == 0 {
        return Err(Error::Frequency("must be at least 1 Hz".into()));
    }
    if let Some(max) = max_sample_rate() {
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
    plumb_core::preflight::check_all()?;
    let fs = CgroupFs::discover();
    let mut filter = Filter::parse(&opts.filter, fs.as_ref().map(|f| f.root()))?;
    if let Some(fs) = &fs {
        filter.narrow_to_containers(fs);
    }
    let mut symbols = Symbols::new();
    let running = Running::start(opts, &filter)?;
    let started_wall = SystemTime::now();
    let started = Instant::now();

    // New processes announced by the kernel: capture their mappings now,
    // while they exist.
    let fresh: RefCell<Vec<(u32, u32)>> = RefCell::new(Vec::new());
    let mut builder = libbpf_rs::RingBufferBuilder::new();
    builder
        .add(&running.loaded.skel().maps.events, |data: &[u8]| {
            if let (Some(p), Some(g)) = (data.get(..4), data.get(4..8)) {
                let word = |b: &[u8]| u32::from_ne_bytes(b.try_into().unwrap_or_default());
                fresh.borrow_mut().push((word(p), word(g)));
            }
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
    let mut last_tick = Instant::now();
    while started.elapsed() < opts.duration && !stop.load(Ordering::Relaxed) {
        let left = opts.duration.saturating_sub(started.elapsed());
        // An interrupted poll (a signal) is not an error: the loop checks stop.
        let _ = ring.poll(left.min(Duration::from_millis(100)));
        for (pid, gen) in fresh.borrow_mut().drain(..) {
            symbols.capture(pid, gen);
        }
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
    drop(ring);
    for (pid, gen) in fresh.into_inner() {
        symbols.capture(pid, gen);
    }

    let mut done = Completeness {
        samples: running.stat(stat::SAMPLES),
        lost: running.stat(stat::LOST_FULL),
        missed: running.recursion_misses(),
        idle: running.stat(stat::IDLE),
        filtered_in_kernel: running.stat(stat::FILTERED),
        kernel_stacks_lost: running.stat(stat::KSTACK_LOST),
        user_stacks_lost: running.stat(stat::USTACK_LOST),
        process_notes_lost: running.stat(stat::NOTE_LOST),
        ..Completeness::default()
    };
    let symbolize_started = Instant::now();
    let counts = running.counts();
    let mut stacks_k: HashMap<i32, Vec<u64>> = HashMap::new();
    let mut stacks_u: HashMap<i32, Vec<u64>> = HashMap::new();
    for (k, _) in &counts {
        stacks_k
            .entry(k.kstack)
            .or_insert_with(|| running.stack(k.kstack));
        stacks_u
            .entry(k.ustack)
            .or_insert_with(|| running.stack(k.ustack));
    }
    let cpus = running.events.len() as u32;
    let prog_ids = running.loaded.prog_ids();
    // Everything is read: unload before the (slower) symbolization.
    drop(running);

    // Symbolize every distinct address once.
    let mut kaddrs: Vec<u64> = stacks_k.values().flatten().copied().collect();
    kaddrs.sort_unstable();
    kaddrs.dedup();
    let kernel = symbols.kernel(&kaddrs);
    let mut uaddrs: Vec<UserAddr> = counts
        .iter()
        .flat_map(|(k, _)| {
            stacks_u[&k.ustack].iter().map(move |&addr| UserAddr {
                pid: k.pid,
                gen: k.gen,
                addr,
            })
        })
        .collect();
    uaddrs.sort_unstable();
    uaddrs.dedup();
    let user = symbols.user(&uaddrs);

    let mut enricher = Enricher::with_fs(fs, opts.sources.clone(), Enricher::DEFAULT_CAPACITY);
    let node: Arc<str> = plumb_core::runner::node_name().into();
    // Merge threads of a process: a stack is per (process, comm, frames).
    let mut merged: HashMap<(u32, String, u64, Vec<Frame>), u64> = HashMap::new();
    for (k, n) in counts {
        let comm = comm_str(&k.comm);
        let (cgroup, workload) = enricher.resolve(k.cgroup_id, k.pid);
        let header = Header {
            timestamp: started_wall,
            node: node.clone(),
            pid: Some(k.pid),
            tid: Some(k.tid),
            uid: None,
            comm: Some(comm.clone()),
            cgroup_id: k.cgroup_id,
            cgroup,
            workload,
        };
        // uid is checked in the kernel; the header has none to compare.
        let mut f = filter.clone();
        f.uid = None;
        if !f.matches_header(&header) {
            done.filtered_in_user_space += n;
            continue;
        }
        let mut frames: Vec<Frame> = Vec::new();
        // A stack the kernel could not record (its map bucket was taken by
        // another stack, or the map was full) is named as such.
        let lost = |id: i32, want: bool| want && id < 0 && id != -libc::EFAULT;
        if lost(k.ustack, opts.user) {
            frames.push(placeholder("[user stack lost]", false));
        }
        for addr in stacks_u[&k.ustack].iter().rev() {
            let ua = UserAddr {
                pid: k.pid,
                gen: k.gen,
                addr: *addr,
            };
            frames.push(user[&ua].clone());
        }
        if lost(k.kstack, opts.kernel) {
            frames.push(placeholder("[kernel stack lost]", true));
        }
        for addr in stacks_k[&k.kstack].iter().rev() {
            frames.push(kernel[addr].clone());
        }
        if frames.is_empty() {
            // Sampled where the requested stack does not exist (user mode
            // with --kernel-only, a kernel thread with --user-only).
            let name = match (opts.kernel, opts.user) {
                (true, false) => "[user space]",
                (false, true) => "[kernel]",
                _ => "[no stack]",
            };
            frames.push(placeholder(name, !opts.user));
        }
        *merged
            .entry((k.pid, comm, k.cgroup_id, frames))
            .or_default() += n;
    }
    let mut stacks: Vec<Stack> = merged
        .into_iter()
        .map(|((pid, comm, cgroup_id, frames), count)| {
            let (_, workload) = enricher.resolve(cgroup_id, pid);
            Stack {
                comm,
                pid,
                cgroup_id,
                workload,
                frames,
                count,
            }
        })
        .collect();
    stacks.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.pid.cmp(&b.pid)));
    for s in &stacks {
        done.frames_total += s.frames.len() as u64 * s.count;
        done.frames_unsymbolized +=
            s.frames.iter().filter(|f| !f.symbolized).count() as u64 * s.count;
    }
    Ok(Profile {
        node: node.to_string(),
        frequency_hz: opts.frequency,
        started: started_wall,
        duration_ns: elapsed.as_nanos() as u64,
        symbolize_ns: symbolize_started.elapsed().as_nanos() as u64,
        cpus,
        completeness: done,
        stacks,
        prog_ids,
    })
}
