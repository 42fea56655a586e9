//! Loading, attaching and owning a gadget's BPF skeleton.
//!
//! libbpf-rs skeletons borrow their storage (`MaybeUninit<OpenObject>`).
//! [`Loaded`] owns both the storage and the skeleton so a gadget can be held
//! in a struct and dropped as one: links first, then programs and maps, then
//! the storage. Dropping it is the teardown: nothing stays in the kernel.

use crate::error::{Error, Result};
use crate::raw::RawFilter;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, PrintLevel};
use std::collections::VecDeque;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::{Mutex, Once};

/// What every gadget's start function receives.
#[derive(Debug, Clone)]
pub struct StartCtx<'a> {
    pub filter: RawFilter,
    pub params: &'a crate::gadgets::Params,
    /// Size of the ring buffer in bytes (a power of two, ≥ one page).
    pub ring_bytes: u32,
    /// Wake the reader once this many bytes wait (0: on every record).
    pub wakeup_bytes: u32,
    /// The network gadgets' in-kernel filter (ignored by the others).
    pub net: crate::gadgets::net::kernel::KernelNet,
    /// The sink only counts events by these keys (`--summary`): a gadget
    /// that can produce them from counts kept in the kernel does so
    /// instead of writing a record per event
    /// ([`crate::gadgets::Attached::counted`]).
    pub count_keys: Option<Vec<String>>,
}

impl StartCtx<'_> {
    pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
    pub const DEFAULT_WAKEUP_BYTES: u32 = 256 << 10;
}

/// A loaded skeleton together with the storage it borrows and its links.
pub struct Loaded<S> {
    links: Vec<Link>,
    skel: ManuallyDrop<S>,
    storage: NonNull<MaybeUninit<OpenObject>>,
    /// Programs that are optional and could not be attached here.
    pub skipped: Vec<String>,
}

impl<S> Loaded<S> {
    pub fn skel(&self) -> &S {
        &self.skel
    }

    pub fn skel_mut(&mut self) -> &mut S {
        &mut self.skel
    }

    /// Keep a link made outside [`Loaded::attach`] (a perf event, per CPU):
    /// it is detached with the others, before the skeleton is freed.
    pub fn keep_link(&mut self, link: Link) {
        self.links.push(link);
    }
}

impl<S> Drop for Loaded<S> {
    fn drop(&mut self) {
        self.links.clear();
        // SAFETY: the skeleton is dropped exactly once, here, before the
        // storage it borrows; the storage came from Box::into_raw in `load`.
        unsafe {
            ManuallyDrop::drop(&mut self.skel);
            drop(Box::from_raw(self.storage.as_ptr()));
        }
    }
}

/// Frees the skeleton storage on the error paths of `load`.
struct StorageGuard(Option<NonNull<MaybeUninit<OpenObject>>>);

impl Drop for StorageGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // SAFETY: allocated by Box::into_raw in `load`, not yet handed on;
            // anything that borrowed it has already been dropped.
            unsafe { drop(Box::from_raw(p.as_ptr())) };
        }
    }
}

static LOG: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const LOG_LINES: usize = 400;

fn libbpf_print(level: PrintLevel, msg: String) {
    if level == PrintLevel::Debug {
        return;
    }
    if std::env::var_os("PLUMB_LIBBPF_DEBUG").is_some() {
        eprint!("libbpf: {msg}");
    }
    if let Ok(mut log) = LOG.lock() {
        for line in msg.lines() {
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line.to_string());
        }
    }
}

/// Route libbpf's messages (including the verifier log) into our buffer
/// instead of stderr.
pub fn capture_libbpf_log() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        libbpf_rs::set_print(Some((PrintLevel::Info, libbpf_print)));
    });
}

/// Run `f` with libbpf's messages off. libbpf-rs turns each message into
/// a Rust string and aborts the process on one that is not UTF-8, which a
/// malformed object of a user's makes libbpf print (its section names).
/// Messages are captured again afterwards.
pub fn without_libbpf_log<T>(f: impl FnOnce() -> T) -> T {
    let prev = libbpf_rs::set_print(None);
    let r = f();
    libbpf_rs::set_print(prev);
    r
}

/// libbpf's messages since the last call (after [`capture_libbpf_log`]).
pub fn take_libbpf_log() -> Vec<String> {
    take_log()
}

fn take_log() -> Vec<String> {
    LOG.lock()
        .map(|mut l| l.drain(..).collect())
        .unwrap_or_default()
}

/// Open a skeleton, let the gadget configure it, load it into the kernel.
pub fn load<B, O, S>(
    gadget: &'static str,
    builder: B,
    configure: impl FnOnce(&mut O) -> Result<()>,
) -> Result<Loaded<S>>
where
    B: SkelBuilder<'static, Output = O>,
    O: OpenSkel<'static, Output = S>,
    S: Skel<'static>,
{
    capture_libbpf_log();
    let raw = NonNull::from(Box::leak(Box::new(MaybeUninit::<OpenObject>::uninit())));
    let mut guard = StorageGuard(Some(raw));
    // SAFETY: the storage lives until `Loaded` (or the guard) frees it, and
    // everything borrowing it is dropped before that.
    let storage: &'static mut MaybeUninit<OpenObject> = unsafe { &mut *raw.as_ptr() };
    let mut open = builder
        .open(storage)
        .map_err(|source| Error::Open { gadget, source })?;
    configure(&mut open)?;
    take_log();
    let skel = open.load().map_err(|source| Error::Load {
        gadget,
        source,
        log: take_log(),
    })?;
    guard.0 = None;
    Ok(Loaded {
        links: Vec::new(),
        skel: ManuallyDrop::new(skel),
        storage: raw,
        skipped: Vec::new(),
    })
}

