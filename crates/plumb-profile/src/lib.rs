//! `plumb profile`: CPU profiles with kernel and user stacks.
//!
//! A perf_event program on each CPU's software clock ([`perf`]) counts
//! samples in the kernel, keyed by thread, process image and stack ids
//! ([`sampler`]). Processes are announced as they are first sampled, and
//! [`notes`] captures their mappings then, if the filter wants them. At the
//! end the stacks are read once, filtered and symbolized with blazesym
//! ([`assemble`], [`symbols`]): kernel frames through kallsyms, user frames
//! through the binaries each process had mapped, so that processes which
//! exit before the end are still named. [`output`] renders a [`Profile`] as
//! folded stacks, an SVG flame graph, pprof, JSON or a `top` table; [`diff`]
//! compares two.

mod assemble;
pub mod diff;
mod notes;
pub mod output;
mod perf;
pub mod pprof;
mod procfs;
mod sampler;
mod symbols;

use plumb_core::enrich::MetadataSource;
use plumb_core::event::Workload;
use plumb_core::filter::FilterArgs;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use sampler::Progress;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] plumb_core::Error),
    #[error("cannot open the CPU clock perf event on CPU {cpu}: {source}")]
    PerfEvent {
        cpu: u32,
        #[source]
        source: std::io::Error,
    },
    /// perf_event_open refused for lack of rights (EACCES, EPERM).
    #[error("not allowed to sample CPU {cpu} ({source}): {hint}")]
    PerfEventDenied {
        cpu: u32,
        hint: String,
        #[source]
        source: std::io::Error,
    },
    /// Every CPU answered ENODEV: this kernel has no software CPU clock.
    #[error("no CPU clock perf event on any of the {cpus} online CPUs ({source}): this kernel cannot be sampled")]
    NoCpuClock {
        cpus: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("bad value for --frequency: {0}")]
    Frequency(String),
    #[error("{}: {reason}", .path.display())]
    BadProfile { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Exit code for the binary, on the same scale as plumb-core's.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Core(e) => e.exit_code() as u8,
            Error::Frequency(_) | Error::BadProfile { .. } => 2,
            Error::PerfEventDenied { .. } | Error::NoCpuClock { .. } => 3,
            Error::PerfEvent { .. } => 4,
            Error::Io { .. } => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to sample.
#[derive(Clone)]
pub struct ProfileOptions {
    /// Samples per second on each CPU.
    pub frequency: u32,
    pub duration: Duration,
    pub filter: FilterArgs,
    /// Take kernel stacks.
    pub kernel: bool,
    /// Take user stacks.
    pub user: bool,
    /// Container runtime metadata (names) for attribution.
    pub sources: Vec<Arc<dyn MetadataSource>>,
    /// Keep the samples of this process's own threads (the profiler, the
    /// rest of plumb, the agent). Left out by default, in the kernel, and
    /// counted in `filtered_in_kernel`.
    pub include_self: bool,
}

impl ProfileOptions {
    /// The tgid the kernel side leaves out, 0 for none. plumb runs in the
    /// host's pid namespace (the agent's DaemonSet has hostPID), where
    /// the kernel's tgids are the ones `getpid` returns; `--pid` filters
    /// rely on that too.
    pub fn excluded_tgid(&self) -> u32 {
        if self.include_self {
            0
        } else {
            std::process::id()
        }
    }
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            frequency: 99,
            duration: Duration::from_secs(10),
            filter: FilterArgs::default(),
            kernel: true,
            user: true,
            sources: Vec::new(),
            include_self: false,
        }
    }
}

/// One symbolized frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    /// Function name, or `module+0xoffset` when it could not be named.
    pub name: Arc<str>,
    /// Binary (user frames) or `kernel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<Arc<str>>,
    pub kernel: bool,
    /// False when `name` is only a module and an offset.
    pub symbolized: bool,
}

impl Frame {
    /// The name folded stacks and flame graphs show: an unnamed frame's
    /// without its address or offset (`libfoo.so.1+?`, `[unknown]`), so
    /// that one stack stays one line and one tower.
    pub fn folded_name(&self) -> std::borrow::Cow<'_, str> {
        if self.symbolized {
            std::borrow::Cow::Borrowed(&self.name)
        } else {
            symbols::without_address(&self.name)
        }
    }
}

