//! Conntrack pressure: entries against `nf_conntrack_max`, and the kernel's
//! insert-failure, drop and early-drop counters (/proc/net/stat/nf_conntrack,
//! one row of hex counters per CPU).
//!
//! The counters are totals since the namespace was created, so one drop a
//! month ago would look like a full table today. The audit samples them
//! twice and flags growth; the totals are evidence only.

use crate::exec::{CmdError, Exec};
use crate::finding::{Finding, Severity, Skip};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The counters that mean a connection could not be tracked.
pub const PRESSURE: [&str; 3] = ["drop", "insert_failed", "early_drop"];

/// One reading of the namespace's conntrack state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// nf_conntrack_count: entries in this namespace's table.
    pub count: u64,
    /// nf_conntrack_max: the limit each namespace's count is held to (one
    /// host-wide value; read-only inside other namespaces).
    pub max: u64,
    /// Counters of /proc/net/stat/nf_conntrack summed over CPUs. Its
    /// `entries` column is the table's size repeated on every CPU's row,
    /// so it is taken once, not summed.
    pub stats: BTreeMap<String, u64>,
}

/// Two readings `interval` apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conntrack {
    pub before: Sample,
    pub after: Sample,
    #[serde(serialize_with = "crate::secs")]
    pub interval: Duration,
}

impl Conntrack {
    /// How much `name` grew between the two readings.
    pub fn growth(&self, name: &str) -> u64 {
        let a = self.after.stats.get(name).copied().unwrap_or(0);
        let b = self.before.stats.get(name).copied().unwrap_or(0);
        a.saturating_sub(b)
    }
}

/// /proc/net/stat/nf_conntrack: per-CPU counters summed, `entries` once.
pub fn parse_stat(text: &str) -> BTreeMap<String, u64> {
    let mut lines = text.lines();
    let Some(head) = lines.next() else {
        return BTreeMap::new();
    };
    let names: Vec<&str> = head.split_whitespace().collect();
    let mut sums = BTreeMap::new();
    for l in lines {
        for (n, v) in names.iter().zip(l.split_whitespace()) {
            let Ok(x) = u64::from_str_radix(v, 16) else {
                continue;
            };
            if *n == "entries" {
                sums.entry(n.to_string()).or_insert(x);
            } else {
                *sums.entry(n.to_string()).or_insert(0) += x;
            }
        }
    }
    sums
}

const READ: &str = "cat /proc/sys/net/netfilter/nf_conntrack_count /proc/sys/net/netfilter/nf_conntrack_max && cat /proc/net/stat/nf_conntrack";

/// Read the namespace's conntrack state once.
pub fn sample(run: &dyn Exec) -> Result<Sample, Skip> {
    let text = run.output(READ).map_err(|e| match e {
        CmdError::Failed(why) if why.contains("No such file") => Skip::new(
            "conntrack",
            "nf_conntrack is not loaded (no /proc/sys/net/netfilter/nf_conntrack_count)",
        ),
        e => Skip::new("conntrack", e.to_string()),
    })?;
    let mut lines = text.lines();
    let mut number = |what: &str| {
        lines
            .next()
            .and_then(|l| l.trim().parse::<u64>().ok())
            .ok_or_else(|| Skip::new("conntrack", format!("unreadable {what}")))
    };
    let count = number("nf_conntrack_count")?;
    let max = number("nf_conntrack_max")?;
    let rest: Vec<&str> = lines.collect();
    Ok(Sample {
        count,
        max,
        stats: parse_stat(&rest.join("\n")),
    })
}

