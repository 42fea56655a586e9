//! Netfilter: read every ruleset of a network namespace (iptables and
//! ip6tables, nft-backed and legacy; ebtables; native nftables), then find
//! semantically duplicated rules and chains that every packet walks.
//!
//! There is no well-kept Rust crate that decodes xtables rules from netlink,
//! so the rules are read from the tools' own dumps (`*-save -c` and
//! `nft -j list ruleset`), each parsed completely.

pub mod nft;
pub mod xtables;

use crate::finding::{Finding, Severity};
use crate::Runner;
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// Where the rules came from: iptables, ip6tables, ebtables,
    /// iptables-legacy, ip6tables-legacy, nft.
    pub tool: &'static str,
    pub family: &'static str,
    pub name: String,
    pub chains: Vec<Chain>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Chain {
    pub name: String,
    /// Built-in (base) chains have a policy.
    pub policy: Option<String>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub text: String,
    /// Normalised identity: equal keys are the same rule to the kernel.
    pub key: String,
    pub packets: Option<u64>,
    pub jumps_to: Option<String>,
}

/// A set of copies of one rule in a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicates {
    /// 1-based position of the first occurrence.
    pub first: usize,
    /// How many more times it occurs.
    pub copies: usize,
    pub rule: String,
    pub packets: Option<u64>,
}

/// Duplicated rules of a chain, most copies first.
pub fn duplicates(chain: &Chain) -> Vec<Duplicates> {
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in chain.rules.iter().enumerate() {
        groups.entry(r.key.as_str()).or_default().push(i);
    }
    let mut out: Vec<Duplicates> = groups
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|v| Duplicates {
            first: v[0] + 1,
            copies: v.len() - 1,
            rule: chain.rules[v[0]].text.clone(),
            packets: v.iter().map(|&i| chain.rules[i].packets).sum(),
        })
        .collect();
    out.sort_by(|a, b| b.copies.cmp(&a.copies).then(a.first.cmp(&b.first)));
    out
}

/// The most rules a packet entering `chain` can be compared against,
/// following jumps (each chain counted once).
pub fn walk_length(table: &Table, chain: &str, seen: &mut Vec<String>) -> usize {
    if seen.iter().any(|s| s == chain) {
        return 0;
    }
    seen.push(chain.to_string());
    let Some(c) = table.chains.iter().find(|c| c.name == chain) else {
        return 0;
    };
    c.rules.len()
        + c.rules
            .iter()
            .filter_map(|r| r.jumps_to.as_deref())
            .map(|t| walk_length(table, t, seen))
            .sum::<usize>()
}

/// Read every ruleset visible through `run` (a command runner in the
/// namespace being audited).
pub fn collect(run: &Runner) -> (Ruleset, Vec<String>) {
    let mut rs = Ruleset::default();
    let mut notes = Vec::new();
    let mut nft_backed: Vec<(String, String)> = Vec::new();
    let tools: [(&str, &'static str, &'static str); 5] = [
        ("iptables-save -c", "iptables", "ip"),
        ("ip6tables-save -c", "ip6tables", "ip6"),
        ("iptables-legacy-save -c", "iptables-legacy", "ip"),
        ("ip6tables-legacy-save -c", "ip6tables-legacy", "ip6"),
        ("ebtables-save -c", "ebtables", "bridge"),
    ];
    for (cmd, tool, family) in tools {
        match run.output(cmd) {
            Ok(text) => {
                let parsed = xtables::parse(&text, tool, family);
                // nft-backed tools say so in their header; their tables also
                // appear in nft's listing and must not be counted twice.
                if text.contains("(nf_tables)") || (tool == "ebtables" && !text.contains("legacy"))
                {
                    nft_backed.extend(
                        parsed
                            .tables
                            .iter()
                            .map(|t| (family.to_string(), t.name.clone())),
                    );
                }
                rs.tables.extend(parsed.tables);
            }
            Err(e) => notes.push(format!("{tool}: {e}")),
        }
    }
    match run.output("nft -j list ruleset") {
        Ok(json) => match nft::parse(&json, &nft_backed) {
            Ok(n) => rs.tables.extend(n.tables),
            Err(e) => notes.push(format!("nft: unreadable JSON: {e}")),
        },
        Err(e) => notes.push(format!("nft: {e}")),
    }
    (rs, notes)
}