/// One distinct stack of one thread, and how often it was sampled.
#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    /// The thread's command name (threads can name themselves).
    pub comm: String,
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    #[serde(flatten)]
    pub workload: Arc<Workload>,
    /// Root first: user frames from `main` (or the thread start) down, then
    /// kernel frames from the system call or interrupt entry down.
    pub frames: Vec<Frame>,
    pub count: u64,
}

/// Counts that say how complete the profile is.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Completeness {
    /// Samples in the profile's stacks (the sum of their counts).
    pub samples: u64,
    /// Samples lost: the kernel's count map was full, or a count could not
    /// be read back.
    pub lost: u64,
    /// Samples the kernel did not run the program for (another BPF program
    /// was running on that CPU): lost too, counted by the kernel.
    pub missed: u64,
    /// Samples of idle CPUs (not in any stack).
    pub idle: u64,
    /// Samples of tasks the kernel-side filter left out, plumb's own
    /// threads among them unless [`ProfileOptions::include_self`].
    pub filtered_in_kernel: u64,
    /// Samples dropped by the user-space part of the filter (pod, comm...).
    pub filtered_in_user_space: u64,
    /// Samples (in the profile) whose kernel / user stack the kernel could
    /// not record (stack map full or hash collision): they count, with a
    /// `[kernel stack lost]` / `[user stack lost]` frame.
    pub kernel_stacks_lost: u64,
    pub user_stacks_lost: u64,
    /// Samples (in the profile) whose kernel or user stack reached the
    /// depth limit (127 frames): their outermost frames are missing, and
    /// a `[truncated]` frame stands in their place.
    pub stacks_truncated: u64,
    /// Notes of new processes the ring buffer could not take.
    pub process_notes_lost: u64,
    /// Process images whose mappings were captured.
    pub processes_captured: u64,
    /// Process images with user frames in the profile whose mappings could
    /// not be captured (gone before the note was read, pid reused, exec'd
    /// since): their user frames show as addresses.
    pub processes_not_captured: u64,
    /// Sampled frames shown as module+offset or an address: each frame of
    /// each stack, times the stack's samples.
    pub frames_unsymbolized: u64,
    /// Sampled frames in all stacks, counted the same way.
    pub frames_total: u64,
    /// Distinct addresses (per process image for user frames) that could
    /// not be named.
    pub addresses_unsymbolized: u64,
}

impl Completeness {
    /// Every clock sample the perf events delivered: in the profile, left
    /// out by a filter, idle, or lost.
    pub fn taken(&self) -> u64 {
        self.samples
            + self.filtered_in_user_space
            + self.filtered_in_kernel
            + self.idle
            + self.lost
            + self.missed
    }
}

/// A finished CPU profile.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub node: String,
    pub frequency_hz: u32,
    #[serde(serialize_with = "rfc3339")]
    pub started: SystemTime,
    pub duration_ns: u64,
    /// Time spent reading, symbolizing and attributing the stacks after
    /// sampling stopped.
    pub symbolize_ns: u64,
    /// The CPU time of that work (on a busy machine, far less than the
    /// wall time above).
    pub symbolize_cpu_ns: u64,
    pub cpus: u32,
    /// Frames the kernel records per stack (see `stacks_truncated`).
    pub max_stack_depth: u32,
    #[serde(flatten)]
    pub completeness: Completeness,
    pub stacks: Vec<Stack>,
    /// Kernel ids of the BPF programs the profile used (all unloaded by
    /// the time the profile is returned).
    #[serde(skip)]
    pub prog_ids: Vec<u32>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

impl Profile {
    /// Folded stacks: `comm;frame;frame count`, one line per distinct stack.
    pub fn folded(&self) -> String {
        output::folded(self)
    }

    /// Samples the profile holds.
    pub fn samples(&self) -> u64 {
        self.stacks.iter().map(|s| s.count).sum()
    }

    /// What a busy machine gives: the frequency × CPUs × seconds sampled.
    /// Idle CPUs take fewer samples (the clock's tick stops while idle).
    pub fn expected_samples(&self) -> u64 {
        (f64::from(self.frequency_hz) * f64::from(self.cpus) * self.duration_ns as f64 / 1e9)
            .round() as u64
    }
}

/// Sample CPU stacks on every CPU for `opts.duration` or until `stop`.
pub fn profile(opts: &ProfileOptions, stop: &AtomicBool) -> Result<Profile> {
    profile_with_progress(opts, stop, &mut |_| {})
}

/// [`profile`], calling `progress` about once a second.
pub fn profile_with_progress(
    opts: &ProfileOptions,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Profile> {
    sampler::run(opts, stop, progress)
}
