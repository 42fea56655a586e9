//! Turning addresses into function names with blazesym.
//!
//! Kernel addresses go through kallsyms. User addresses are first mapped to
//! a file and an offset in it using the process's mappings, captured when the
//! process was first sampled (and again when it mapped new code): the
//! executable mappings are opened through `/proc/PID/map_files` (which
//! reaches binaries inside containers, and deleted ones) and the descriptors
//! kept, so a process that exits before the end of the profile is still
//! symbolized from its own binaries.
//!
//! Frames that cannot be named say where they are: `file+0xOFFSET` (an
//! offset in that file), `[vdso]+0xOFFSET` (in that special mapping), or
//! `[anon]@0xADDRESS`, `[unknown]@0xADDRESS`, `[kernel]@0xADDRESS` (an
//! absolute address: anonymous memory such as JIT code, no known mapping,
//! an unnamed kernel address as in /proc/kallsyms). Folded stacks and flame
//! graphs drop those addresses and offsets ([`without_address`]); JSON and
//! pprof keep them.

use crate::procfs;
use crate::Frame;
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::MaybeDefault;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Open binaries kept at most (each holds a descriptor).
const MAX_FILES: usize = 2048;

/// One image of one process (see `struct image_id` in profile.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Image {
    /// Start time of the process, ns since boot.
    pub start_ns: u64,
    /// Exec count (low bits of the kernel's self_exec_id).
    pub exec_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcKey {
    pub pid: u32,
    pub image: Image,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserAddr {
    pub proc: ProcKey,
    pub addr: u64,
}

/// A binary kept open for symbolization.
struct Binary {
    /// `/proc/self/fd/N`: valid as long as `_file` is open.
    path: PathBuf,
    _file: File,
}

enum Backing {
    /// A file; `None` when it could not be opened.
    File(Option<(u64, u64)>),
    /// `[vdso]` and the like.
    Special,
    /// Anonymous memory (JIT code).
    Anon,
}

struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    backing: Backing,
    /// The path the process had it mapped at, or `[vdso]`, `[anon]`.
    name: Arc<str>,
}

impl Mapping {
    fn overlaps(&self, other: &Mapping) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// An address to look up in a file: where it came from, its offset in the
/// file, and the file's name as the process mapped it.
type InFile = (UserAddr, u64, Arc<str>);

pub struct Symbols {
    symbolizer: Symbolizer,
    binaries: HashMap<(u64, u64), Binary>,
    /// Executable mappings per process image, sorted, not overlapping.
    procs: HashMap<ProcKey, Vec<Mapping>>,
    kernel_module: Arc<str>,
    anon: Arc<str>,
}

impl Symbols {
    pub fn new() -> Self {
        raise_nofile_limit();
        Symbols {
            symbolizer: Symbolizer::new(),
            binaries: HashMap::new(),
            procs: HashMap::new(),
            kernel_module: Arc::from("kernel"),
            anon: Arc::from("[anon]"),
        }
    }

    pub fn is_captured(&self, key: ProcKey) -> bool {
        self.procs.contains_key(&key)
    }

    /// Process images captured so far.
    pub fn captured(&self) -> usize {
        self.procs.len()
    }

    /// Record the executable mappings of this process image, if the pid
    /// still belongs to it and `still_current` (asked after /proc was read)
    /// agrees that it has not exec'd since. A later capture adds libraries
    /// loaded since and keeps those unmapped since.
    pub fn capture(&mut self, key: ProcKey, still_current: &dyn Fn() -> bool) -> bool {
        if !procfs::same_process(key.pid, key.image.start_ns) {
            return false;
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/maps", key.pid)) else {
            return false;
        };
        let mut maps = Vec::new();
        for line in text.lines() {
            let Some(m) = procfs::parse_maps_line(line) else {
                continue;
            };
            if !m.exec {
                continue;
            }
            let (backing, name) = if m.path.starts_with('/') {
                let path = m.path.trim_end_matches(" (deleted)");
                (
                    Backing::File(self.open_binary(key.pid, m.range, &m.path)),
                    Arc::from(path),
                )
            } else if m.path.is_empty() {
                (Backing::Anon, self.anon.clone())
            } else {
                (Backing::Special, Arc::from(m.path.as_str()))
            };
            maps.push(Mapping {
                start: m.start,
                end: m.end,
                offset: m.offset,
                backing,
                name,
            });
        }
        // The pid was checked before reading: check again after, so that a
        // process that ended and gave its pid away meanwhile is not taken.
        if maps.is_empty() || !procfs::same_process(key.pid, key.image.start_ns) || !still_current()
        {
            return false;
        }
        if let Some(old) = self.procs.remove(&key) {
            let kept: Vec<Mapping> = old
                .into_iter()
                .filter(|o| !maps.iter().any(|n| n.overlaps(o)))
                .collect();
            maps.extend(kept);
        }
        maps.sort_by_key(|m| m.start);
        self.procs.insert(key, maps);
        true
    }

