//! Interface drops and errors from the kernel's statistics (`ip -s -j
//! link`), sampled twice so counters that are growing now stand out from
//! old totals.

use crate::exec::Exec;
use crate::finding::{Finding, Severity, Skip};
use std::collections::BTreeMap;
use std::time::Duration;

/// (rx_dropped, rx_errors, tx_dropped, tx_errors) per interface.
pub type Counters = BTreeMap<String, [u64; 4]>;

pub fn parse(json: &str) -> Counters {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let mut out = Counters::new();
    for l in v.as_array().into_iter().flatten() {
        let name = l["ifname"].as_str().unwrap_or_default().to_string();
        let s = &l["stats64"];
        let g = |d: &str, k: &str| s[d][k].as_u64().unwrap_or(0);
        out.insert(
            name,
            [
                g("rx", "dropped"),
                g("rx", "errors"),
                g("tx", "dropped"),
                g("tx", "errors"),
            ],
        );
    }
    out
}

/// Read every interface's counters once.
pub fn sample(run: &dyn Exec) -> Result<Counters, Skip> {
    let json = run
        .output("ip -s -j link")
        .map_err(|e| Skip::new("interface counters", e.to_string()))?;
    Ok(parse(&json))
}

pub fn analyse(before: &Counters, after: &Counters, interval: Duration) -> Vec<Finding> {
    const NAMES: [&str; 4] = ["rx_dropped", "rx_errors", "tx_dropped", "tx_errors"];
    let mut out = Vec::new();
    for (ifname, b) in after {
        let a = before.get(ifname).copied().unwrap_or(*b);
        let growth: Vec<String> = (0..4)
            .filter(|&i| b[i] > a[i])
            .map(|i| {
                format!(
                    "{} +{} in {:.1}s (total {})",
                    NAMES[i],
                    b[i] - a[i],
                    interval.as_secs_f64(),
                    b[i]
                )
            })
            .collect();
        if !growth.is_empty() {
            let mut f = Finding::new(
                Severity::Warning,
                "interfaces",
                format!("interface {ifname} is dropping packets now"),
            )
            .advice(format!(
                "`plumb trace drop` shows the reasons; `ip -s link show {ifname}` the counters."
            ));
            for g in growth {
                f = f.evidence(g);
            }
            out.push(f.data(serde_json::json!({"ifname": ifname, "before": a, "after": b})));
        } else if b.iter().any(|&x| x > 0) {
            out.push(
                Finding::new(
                    Severity::Info,
                    "interfaces",
                    format!("interface {ifname} has dropped or errored packets in the past"),
                )
                .evidence(
                    NAMES
                        .iter()
                        .zip(b)
                        .map(|(n, v)| format!("{n}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                )
                .advice("Not growing during the audit; compare again later.")
                .data(serde_json::json!({"ifname": ifname, "after": b})),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_counters_are_warnings_old_ones_info() {
        let j1 = r#"[{"ifname":"eth0","stats64":{"rx":{"dropped":5,"errors":0},"tx":{"dropped":0,"errors":0}}},{"ifname":"lo","stats64":{"rx":{"dropped":0,"errors":0},"tx":{"dropped":0,"errors":0}}}]"#;
        let j2 = r#"[{"ifname":"eth0","stats64":{"rx":{"dropped":9,"errors":0},"tx":{"dropped":0,"errors":0}}},{"ifname":"lo","stats64":{"rx":{"dropped":0,"errors":0},"tx":{"dropped":0,"errors":0}}}]"#;
        let f = analyse(&parse(j1), &parse(j2), Duration::from_secs(1));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].evidence[0].starts_with("rx_dropped +4"));
        let f = analyse(&parse(j2), &parse(j2), Duration::from_secs(1));
        assert_eq!(f[0].severity, Severity::Info);
    }
}
