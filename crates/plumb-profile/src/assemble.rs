//! From the kernel's counts to the profile's stacks: the user-space filter,
//! symbolization of what is left, and frames root first with placeholders
//! for what the kernel could not record.

use crate::symbols::{self, ProcKey, Symbols, UserAddr};
use crate::{Completeness, Frame, Stack};
use plumb_core::enrich::Enricher;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Which stacks were asked for, and how deep the kernel records them.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub kernel: bool,
    pub user: bool,
    /// A stack this deep was cut by the kernel.
    pub depth: usize,
}

/// One aggregated kernel count with its stacks read (leaf first).
#[derive(Debug, Clone)]
pub struct Sampled {
    pub proc: ProcKey,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub kstack_id: i32,
    pub ustack_id: i32,
    pub kstack: Arc<[u64]>,
    pub ustack: Arc<[u64]>,
    pub count: u64,
}

/// Keep the counts `wanted` accepts; the samples of the others, summed.
pub fn select<K>(
    counts: Vec<(K, u64)>,
    mut wanted: impl FnMut(&K) -> bool,
) -> (Vec<(K, u64)>, u64) {
    let mut dropped = 0;
    let kept = counts
        .into_iter()
        .filter(|(k, n)| {
            let keep = wanted(k);
            if !keep {
                dropped += n;
            }
            keep
        })
        .collect();
    (kept, dropped)
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

/// What a sample's stacks are missing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Gaps {
    /// A stack reached the depth limit.
    truncated: bool,
    /// The kernel could not record the user / kernel stack.
    user_lost: bool,
    kernel_lost: bool,
}

/// The frames of one sample, root first, and what its stacks miss.
fn frames_of(
    s: &Sampled,
    want: Want,
    user: &HashMap<UserAddr, Frame>,
    kernel: &HashMap<u64, Frame>,
    kernel_module: &Arc<str>,
) -> (Vec<Frame>, Gaps) {
    let mut frames: Vec<Frame> = Vec::with_capacity(s.ustack.len() + s.kstack.len() + 2);
    // A stack the kernel could not record (its map bucket was taken by
    // another stack, or the map was full) is named as such; -EFAULT means
    // there was none to take (user mode, or a kernel thread).
    let lost = |id: i32, want: bool| want && id < 0 && id != -libc::EFAULT;
    let cut = |st: &[u64]| want.depth > 0 && st.len() >= want.depth;
    let mut gaps = Gaps::default();
    if lost(s.ustack_id, want.user) {
        gaps.user_lost = true;
        frames.push(placeholder("[user stack lost]", false));
    }
    if cut(&s.ustack) {
        gaps.truncated = true;
        frames.push(placeholder("[truncated]", false));
    }
    for &addr in s.ustack.iter().rev() {
        let ua = UserAddr { proc: s.proc, addr };
        frames.push(
            user.get(&ua)
                .cloned()
                .unwrap_or_else(|| symbols::unknown_address("[unknown]", None, addr)),
        );
    }
    if lost(s.kstack_id, want.kernel) {
        gaps.kernel_lost = true;
        frames.push(placeholder("[kernel stack lost]", true));
    }
    if cut(&s.kstack) {
        gaps.truncated = true;
        frames.push(placeholder("[truncated]", true));
    }
    for &addr in s.kstack.iter().rev() {
        frames.push(
            kernel
                .get(&addr)
                .cloned()
                .unwrap_or_else(|| symbols::unnamed_kernel(addr, kernel_module)),
        );
    }
    if frames.is_empty() {
        // Sampled where the requested stack does not exist (user mode
        // with --kernel-only, a kernel thread with --user-only).
        let name = match (want.kernel, want.user) {
            (true, false) => "[user space]",
            (false, true) => "[kernel]",
            _ => "[no stack]",
        };
        frames.push(placeholder(name, !want.user));
    }
    (frames, gaps)
}

