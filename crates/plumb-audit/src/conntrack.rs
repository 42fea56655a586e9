//! Conntrack pressure: entries against `nf_conntrack_max`, and the kernel's
//! insert-failure, drop and early-drop counters (/proc/net/stat/nf_conntrack,
//! one row of hex counters per CPU).

use crate::finding::{Finding, Severity};
use crate::Runner;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Conntrack {
    pub count: u64,
    pub max: u64,
    /// Sums over CPUs of /proc/net/stat/nf_conntrack.
    pub stats: BTreeMap<String, u64>,
}

/// Sum the per-CPU rows of /proc/net/stat/nf_conntrack.
pub fn parse_stat(text: &str) -> BTreeMap<String, u64> {
    let mut lines = text.lines();
    let Some(head) = lines.next() else {
        return BTreeMap::new();
    };
    let names: Vec<&str> = head.split_whitespace().collect();
    let mut sums = BTreeMap::new();
    for l in lines {
        for (n, v) in names.iter().zip(l.split_whitespace()) {
            if let Ok(x) = u64::from_str_radix(v, 16) {
                *sums.entry(n.to_string()).or_insert(0) += x;
            }
        }
    }
    sums
}

pub fn collect(run: &Runner) -> Option<Conntrack> {
    let count = run
        .output("cat /proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?;
    let max = run
        .output("cat /proc/sys/net/netfilter/nf_conntrack_max")
        .ok()?;
    let stat = run
        .output("cat /proc/net/stat/nf_conntrack")
        .unwrap_or_default();
    Some(Conntrack {
        count: count.trim().parse().ok()?,
        max: max.trim().parse().ok()?,
        stats: parse_stat(&stat),
    })
}

pub fn analyse(c: &Conntrack) -> Vec<Finding> {
    let mut out = Vec::new();
    let fill = if c.max > 0 {
        c.count as f64 / c.max as f64
    } else {
        0.0
    };
    let failures: Vec<(String, u64)> = ["insert_failed", "drop", "early_drop"]
        .iter()
        .filter_map(|k| {
            c.stats
                .get(*k)
                .filter(|v| **v > 0)
                .map(|v| (k.to_string(), *v))
        })
        .collect();
    if fill >= 0.8 || !failures.is_empty() {
        let sev = if fill >= 0.95 || c.stats.get("drop").is_some_and(|d| *d > 0) {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let mut f = Finding::new(
            sev,
            "conntrack",
            format!(
                "conntrack table is {:.0}% full ({}/{} entries)",
                fill * 100.0,
                c.count,
                c.max
            ),
        )
        .advice(
            "New connections are dropped when the table is full (insert_failed/drop). Raise \
             net.netfilter.nf_conntrack_max, shorten timeouts, or find who opens so many flows \
             (`plumb trace tcp --summary 5s`).",
        );
        for (k, v) in &failures {
            f = f.evidence(format!("{k} = {v}"));
        }
        out.push(f.data(serde_json::json!({"count": c.count, "max": c.max, "stats": c.stats})));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000001 00000000 00000000  00000000 00000000 00000000 00000000\n\
00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003 0000000a 00000000 00000000  00000000 00000000 00000000 00000000\n";

    #[test]
    fn sums_hex_counters_over_cpus() {
        let s = parse_stat(STAT);
        assert_eq!(s["insert_failed"], 5);
        assert_eq!(s["drop"], 11);
        assert_eq!(s["entries"], 32);
    }

    #[test]
    fn full_table_with_drops_is_critical() {
        let c = Conntrack {
            count: 99,
            max: 100,
            stats: parse_stat(STAT),
        };
        let f = analyse(&c);
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(f[0].title.contains("99% full (99/100"));
        assert!(f[0].evidence.contains(&"drop = 11".to_string()));
        assert!(analyse(&Conntrack {
            count: 10,
            max: 100,
            stats: BTreeMap::new()
        })
        .is_empty());
    }
}
