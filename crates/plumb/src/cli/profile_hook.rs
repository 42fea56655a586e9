//! The CPU profile part of `plumb doctor`: the hottest kernel functions and
//! the hottest user functions over a few seconds, each with its share of
//! the samples and the processes (pods where known) that ran it.
//!
//! A sample's stack runs from user code down into the kernel. The kernel
//! function is the innermost kernel frame (where the CPU was, if it was in
//! the kernel); the user function is the innermost user frame (the code
//! that was running, or that made the system call the kernel was serving).
//! So a user function's share includes time the kernel spent on its
//! behalf, and the two lists answer "what was the kernel doing" and "which
//! code asked for it" separately.

use super::doctor::{Count, Hit};
use plumb_profile::{Frame, Profile, ProfileOptions};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// The hottest kernel and user functions of one profile.
#[derive(Debug, Default)]
pub struct Hot {
    pub kernel: Vec<Count>,
    pub user: Vec<Count>,
    /// Samples in the profile (the shares' denominator).
    pub samples: u64,
    /// Samples the kernel could not deliver (map full, program not run).
    pub lost: u64,
}

/// Profile every CPU for `d` and keep the `n` hottest of each kind;
/// doctor's own threads (its tracers, the audit, the profiler) are left
/// out unless `include_self`.
pub fn hot_functions(
    d: Duration,
    stop: &AtomicBool,
    n: usize,
    include_self: bool,
) -> Result<Hot, String> {
    let opts = ProfileOptions {
        frequency: 99,
        duration: d,
        sources: super::trace::local_sources(),
        include_self,
        ..ProfileOptions::default()
    };
    let p = plumb_profile::profile(&opts, stop).map_err(|e| e.to_string())?;
    Ok(hottest(&p, n))
}

/// Who ran a stack, as briefly as it can be said.
fn who(s: &plumb_profile::Stack) -> String {
    match (&s.workload.namespace, &s.workload.pod) {
        (Some(ns), Some(pod)) => format!("pod {ns}/{pod} ({})", s.comm),
        _ => s.comm.clone(),
    }
}

/// Bracketed names ("[user stack lost]") are notes, not functions.
fn function(f: &Frame) -> Option<&str> {
    (!f.name.starts_with('[')).then_some(&*f.name)
}

type ByFunction<'a> = HashMap<&'a str, (u64, HashMap<String, u64>)>;

fn rank(by_fn: ByFunction<'_>, total: u64, n: usize) -> Vec<Count> {
    let mut rows: Vec<(&str, u64, HashMap<String, u64>)> =
        by_fn.into_iter().map(|(f, (c, w))| (f, c, w)).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    rows.into_iter()
        .take(n)
        .map(|(f, c, who)| {
            let mut hit: Vec<Hit> = who
                .into_iter()
                .map(|(who, count)| Hit { who, count })
                .collect();
            hit.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.who.cmp(&b.who)));
            Count {
                key: f.to_string(),
                count: c,
                share: Some(c as f64 * 100.0 / total.max(1) as f64),
                hit,
                more: "plumb profile cpu -o svg".to_string(),
            }
        })
        .collect()
}

/// The `n` hottest kernel functions and user functions (see the module
/// documentation), shares of all samples.
pub fn hottest(p: &Profile, n: usize) -> Hot {
    let total = p.samples();
    let mut kernel: ByFunction = HashMap::new();
    let mut user: ByFunction = HashMap::new();
    for s in &p.stacks {
        let innermost = |k: bool| s.frames.iter().rev().find(|f| f.kernel == k);
        for (frame, into) in [
            (innermost(true), &mut kernel),
            (innermost(false), &mut user),
        ] {
            let Some(name) = frame.and_then(function) else {
                continue;
            };
            let e = into.entry(name).or_default();
            e.0 += s.count;
            *e.1.entry(who(s)).or_default() += s.count;
        }
    }
    Hot {
        kernel: rank(kernel, total, n),
        user: rank(user, total, n),
        samples: total,
        lost: p.completeness.lost + p.completeness.missed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(name: &str, kernel: bool) -> Frame {
        Frame {
            name: Arc::from(name),
            module: None,
            kernel,
            symbolized: true,
        }
    }

    fn stack(comm: &str, frames: Vec<Frame>, count: u64) -> plumb_profile::Stack {
        plumb_profile::Stack {
            comm: comm.into(),
            pid: 1,
            tid: 1,
            cgroup_id: 0,
            workload: Arc::default(),
            frames,
            count,
        }
    }

    #[test]
    fn kernel_and_user_functions_are_ranked_apart() {
        let p = Profile {
            node: "n".into(),
            frequency_hz: 99,
            started: std::time::SystemTime::now(),
            duration_ns: 1,
            symbolize_ns: 0,
            symbolize_cpu_ns: 0,
            max_stack_depth: 127,
            cpus: 2,
            completeness: Default::default(),
            prog_ids: vec![],
            stacks: vec![
                // ping in the kernel matching rules on behalf of sendto().
                stack(
                    "ping",
                    vec![
                        frame("main", false),
                        frame("sendto", false),
                        frame("entry_SYSCALL_64", true),
                        frame("nft_do_chain", true),
                    ],
                    6,
                ),
                // ping computing in user space.
                stack(
                    "ping",
                    vec![frame("main", false), frame("in_cksum", false)],
                    3,
                ),
                // a softirq with no user stack.
                stack("swapper/0", vec![frame("ebt_do_table", true)], 1),
                stack("x", vec![frame("[user stack lost]", false)], 2),
            ],
        };
        let h = hottest(&p, 5);
        assert_eq!(h.samples, 12);
        let k: Vec<(&str, u64)> = h.kernel.iter().map(|c| (c.key.as_str(), c.count)).collect();
        assert_eq!(k, [("nft_do_chain", 6), ("ebt_do_table", 1)]);
        let u: Vec<(&str, u64)> = h.user.iter().map(|c| (c.key.as_str(), c.count)).collect();
        assert_eq!(u, [("sendto", 6), ("in_cksum", 3)]);
        assert_eq!(h.kernel[0].share, Some(50.0));
        assert_eq!(
            h.kernel[0].hit,
            [Hit {
                who: "ping".into(),
                count: 6
            }]
        );
    }
}