    fn open_binary(&mut self, pid: u32, range: &str, path: &str) -> Option<(u64, u64)> {
        let file = File::open(format!("/proc/{pid}/map_files/{range}"))
            .or_else(|_| File::open(format!("/proc/{pid}/root{path}")))
            .ok()?;
        let meta = file.metadata().ok()?;
        let key = (meta.dev(), meta.ino());
        if !self.binaries.contains_key(&key) {
            if self.binaries.len() >= MAX_FILES {
                return None;
            }
            self.binaries.insert(
                key,
                Binary {
                    path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
                    _file: file,
                },
            );
        }
        Some(key)
    }

    fn mapping(&self, ua: &UserAddr) -> Option<&Mapping> {
        let maps = self.procs.get(&ua.proc)?;
        let i = maps
            .partition_point(|m| m.start <= ua.addr)
            .checked_sub(1)?;
        maps.get(i).filter(|m| ua.addr < m.end)
    }

    /// Kernel frames for these addresses.
    pub fn kernel(&mut self, addrs: &[u64]) -> HashMap<u64, Frame> {
        let src = Source::Kernel(Kernel {
            vmlinux: MaybeDefault::None,
            ..Default::default()
        });
        let results = self
            .symbolizer
            .symbolize(&src, Input::AbsAddr(addrs))
            .unwrap_or_default();
        let mut out = HashMap::with_capacity(addrs.len());
        for (i, &addr) in addrs.iter().enumerate() {
            let frame = match results.get(i) {
                Some(Symbolized::Sym(s)) => Frame {
                    name: Arc::from(&*s.name),
                    module: Some(
                        s.module
                            .as_deref()
                            .map(|m| Arc::from(m.to_string_lossy().as_ref()))
                            .unwrap_or_else(|| self.kernel_module.clone()),
                    ),
                    kernel: true,
                    symbolized: true,
                },
                _ => unnamed_kernel(addr, &self.kernel_module),
            };
            out.insert(addr, frame);
        }
        out
    }