impl<S: Skel<'static>> Loaded<S> {
    /// Attach every program. Programs named in `optional` may fail (their
    /// hook does not exist on this kernel); they are listed in `skipped`.
    pub fn attach(&mut self, gadget: &'static str, optional: &[&str]) -> Result<()> {
        let mut links = Vec::new();
        for prog in self.skel.object_mut().progs_mut() {
            if !prog.autoload() {
                // Left out for this kernel (another variant was loaded).
                continue;
            }
            let name = prog.name().to_string_lossy().into_owned();
            match prog.attach() {
                Ok(link) => links.push(link),
                Err(_) if optional.contains(&name.as_str()) => self.skipped.push(name),
                Err(source) => {
                    return Err(Error::Attach {
                        gadget,
                        hook: prog.section().to_string_lossy().into_owned(),
                        source,
                    })
                }
            }
        }
        self.links = links;
        Ok(())
    }

    /// Kernel ids of this gadget's programs (to check teardown).
    pub fn prog_ids(&self) -> Vec<u32> {
        self.skel
            .object()
            .progs()
            // A program left out for this kernel (autoload off) has no fd.
            .filter(|p| p.autoload())
            .filter_map(|p| libbpf_rs::Program::id_from_fd(p.as_fd()).ok())
            .collect()
    }
}

/// Sum of a one-slot per-CPU counter map (`plumb_lost`).
pub fn percpu_sum(map: &dyn MapCore) -> u64 {
    percpu_slot_sum(map, 0)
}

/// Sum over CPUs of slot `slot` of a per-CPU array of `u64` counters.
pub fn percpu_slot_sum(map: &dyn MapCore, slot: u32) -> u64 {
    match map.lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY) {
        Ok(Some(vals)) => vals
            .iter()
            .filter_map(|v| {
                v.get(..8)
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default()))
            })
            .sum(),
        _ => 0,
    }
}

/// Entries an LRU map evicted, from its per-CPU churn counters (slot 0: new
/// keys inserted, slot 1: keys deleted) and the entries it holds now.
///
/// Counting the entries walks the map, so it is only done once the map can
/// have been full: an LRU map starts evicting a little before it is full
/// (each CPU keeps a local list of up to 128 free nodes).
pub fn lru_evicted(map: &dyn MapCore, churn: &dyn MapCore) -> u64 {
    let inserted = percpu_slot_sum(churn, 0);
    let deleted = percpu_slot_sum(churn, 1);
    let live = inserted.saturating_sub(deleted);
    let cpus = libbpf_rs::num_possible_cpus().unwrap_or(1) as u64;
    let could_be_full = u64::from(map.max_entries()).saturating_sub(cpus * 128 + 64);
    if live < could_be_full {
        return 0;
    }
    live.saturating_sub(map.keys().count() as u64)
}

/// Write the common read-only configuration into a skeleton's `.rodata`.
/// `filter` is the skeleton's generated mirror of `struct plumb_filter`.
pub fn set_filter<T>(dst: &mut T, filter: &RawFilter) {
    set_raw(dst, filter)
}

/// Copy a Rust mirror `src` (a [`bytemuck::Pod`] struct of `raw`) into the
/// skeleton's generated type `T` for the same C struct.
pub fn set_raw<T, R: bytemuck::Pod>(dst: &mut T, src: &R) {
    const { assert!(std::mem::size_of::<T>() == std::mem::size_of::<R>()) };
    // SAFETY: same size (checked at compile time) and both are plain C
    // structs of integers generated from the same definition in a header.
    unsafe {
        std::ptr::copy_nonoverlapping(
            src as *const R as *const u8,
            dst as *mut T as *mut u8,
            std::mem::size_of::<T>(),
        )
    };
}

/// Does a kernel object with this program id still exist?
pub fn prog_exists(id: u32) -> bool {
    libbpf_rs::Program::fd_from_id(id).is_ok()
}

/// Runs of `prog` the kernel skipped because a tracing program was already
/// running on that CPU (its `recursion_misses`): each is an event lost.
/// Call only for loaded programs.
pub fn recursion_misses(prog: &libbpf_rs::Program<'_>) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    // SAFETY: bpf_prog_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: a loaded program's descriptor and a buffer of `len` bytes.
    let rc = unsafe {
        libbpf_sys::bpf_prog_get_info_by_fd(prog.as_fd().as_raw_fd(), &mut info, &mut len)
    };
    if rc == 0 {
        info.recursion_misses
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    mod rejected {
        #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
        include!(concat!(env!("OUT_DIR"), "/rejected.skel.rs"));
    }

    /// A program the verifier refuses: one line saying so, and with `-v`
    /// the verifier's own last lines, which name the faulty access.
    #[test]
    fn a_rejected_program_reports_the_verifiers_last_lines() {
        crate::testing::require_root();
        let err = match super::load("rejected", rejected::RejectedSkelBuilder::default(), |_| {
            Ok(())
        }) {
            Ok(_) => panic!("the verifier accepted a NULL dereference"),
            Err(e) => e,
        };
        assert_eq!(err.exit_code(), 4);
        crate::error::show_verifier_log(false);
        let short = err.to_string();
        assert!(
            short.starts_with("the kernel's verifier rejected gadget rejected: "),
            "{short}"
        );
        assert!(
            short.ends_with("(run with -v for the verifier's log)"),
            "{short}"
        );
        crate::error::show_verifier_log(true);
        let long = err.to_string();
        crate::error::show_verifier_log(false);
        assert!(long.contains("verifier log (last lines):"), "{long}");
        assert!(
            long.contains("invalid mem access 'map_value_or_null'"),
            "{long}"
        );
    }
}
