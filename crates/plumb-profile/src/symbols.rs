//! Turning addresses into function names with blazesym.
//!
//! Kernel addresses go through kallsyms. User addresses are first mapped to
//! a file and an offset in it using the process's mappings, captured when the
//! process was first sampled: the executable mappings are opened through
//! `/proc/PID/map_files` (which reaches binaries inside containers, and
//! deleted ones) and the descriptors kept, so a process that exits before
//! the end of the profile is still symbolized from its own binaries.

use crate::Frame;
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::MaybeDefault;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Open binaries kept at most (each holds a descriptor).
const MAX_FILES: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserAddr {
    pub pid: u32,
    /// The process's exec generation (see profile.bpf.c).
    pub gen: u32,
    pub addr: u64,
}

/// A binary kept open for symbolization.
struct Binary {
    /// `/proc/self/fd/N`: valid as long as `_file` is open.
    path: PathBuf,
    /// The path the process had it mapped at.
    name: Arc<str>,
    _file: File,
}

struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    /// `None` for anonymous memory (JIT code) and special mappings.
    binary: Option<(u64, u64)>,
    name: Arc<str>,
}

pub struct Symbols {
    symbolizer: Symbolizer,
    binaries: HashMap<(u64, u64), Binary>,
    /// Mappings per (process, exec generation).
    procs: HashMap<(u32, u32), Vec<Mapping>>,
    kernel_module: Arc<str>,
}

impl Symbols {
    pub fn new() -> Self {
        raise_nofile_limit();
        Symbols {
            symbolizer: Symbolizer::new(),
            binaries: HashMap::new(),
            procs: HashMap::new(),
            kernel_module: Arc::from("kernel"),
        }
    }

    /// Record the executable mappings of `pid`'s image number `gen`
    /// (again, if it already was: a later capture sees libraries loaded
    /// since).
    pub fn capture(&mut self, pid: u32, gen: u32) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        let mut maps = Vec::new();
        for line in text.lines() {
            let Some(m) = parse_maps_line(line) else {
                continue;
            };
            if !m.exec {
                continue;
            }
            let binary = if m.path.starts_with('/') {
                self.open_binary(pid, m.range, &m.path)
            } else {
                None
            };
            maps.push(Mapping {
                start: m.start,
                end: m.end,
                offset: m.offset,
                binary,
                name: Arc::from(m.path.as_str()),
            });
        }
        if !maps.is_empty() {
            self.procs.insert((pid, gen), maps);
        }
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
                    name: Arc::from(path.trim_end_matches(" (deleted)")),
                    _file: file,
                },
            );
        }
        Some(key)
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
                _ => Frame {
                    name: Arc::from(format!("[kernel]+{addr:#x}")),
                    module: Some(self.kernel_module.clone()),
                    kernel: true,
                    symbolized: false,
                },
            };
            out.insert(addr, frame);
        }
        out
    }

    /// User frames for these (process, address) pairs.
    pub fn user(&mut self, addrs: &[UserAddr]) -> HashMap<UserAddr, Frame> {
        // Processes sampled but never captured (the note was lost): try now.
        let missing: Vec<(u32, u32)> = addrs
            .iter()
            .map(|a| (a.pid, a.gen))
            .filter(|k| !self.procs.contains_key(k))
            .collect();
        for (pid, gen) in missing {
            if !self.procs.contains_key(&(pid, gen)) {
                self.capture(pid, gen);
            }
        }
        let mut out = HashMap::with_capacity(addrs.len());
        // Group by binary, to symbolize each file's offsets in one call.
        let mut by_file: HashMap<(u64, u64), Vec<(UserAddr, u64)>> = HashMap::new();
        for &ua in addrs {
            let mapping = self
                .procs
                .get(&(ua.pid, ua.gen))
                .and_then(|maps| maps.iter().find(|m| ua.addr >= m.start && ua.addr < m.end));
            match mapping {
                Some(m) => {
                    let file_off = ua.addr - m.start + m.offset;
                    match m.binary {
                        Some(key) => by_file.entry(key).or_default().push((ua, file_off)),
                        None => {
                            out.insert(ua, unknown(Some(&m.name), file_off));
                        }
                    }
                }
                None => {
                    out.insert(ua, unknown(None, ua.addr));
                }
            }
        }
        for (key, list) in by_file {
            let bin = &self.binaries[&key];
            let offsets: Vec<u64> = list.iter().map(|(_, o)| *o).collect();
            let mut elf = Elf::new(&bin.path);
            elf.debug_syms = true;
            let src = Source::Elf(elf);
            let results = self
                .symbolizer
                .symbolize(&src, Input::FileOffset(offsets.as_slice()))
                .unwrap_or_default();
            for (i, (ua, off)) in list.into_iter().enumerate() {
                let frame = match results.get(i) {
                    Some(Symbolized::Sym(s)) => Frame {
                        name: Arc::from(&*s.name),
                        module: Some(bin.name.clone()),
                        kernel: false,
                        symbolized: true,
                    },
                    _ => unknown(Some(&bin.name), off),
                };
                out.insert(ua, frame);
            }
        }
        out
    }
}

/// A frame that has only a module and an offset (or only an address).
fn unknown(module: Option<&Arc<str>>, off: u64) -> Frame {
    match module {
        Some(m) => {
            let base = m.rsplit('/').next().unwrap_or(m);
            Frame {
                name: Arc::from(format!("{base}+{off:#x}")),
                module: Some(m.clone()),
                kernel: false,
                symbolized: false,
            }
        }
        None => Frame {
            name: Arc::from(format!("[unknown]+{off:#x}")),
            module: None,
            kernel: false,
            symbolized: false,
        },
    }
}

struct MapsLine<'a> {
    start: u64,
    end: u64,
    offset: u64,
    exec: bool,
    range: &'a str,
    path: String,
}

/// One line of /proc/PID/maps: `start-end perms offset dev inode path`.
fn parse_maps_line(line: &str) -> Option<MapsLine<'_>> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?;
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let _inode = it.next()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (a, b) = range.split_once('-')?;
    Some(MapsLine {
        start: u64::from_str_radix(a, 16).ok()?,
        end: u64::from_str_radix(b, 16).ok()?,
        offset,
        exec: perms.as_bytes().get(2) == Some(&b'x'),
        range,
        path,
    })
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
    fn maps_lines_parse() {
        let l = "55d0c0a00000-55d0c0a21000 r-xp 00002000 fd:01 1234   /usr/bin/true";
        let m = parse_maps_line(l).unwrap();
        assert_eq!(
            (m.start, m.end, m.offset),
            (0x55d0c0a00000, 0x55d0c0a21000, 0x2000)
        );
        assert!(m.exec);
        assert_eq!(m.path, "/usr/bin/true");
        assert_eq!(m.range, "55d0c0a00000-55d0c0a21000");
        let anon = parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(!anon.exec);
        assert_eq!(anon.path, "");
    }

    #[test]
    fn unknown_frames_name_the_module_and_offset() {
        let m: Arc<str> = Arc::from("/usr/lib/libfoo.so.1");
        let f = unknown(Some(&m), 0x1a2b);
        assert_eq!(&*f.name, "libfoo.so.1+0x1a2b");
        assert!(!f.symbolized);
    }
}