    /// User frames for these (process image, address) pairs. An address
    /// outside every captured mapping (a library loaded after the last
    /// capture, or a process never captured) gets its process captured
    /// again first, when `may_recapture` says /proc still shows that image.
    pub fn user(
        &mut self,
        addrs: &[UserAddr],
        may_recapture: &dyn Fn(ProcKey) -> bool,
    ) -> HashMap<UserAddr, Frame> {
        let missed: HashSet<ProcKey> = addrs
            .iter()
            .filter(|ua| self.mapping(ua).is_none())
            .map(|ua| ua.proc)
            .collect();
        for key in missed {
            if may_recapture(key) {
                self.capture(key, &|| true);
            }
        }
        let mut out = HashMap::with_capacity(addrs.len());
        // Group by binary, to symbolize each file's offsets in one call.
        let mut by_file: HashMap<(u64, u64), Vec<InFile>> = HashMap::new();
        for &ua in addrs {
            let Some(m) = self.mapping(&ua) else {
                out.insert(ua, unknown_address("[unknown]", None, ua.addr));
                continue;
            };
            let off = ua.addr - m.start + m.offset;
            match m.backing {
                Backing::File(Some(key)) => {
                    by_file
                        .entry(key)
                        .or_default()
                        .push((ua, off, m.name.clone()))
                }
                Backing::File(None) => {
                    out.insert(ua, in_file(&m.name, off));
                }
                Backing::Special => {
                    out.insert(ua, in_file(&m.name, ua.addr - m.start));
                }
                Backing::Anon => {
                    out.insert(ua, unknown_address("[anon]", Some(&m.name), ua.addr));
                }
            }
        }
        for (key, list) in by_file {
            let Some(bin) = self.binaries.get(&key) else {
                for (ua, off, name) in list {
                    out.insert(ua, in_file(&name, off));
                }
                continue;
            };
            let offsets: Vec<u64> = list.iter().map(|(_, o, _)| *o).collect();
            let mut elf = Elf::new(&bin.path);
            elf.debug_syms = true;
            let src = Source::Elf(elf);
            let results = self
                .symbolizer
                .symbolize(&src, Input::FileOffset(offsets.as_slice()))
                .unwrap_or_default();
            for (i, (ua, off, name)) in list.into_iter().enumerate() {
                let frame = match results.get(i) {
                    Some(Symbolized::Sym(s)) => Frame {
                        name: Arc::from(&*s.name),
                        module: Some(name),
                        kernel: false,
                        symbolized: true,
                    },
                    _ => in_file(&name, off),
                };
                out.insert(ua, frame);
            }
        }
        out
    }
}

/// An unnamed frame at an offset in a file (or special mapping):
/// `libfoo.so.1+0x1a2b`.
fn in_file(module: &Arc<str>, off: u64) -> Frame {
    let base = module.rsplit('/').next().unwrap_or(module);
    Frame {
        name: Arc::from(format!("{base}+{off:#x}")),
        module: Some(module.clone()),
        kernel: false,
        symbolized: false,
    }
}

/// A kernel address kallsyms does not name: `[kernel]@0xffffffff81234567`.
pub fn unnamed_kernel(addr: u64, module: &Arc<str>) -> Frame {
    Frame {
        name: Arc::from(format!("[kernel]@{addr:#x}")),
        module: Some(module.clone()),
        kernel: true,
        symbolized: false,
    }
}

/// An unnamed frame known only by its address: `[anon]@0x7f3a2c001234`.
pub fn unknown_address(what: &str, module: Option<&Arc<str>>, addr: u64) -> Frame {
    Frame {
        name: Arc::from(format!("{what}@{addr:#x}")),
        module: module.cloned(),
        kernel: false,
        symbolized: false,
    }
}

/// An unnamed frame's name without its address or offset:
/// `libfoo.so.1+0x1a2b` becomes `libfoo.so.1+?`, `[anon]@0x7f3a2c001234`
/// becomes `[anon]`; any other name is returned as it is. Folded stacks
/// and flame graphs show this, so that samples of one stack that differ
/// only in where an unnamed frame was stay one tower.
pub fn without_address(name: &str) -> Cow<'_, str> {
    let hex = |s: &str| {
        s.strip_prefix("0x")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if let Some((what, addr)) = name.rsplit_once('@') {
        if what.starts_with('[') && what.ends_with(']') && hex(addr) {
            return Cow::Borrowed(what);
        }
    }
    match name.rsplit_once('+') {
        Some((file, off)) if !file.is_empty() && hex(off) => Cow::Owned(format!("{file}+?")),
        _ => Cow::Borrowed(name),
    }
}

/// Let the profiler keep many binaries open.
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_frames_say_where_they_are() {
        let m: Arc<str> = Arc::from("/usr/lib/libfoo.so.1");
        let f = in_file(&m, 0x1a2b);
        assert_eq!(&*f.name, "libfoo.so.1+0x1a2b");
        assert_eq!(f.module.as_deref(), Some("/usr/lib/libfoo.so.1"));
        assert!(!f.symbolized);
        let anon: Arc<str> = Arc::from("[anon]");
        let f = unknown_address("[anon]", Some(&anon), 0x7f3a2c001234);
        assert_eq!(&*f.name, "[anon]@0x7f3a2c001234");
        assert_eq!(f.module.as_deref(), Some("[anon]"));
        let vdso: Arc<str> = Arc::from("[vdso]");
        assert_eq!(&*in_file(&vdso, 0x9a0).name, "[vdso]+0x9a0");
    }