/// Findings about a ruleset.
pub fn analyse(rs: &Ruleset) -> Vec<Finding> {
    let mut out = Vec::new();
    for t in &rs.tables {
        for c in &t.chains {
            for d in duplicates(c) {
                let sev = match d.copies {
                    n if n >= 100 => Severity::Critical,
                    n if n >= 3 => Severity::Warning,
                    _ => Severity::Info,
                };
                let mut f = Finding::new(
                    sev,
                    "netfilter",
                    format!(
                        "chain {} in table {} {} ({}) has {} rules, {} of them copies of rule #{}",
                        c.name,
                        t.family,
                        t.name,
                        t.tool,
                        c.rules.len(),
                        d.copies,
                        d.first
                    ),
                )
                .evidence(format!("rule #{}: {}", d.first, d.rule))
                .advice(
                    "Remove the copies, and fix whatever keeps adding the rule: a tool that checks for its \
                     own rule by comparing text the kernel has normalised (e.g. 10.2.207.1/24 vs \
                     10.2.207.0/24) never finds it and adds it again. `plumb trace exec` shows which \
                     process runs iptables/ebtables/nft.",
                );
                if let Some(p) = d.packets {
                    f = f.evidence(format!(
                        "{p} packets matched these copies (kernel counters)"
                    ));
                }
                out.push(f.data(serde_json::json!({
                    "tool": t.tool, "family": t.family, "table": t.name, "chain": c.name,
                    "rules": c.rules.len(), "copies": d.copies, "first": d.first, "rule": d.rule,
                    "packets": d.packets,
                })));
            }
            if c.policy.is_some() {
                let walk = walk_length(t, &c.name, &mut Vec::new());
                if walk >= 1000 {
                    out.push(
                        Finding::new(
                            if walk >= 5000 { Severity::Critical } else { Severity::Warning },
                            "netfilter",
                            format!(
                                "every packet through {} {} {} can be compared with up to {walk} rules",
                                t.family, t.name, c.name
                            ),
                        )
                        .evidence(format!("{} rules in the chain itself", c.rules.len()))
                        .advice("Linear rule walks cost CPU per packet (softirq time); use sets/maps or an eBPF datapath.")
                        .data(serde_json::json!({"table": t.name, "chain": c.name, "walk": walk})),
                    );
                }
            }
        }
    }
    out
}

/// Total rules, for the datapath summary.
pub fn rule_count(rs: &Ruleset) -> usize {
    rs.tables
        .iter()
        .flat_map(|t| &t.chains)
        .map(|c| c.rules.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(rules: &[&str]) -> Chain {
        Chain {
            name: "FORWARD".into(),
            policy: Some("ACCEPT".into()),
            rules: rules
                .iter()
                .map(|r| {
                    let w = xtables::words(r);
                    Rule {
                        text: r.to_string(),
                        key: xtables::normalize(&w),
                        packets: Some(1),
                        jumps_to: None,
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn counts_copies_of_the_first_occurrence() {
        let c = chain(&[
            "-p IPv4 --ip-dst 10.9.9.9 -j DROP",
            "-p IPv4 --ip-src 10.2.207.0/24 -j ACCEPT",
            "-p IPv4 --ip-src 10.2.207.1/24 -j ACCEPT",
            "-p IPv4 --ip-src 10.2.207.0/24 -j ACCEPT",
        ]);
        let d = duplicates(&c);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].first, d[0].copies, d[0].packets), (2, 2, Some(3)));
        let f = analyse(&Ruleset {
            tables: vec![Table {
                tool: "ebtables",
                family: "bridge",
                name: "filter".into(),
                chains: vec![c],
            }],
        });
        assert_eq!(f[0].title, "chain FORWARD in table bridge filter (ebtables) has 4 rules, 2 of them copies of rule #2");
    }

    #[test]
    fn distinct_rules_are_not_duplicates() {
        let rules: Vec<String> = (0..50)
            .map(|i| format!("-p IPv4 --ip-src 10.2.{i}.0/24 -j ACCEPT"))
            .collect();
        let refs: Vec<&str> = rules.iter().map(String::as_str).collect();
        assert!(duplicates(&chain(&refs)).is_empty());
    }

    #[test]
    fn walk_follows_jumps_once() {
        let mut t = Table {
            tool: "iptables",
            family: "ip",
            name: "filter".into(),
            chains: vec![],
        };
        let mut a = chain(&["-j X", "-j X"]);
        a.name = "INPUT".into();
        a.rules[0].jumps_to = Some("X".into());
        a.rules[1].jumps_to = Some("X".into());
        let mut x = chain(&[
            "-s 1.1.1.1 -j DROP",
            "-s 1.1.1.2 -j DROP",
            "-s 1.1.1.3 -j DROP",
        ]);
        x.name = "X".into();
        t.chains = vec![a, x];
        assert_eq!(walk_length(&t, "INPUT", &mut Vec::new()), 5);
    }
}
