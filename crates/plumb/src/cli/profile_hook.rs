//! The CPU profile part of `plumb doctor`: the functions with the most
//! samples on top of the stack over a few seconds, and who ran them.

use super::doctor::Count;
use plumb_profile::{Profile, ProfileOptions};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// The hottest functions over `d`, as shares of all samples.
pub fn hot_functions(d: Duration, stop: &AtomicBool) -> Result<Vec<Count>, String> {
    let opts = ProfileOptions {
        frequency: 99,
        duration: d,
        sources: super::trace::local_sources(),
        ..ProfileOptions::default()
    };
    let p = plumb_profile::profile(&opts, stop).map_err(|e| e.to_string())?;
    Ok(hottest(&p, 5))
}

/// The `n` functions with the most self samples, each with the processes
/// (pods where known) that spent them, busiest first.
pub fn hottest(p: &Profile, n: usize) -> Vec<Count> {
    let total = p.samples().max(1);
    let mut by_fn: HashMap<&str, (u64, HashMap<String, u64>)> = HashMap::new();
    for s in &p.stacks {
        // Bracketed names ("[user stack lost]") are not functions.
        let Some(leaf) = s.frames.last().filter(|f| !f.name.starts_with('[')) else {
            continue;
        };
        let who = match (&s.workload.namespace, &s.workload.pod) {
            (Some(ns), Some(pod)) => format!("pod {ns}/{pod}"),
            _ => s.comm.clone(),
        };
        let e = by_fn.entry(&leaf.name).or_default();
        e.0 += s.count;
        *e.1.entry(who).or_default() += s.count;
    }
    let mut rows: Vec<(&str, u64, HashMap<String, u64>)> =
        by_fn.into_iter().map(|(f, (c, w))| (f, c, w)).collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    rows.into_iter()
        .take(n)
        .map(|(f, c, who)| {
            let mut who: Vec<(String, u64)> = who.into_iter().collect();
            who.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            Count {
                key: format!("{f} ({:.1}%)", c as f64 * 100.0 / total as f64),
                count: c,
                hit: who.into_iter().take(3).map(|(w, _)| w).collect(),
                more: "plumb profile cpu -o svg".to_string(),
            }
        })
        .collect()
}
