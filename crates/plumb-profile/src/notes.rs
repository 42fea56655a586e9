//! Process notes from the kernel, and when to capture mappings for them.
//!
//! The kernel announces a process image on its first sample and again after
//! it mapped new executable code (dlopen, JIT). The first note is captured
//! at once, while the process exists. A repeated note is captured a little
//! later (the mmap that caused it may still be in progress) and at most once
//! a second per process, so a JIT that maps code all the time does not make
//! the profiler re-read its mappings all the time.

use crate::symbols::{Image, ProcKey, Symbols};
use bytemuck::{Pod, Zeroable};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Wait after a repeated note before capturing.
const SETTLE: Duration = Duration::from_millis(100);
/// Captures of one process image at most this often.
const EVERY: Duration = Duration::from_secs(1);

/// `struct proc_note` of profile.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RawNote {
    pub start_ns: u64,
    pub exec_id: u32,
    pub pad: u32,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
}

/// A decoded note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub key: ProcKey,
    pub cgroup_id: u64,
    pub tid: u32,
    pub comm: String,
}

pub fn comm_str(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// A ring-buffer record, or `None` when it is not a whole note.
pub fn decode(data: &[u8]) -> Option<Note> {
    let raw: RawNote =
        bytemuck::try_pod_read_unaligned(data.get(..std::mem::size_of::<RawNote>())?).ok()?;
    Some(Note {
        key: ProcKey {
            pid: raw.pid,
            image: Image {
                start_ns: raw.start_ns,
                exec_id: raw.exec_id,
            },
        },
        cgroup_id: raw.cgroup_id,
        tid: raw.tid,
        comm: comm_str(&raw.comm),
    })
}

/// Captures done and to do.
#[derive(Default)]
pub struct Captures {
    last: HashMap<ProcKey, Instant>,
    due: HashMap<ProcKey, Instant>,
}

impl Captures {
    /// A note the filter wants: capture now if the image is new, else
    /// schedule a capture.
    pub fn noted(
        &mut self,
        key: ProcKey,
        now: Instant,
        symbols: &mut Symbols,
        still_current: &dyn Fn(ProcKey) -> bool,
    ) {
        if !symbols.is_captured(key) {
            if symbols.capture(key, &|| still_current(key)) {
                self.last.insert(key, now);
            }
            return;
        }
        let not_before = self.last.get(&key).map_or(now, |&t| t + EVERY);
        let at = (now + SETTLE).max(not_before);
        let e = self.due.entry(key).or_insert(at);
        *e = (*e).min(at);
    }

    /// Run the captures whose time has come (all of them with `now` None).
    pub fn run_due(
        &mut self,
        now: Option<Instant>,
        symbols: &mut Symbols,
        still_current: &dyn Fn(ProcKey) -> bool,
    ) {
        let ready: Vec<ProcKey> = self
            .due
            .iter()
            .filter(|(_, &at)| match now {
                None => true,
                Some(n) => at <= n,
            })
            .map(|(&k, _)| k)
            .collect();
        for key in ready {
            self.due.remove(&key);
            if symbols.capture(key, &|| still_current(key)) {
                self.last.insert(key, Instant::now());
            }
        }
    }

    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_decode_and_short_records_do_not() {
        let raw = RawNote {
            start_ns: 123_000_000,
            exec_id: 2,
            pad: 0,
            cgroup_id: 77,
            pid: 42,
            tid: 43,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
        };
        let bytes = bytemuck::bytes_of(&raw);
        let n = decode(bytes).unwrap();
        assert_eq!(
            n,
            Note {
                key: ProcKey {
                    pid: 42,
                    image: Image {
                        start_ns: 123_000_000,
                        exec_id: 2
                    }
                },
                cgroup_id: 77,
                tid: 43,
                comm: "worker".into(),
            }
        );
        assert_eq!(decode(&bytes[..40]), None);
    }

    #[test]
    fn a_repeated_note_is_captured_later_and_at_most_once_a_second() {
        let pid = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ticks = crate::procfs::parse_start_ticks(&stat).unwrap();
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
        let mut c = Captures::default();
        let t0 = Instant::now();
        c.noted(key, t0, &mut s, &|_| true);
        assert!(s.is_captured(key));
        assert_eq!(c.pending(), 0, "the first note is captured at once");
        c.noted(key, t0, &mut s, &|_| true);
        assert_eq!(c.pending(), 1);
        c.run_due(Some(t0 + SETTLE), &mut s, &|_| true);
        assert_eq!(c.pending(), 1, "not again within a second");
        c.run_due(Some(t0 + EVERY), &mut s, &|_| true);
        assert_eq!(c.pending(), 0);
        // A note for an image that is no longer current is not captured.
        let gone = ProcKey {
            pid,
            image: Image {
                exec_id: 1,
                ..key.image
            },
        };
        c.noted(gone, t0, &mut s, &|k| k != gone);
        assert!(!s.is_captured(gone));
    }
}