    /// Our own process, captured: a function of this test binary is named,
    /// an address in no mapping says so, and a wrong start time (another
    /// process with our pid) captures nothing.
    #[test]
    fn unnamed_frames_lose_their_address_and_nothing_else_changes() {
        assert_eq!(without_address("libfoo.so.1+0x1a2b"), "libfoo.so.1+?");
        assert_eq!(without_address("[vdso]+0x9a0"), "[vdso]+?");
        assert_eq!(without_address("[anon]@0x7f3a2c001234"), "[anon]");
        assert_eq!(without_address("[unknown]@0x6b0e8d92"), "[unknown]");
        assert_eq!(without_address("[kernel]@0xffffffff81234567"), "[kernel]");
        for kept in [
            "main",
            "operator+",
            "a+b",
            "x+0x",
            "+0x12",
            "[unknown]@12",
            "user@0x12",
            "[truncated]",
            "ping+0x12g",
        ] {
            assert_eq!(without_address(kept), kept);
        }
    }

    #[test]
    fn captures_a_live_process_and_refuses_a_reused_pid() {
        let pid = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ticks = procfs::parse_start_ticks(&stat).unwrap();
        // SAFETY: sysconf has no preconditions.
        let tick_ns = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let image = Image {
            start_ns: ticks * tick_ns,
            exec_id: 0,
        };
        let key = ProcKey { pid, image };
        let mut s = Symbols::new();
        let other = ProcKey {
            pid,
            image: Image {
                start_ns: (ticks + 7) * tick_ns,
                exec_id: 0,
            },
        };
        assert!(!s.capture(other, &|| true), "a different start time");
        assert!(!s.capture(key, &|| false), "exec'd meanwhile");
        assert!(s.capture(key, &|| true));
        assert_eq!(s.captured(), 1);
        let here = captures_a_live_process_and_refuses_a_reused_pid as *const () as u64;
        let addrs = [
            UserAddr {
                proc: key,
                addr: here,
            },
            UserAddr { proc: key, addr: 8 },
        ];
        let frames = s.user(&addrs, &|_| false);
        let f = &frames[&addrs[0]];
        assert!(f.symbolized, "{f:?}");
        assert!(
            f.name
                .contains("captures_a_live_process_and_refuses_a_reused_pid"),
            "{f:?}"
        );
        assert_eq!(&*frames[&addrs[1]].name, "[unknown]@0x8");
    }

    /// A library loaded after the capture: the miss makes `user` capture
    /// again (when allowed) and the library's function is named.
    #[test]
    fn a_library_loaded_after_the_capture_is_found_on_a_miss() {
        let pid = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ticks = procfs::parse_start_ticks(&stat).unwrap();
        // SAFETY: sysconf has no preconditions.
        let tick_ns = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let key = ProcKey {
            pid,
            image: Image {
                start_ns: ticks * tick_ns,
                exec_id: 0,
            },
        };
        let mut s = Symbols::new();
        assert!(s.capture(key, &|| true));
        // libz is not linked into this test: load it now (and keep it).
        // SAFETY: dlopen/dlsym with NUL-terminated names; the handle is
        // never closed, so the address stays valid.
        let addr = unsafe {
            let h = libc::dlopen(c"libz.so.1".as_ptr(), libc::RTLD_NOW);
            assert!(!h.is_null(), "libz.so.1 (zlib1g) is needed");
            libc::dlsym(h, c"zlibVersion".as_ptr()) as u64
        };
        assert_ne!(addr, 0);
        let ua = [UserAddr { proc: key, addr }];
        let f = &s.user(&ua, &|_| false)[&ua[0]];
        assert_eq!(
            &*f.name,
            &format!("[unknown]@{addr:#x}"),
            "no capture allowed"
        );
        let f = &s.user(&ua, &|k| k == key)[&ua[0]];
        assert_eq!(&*f.name, "zlibVersion", "{f:?}");
        assert!(
            f.module.as_deref().is_some_and(|m| m.contains("libz.so")),
            "{f:?}"
        );
    }
}