/// Symbolize the samples the filter kept and merge them into stacks (one
/// per thread, comm and frames), busiest first; fills the profile's counts
/// of samples, frames, stacks with gaps and processes (all of them about
/// what the profile holds, not what the filter left out).
pub fn assemble(
    sampled: Vec<Sampled>,
    want: Want,
    symbols: &mut Symbols,
    may_recapture: &dyn Fn(ProcKey) -> bool,
    enricher: &mut Enricher,
    done: &mut Completeness,
) -> Vec<Stack> {
    // Symbolize every distinct address once.
    let mut kaddrs: Vec<u64> = sampled
        .iter()
        .flat_map(|s| s.kstack.iter().copied())
        .collect();
    kaddrs.sort_unstable();
    kaddrs.dedup();
    let kernel = if kaddrs.is_empty() {
        HashMap::new()
    } else {
        symbols.kernel(&kaddrs)
    };
    let mut uaddrs: Vec<UserAddr> = sampled
        .iter()
        .flat_map(|s| s.ustack.iter().map(|&addr| UserAddr { proc: s.proc, addr }))
        .collect();
    uaddrs.sort_unstable();
    uaddrs.dedup();
    let user = symbols.user(&uaddrs, may_recapture);
    let with_user_frames: HashSet<ProcKey> = uaddrs.iter().map(|a| a.proc).collect();
    done.processes_captured = symbols.captured() as u64;
    done.processes_not_captured = with_user_frames
        .iter()
        .filter(|&&k| !symbols.is_captured(k))
        .count() as u64;
    done.addresses_unsymbolized = kernel.values().filter(|f| !f.symbolized).count() as u64
        + user.values().filter(|f| !f.symbolized).count() as u64;

    let kernel_module: Arc<str> = Arc::from("kernel");
    let mut merged: HashMap<(u32, u32, String, u64, Vec<Frame>), u64> = HashMap::new();
    for s in sampled {
        let (frames, gaps) = frames_of(&s, want, &user, &kernel, &kernel_module);
        for (gap, figure) in [
            (gaps.truncated, &mut done.stacks_truncated),
            (gaps.user_lost, &mut done.user_stacks_lost),
            (gaps.kernel_lost, &mut done.kernel_stacks_lost),
        ] {
            if gap {
                *figure += s.count;
            }
        }
        *merged
            .entry((s.proc.pid, s.tid, s.comm, s.cgroup_id, frames))
            .or_default() += s.count;
    }
    let mut stacks: Vec<Stack> = merged
        .into_iter()
        .map(|((pid, tid, comm, cgroup_id, frames), count)| {
            let (_, workload) = enricher.resolve(cgroup_id, pid);
            Stack {
                comm,
                pid,
                tid,
                cgroup_id,
                workload,
                frames,
                count,
            }
        })
        .collect();
    stacks.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (a.pid, a.tid).cmp(&(b.pid, b.tid)))
    });
    for s in &stacks {
        done.samples += s.count;
        done.frames_total += s.frames.len() as u64 * s.count;
        done.frames_unsymbolized +=
            s.frames.iter().filter(|f| !f.symbolized).count() as u64 * s.count;
    }
    stacks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::Image;

    fn named(name: &str, kernel: bool) -> Frame {
        Frame {
            name: Arc::from(name),
            module: None,
            kernel,
            symbolized: true,
        }
    }

    fn sampled(ustack: &[u64], kstack: &[u64], ids: (i32, i32)) -> Sampled {
        Sampled {
            proc: ProcKey {
                pid: 7,
                image: Image {
                    start_ns: 1,
                    exec_id: 0,
                },
            },
            tid: 8,
            comm: "app".into(),
            cgroup_id: 1,
            kstack_id: ids.0,
            ustack_id: ids.1,
            kstack: kstack.into(),
            ustack: ustack.into(),
            count: 3,
        }
    }

    fn names(f: &[Frame]) -> Vec<&str> {
        f.iter().map(|f| &*f.name).collect()
    }

    #[test]
    fn select_keeps_what_the_filter_wants_and_counts_the_rest() {
        let (kept, dropped) = select(vec![("a", 5), ("b", 7), ("a", 1), ("c", 2)], |k| *k == "a");
        assert_eq!(kept, [("a", 5), ("a", 1)]);
        assert_eq!(dropped, 9);
    }

    #[test]
    fn frames_are_root_first_with_fallbacks_for_unknown_addresses() {
        let s = sampled(&[0x10, 0x20], &[0xf1, 0xf2], (1, 2));
        let key = |addr| UserAddr { proc: s.proc, addr };
        let user = HashMap::from([
            (key(0x10), named("leaf", false)),
            (key(0x20), named("main", false)),
        ]);
        // 0xf2 is missing from the kernel's map: a fallback, no panic.
        let kernel = HashMap::from([(0xf1, named("do_sys", true))]);
        let want = Want {
            kernel: true,
            user: true,
            depth: 127,
        };
        let km: Arc<str> = Arc::from("kernel");
        let (f, cut) = frames_of(&s, want, &user, &kernel, &km);
        assert_eq!(names(&f), ["main", "leaf", "[kernel]@0xf2", "do_sys"]);
        assert!(!f[2].symbolized && f[2].kernel);
        assert_eq!(cut, Gaps::default());
        // A user address no symbolizer answered for.
        let (f, _) = frames_of(&s, want, &HashMap::new(), &kernel, &km);
        assert_eq!(names(&f)[..2], ["[unknown]@0x20", "[unknown]@0x10"]);
    }

    #[test]
    fn lost_and_cut_stacks_are_named() {
        let want = Want {
            kernel: true,
            user: true,
            depth: 3,
        };
        let km: Arc<str> = Arc::from("kernel");
        // The user stack was not recorded (-EEXIST: a hash collision), the
        // kernel stack filled the depth limit.
        let s = sampled(&[], &[1, 2, 3], (5, -libc::EEXIST));
        let (f, cut) = frames_of(&s, want, &HashMap::new(), &HashMap::new(), &km);
        assert_eq!(
            names(&f),
            [
                "[user stack lost]",
                "[truncated]",
                "[kernel]@0x3",
                "[kernel]@0x2",
                "[kernel]@0x1"
            ]
        );
        assert_eq!(
            cut,
            Gaps {
                truncated: true,
                user_lost: true,
                kernel_lost: false
            }
        );
        assert!(f[1].kernel);
        // Interrupted in user mode (no kernel stack: -EFAULT) with only
        // kernel stacks asked for.
        let want = Want {
            user: false,
            ..want
        };
        let s = sampled(&[], &[], (-libc::EFAULT, -1));
        let (f, cut) = frames_of(&s, want, &HashMap::new(), &HashMap::new(), &km);
        assert_eq!(names(&f), ["[user space]"]);
        assert_eq!(cut, Gaps::default());
    }
}