pub fn analyse(c: &Conntrack) -> Vec<Finding> {
    let now = &c.after;
    let fill = if now.max > 0 {
        now.count as f64 / now.max as f64
    } else {
        0.0
    };
    let grew: Vec<(&str, u64)> = PRESSURE
        .iter()
        .map(|k| (*k, c.growth(k)))
        .filter(|(_, g)| *g > 0)
        .collect();
    let totals: Vec<(&str, u64)> = PRESSURE
        .iter()
        .map(|k| (*k, now.stats.get(*k).copied().unwrap_or(0)))
        .collect();
    let any_total = totals.iter().any(|(_, v)| *v > 0);
    let lost_now = c.growth("drop") > 0 || c.growth("insert_failed") > 0;
    let sev = if lost_now || fill >= 0.95 {
        Severity::Critical
    } else if !grew.is_empty() || fill >= 0.8 {
        Severity::Warning
    } else if any_total {
        Severity::Info
    } else {
        return Vec::new();
    };
    let mut title = format!(
        "conntrack table is {}% full ({}/{} entries)",
        (now.count * 100).checked_div(now.max).unwrap_or(0),
        now.count,
        now.max
    );
    if !grew.is_empty() {
        let parts: Vec<String> = grew.iter().map(|(k, g)| format!("{k} +{g}")).collect();
        title.push_str(&format!(
            "; {} in {:.1}s",
            parts.join(", "),
            c.interval.as_secs_f64()
        ));
    } else if sev == Severity::Info {
        title.push_str("; it failed to track connections in the past, not during the audit");
    }
    let total_text: Vec<String> = totals.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let f = Finding::new(sev, "conntrack", title)
        .evidence(format!(
            "totals (kernel, /proc/net/stat/nf_conntrack): {}",
            total_text.join(" ")
        ))
        .advice(
            "drop: new connections were refused because the table was full; insert_failed: \
             entries lost a race to be inserted (the packet was dropped); early_drop: entries \
             were evicted to make room. Raise net.netfilter.nf_conntrack_max, shorten timeouts, \
             or find who opens so many flows (`plumb trace tcp --summary 5s`).",
        )
        .data(serde_json::json!({
            "count": now.count,
            "max": now.max,
            "interval_s": c.interval.as_secs_f64(),
            "growth": grew.iter().map(|(k, g)| (k.to_string(), *g)).collect::<BTreeMap<_, _>>(),
            "before": c.before.stats,
            "after": now.stats,
        }));
    vec![f]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real /proc/net/stat/nf_conntrack of a lab namespace on this 2-CPU
    /// machine, after 60 connections against nf_conntrack_max=40: 40
    /// entries (0x28, on both rows), 21 drops (0x15) counted on CPU 0.
    const STAT: &str = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000028  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000015 00000000 00000000  00000000 00000000 00000000 00000000
00000028  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000000
";

    fn sample(count: u64, max: u64, stat: &str) -> Sample {
        Sample {
            count,
            max,
            stats: parse_stat(stat),
        }
    }

    #[test]
    fn sums_counters_over_cpus_but_not_entries() {
        let s = parse_stat(STAT);
        assert_eq!(s["entries"], 40);
        assert_eq!(s["drop"], 21);
        assert_eq!(s["insert_failed"], 0);
    }

    #[test]
    fn growing_drops_are_critical_old_ones_are_info() {
        let quiet = STAT.replace("00000015", "00000000");
        let c = Conntrack {
            before: sample(40, 40, &quiet),
            after: sample(40, 40, STAT),
            interval: Duration::from_secs(2),
        };
        let f = analyse(&c);
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(
            f[0].title,
            "conntrack table is 100% full (40/40 entries); drop +21 in 2.0s"
        );
        assert_eq!(
            f[0].evidence[0],
            "totals (kernel, /proc/net/stat/nf_conntrack): drop=21 insert_failed=0 early_drop=0"
        );
        assert_eq!(f[0].data["growth"]["drop"], 21);

        // The same totals, not growing, in a table with room: history only.
        let old = Conntrack {
            before: sample(3, 40, STAT),
            after: sample(3, 40, STAT),
            interval: Duration::from_secs(2),
        };
        let f = analyse(&old);
        assert_eq!(f[0].severity, Severity::Info);
        assert!(f[0].title.ends_with("in the past, not during the audit"));
    }

    #[test]
    fn fill_alone_warns_and_an_idle_table_says_nothing() {
        let quiet = STAT.replace("00000015", "00000000");
        let c = Conntrack {
            before: sample(33, 40, &quiet),
            after: sample(33, 40, &quiet),
            interval: Duration::from_secs(1),
        };
        assert_eq!(analyse(&c)[0].severity, Severity::Warning);
        let idle = Conntrack {
            before: sample(3, 40, &quiet),
            after: sample(3, 40, &quiet),
            interval: Duration::from_secs(1),
        };
        assert!(analyse(&idle).is_empty());
    }

    #[test]
    fn reads_one_sample_and_says_when_conntrack_is_absent() {
        let run = crate::exec::fake::Fake::default().ok(READ, &format!("40\n262144\n{STAT}"));
        let s = super::sample(&run).unwrap();
        assert_eq!((s.count, s.max, s.stats["drop"]), (40, 262144, 21));
        let mut gone = crate::exec::fake::Fake::default();
        gone.0.insert(
            READ.to_string(),
            Err(CmdError::Failed(
                "cat: /proc/sys/net/netfilter/nf_conntrack_count: No such file or directory".into(),
            )),
        );
        let skip = super::sample(&gone).unwrap_err();
        assert_eq!(skip.what, "conntrack");
        assert!(skip.why.starts_with("nf_conntrack is not loaded"));
    }
}
