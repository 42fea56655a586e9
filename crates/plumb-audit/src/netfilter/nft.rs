//! Native nftables rulesets, from `nft -j list ruleset`. A rule's identity
//! is its expression list with counter values removed, serialised
//! canonically (object keys sorted), so equal rules compare equal whatever
//! the order nft printed their keys in. Sets and maps are counted too:
//! rules that look up a set cost one lookup, but the set's elements are
//! the datapath's real size (kube-proxy's nftables mode keeps every
//! service in a verdict map).

use super::{Chain, Rule, Ruleset, Set, Table};
use serde_json::Value;

/// Remove counters (keeping their packet count) and sort object keys.
fn canonical(v: &Value, packets: &mut Option<u64>) -> Value {
    match v {
        Value::Array(a) => {
            let mut out = Vec::new();
            for x in a {
                if let Some(c) = x.get("counter") {
                    *packets = c.get("packets").and_then(Value::as_u64);
                } else {
                    out.push(canonical(x, packets));
                }
            }
            Value::Array(out)
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), canonical(&m[k], packets));
            }
            Value::Object(out)
        }
        v => v.clone(),
    }
}

/// Parse nft's JSON. Tables in `skip` ((family, name) pairs already read
/// through an xtables tool) are left out.
pub fn parse(json: &str, skip: &[(String, String)]) -> Result<Ruleset, serde_json::Error> {
    let v: Value = serde_json::from_str(json)?;
    let mut rs = Ruleset::default();
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let skipped = |f: &str, t: &str| skip.iter().any(|(sf, st)| sf == f && st == t);
    for item in &items {
        if let Some(t) = item.get("table") {
            let (f, n) = (
                t["family"].as_str().unwrap_or(""),
                t["name"].as_str().unwrap_or(""),
            );
            if !skipped(f, n) {
                rs.tables.push(Table {
                    tool: "nft",
                    family: family_static(f),
                    name: n.to_string(),
                    chains: Vec::new(),
                    sets: Vec::new(),
                });
            }
        }
    }
    for item in &items {
        for kind in ["set", "map"] {
            let Some(set) = item.get(kind) else { continue };
            let (f, t) = (
                set["family"].as_str().unwrap_or(""),
                set["table"].as_str().unwrap_or(""),
            );
            if let Some(table) = rs.tables.iter_mut().find(|x| x.family == f && x.name == t) {
                table.sets.push(Set {
                    name: set["name"].as_str().unwrap_or("").to_string(),
                    kind,
                    elements: set["elem"].as_array().map_or(0, Vec::len),
                });
            }
        }
        if let Some(c) = item.get("chain") {
            let (f, t) = (
                c["family"].as_str().unwrap_or(""),
                c["table"].as_str().unwrap_or(""),
            );
            if let Some(table) = rs.tables.iter_mut().find(|x| x.family == f && x.name == t) {
                table.chains.push(Chain {
                    name: c["name"].as_str().unwrap_or("").to_string(),
                    policy: c
                        .get("hook")
                        .and(c["policy"].as_str().or(Some("accept")))
                        .map(String::from),
                    rules: Vec::new(),
                });
            }
        }
        if let Some(r) = item.get("rule") {
            let (f, t, ch) = (
                r["family"].as_str().unwrap_or(""),
                r["table"].as_str().unwrap_or(""),
                r["chain"].as_str().unwrap_or(""),
            );
            let Some(table) = rs.tables.iter_mut().find(|x| x.family == f && x.name == t) else {
                continue;
            };
            let Some(chain) = table.chains.iter_mut().find(|c| c.name == ch) else {
                continue;
            };
            let mut packets = None;
            let expr = canonical(&r["expr"], &mut packets);
            let jumps_to = r["expr"].as_array().and_then(|a| {
                a.iter().find_map(|x| {
                    x.get("jump")
                        .or_else(|| x.get("goto"))
                        .and_then(|j| j["target"].as_str())
                        .map(String::from)
                })
            });
            chain.rules.push(Rule {
                text: expr.to_string(),
                key: expr.to_string(),
                packets,
                jumps_to,
            });
        }
    }
    Ok(rs)
}

fn family_static(f: &str) -> &'static str {
    match f {
        "ip" => "ip",
        "ip6" => "ip6",
        "inet" => "inet",
        "bridge" => "bridge",
        "arp" => "arp",
        "netdev" => "netdev",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULESET: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"table": {"family": "inet", "name": "fw", "handle": 1}},
      {"table": {"family": "ip", "name": "filter", "handle": 2}},
      {"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "fw", "name": "svc", "handle": 2}},
      {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}}, {"counter": {"packets": 4, "bytes": 240}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 4, "expr": [{"match": {"right": 80, "op": "==", "left": {"payload": {"field": "dport", "protocol": "tcp"}}}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 5, "expr": [{"jump": {"target": "svc"}}]}}
    ]}"#;

    #[test]
    fn equal_rules_compare_equal_whatever_the_key_order_and_counters() {
        let rs = parse(RULESET, &[("ip".into(), "filter".into())]).unwrap();
        assert_eq!(rs.tables.len(), 1, "the xtables-managed table is skipped");
        let input = &rs.tables[0].chains[0];
        assert_eq!(input.policy.as_deref(), Some("accept"));
        assert_eq!(rs.tables[0].chains[1].policy, None);
        assert_eq!(input.rules.len(), 3);
        assert_eq!(input.rules[0].key, input.rules[1].key);
        assert_eq!(input.rules[0].packets, Some(4));
        assert_eq!(input.rules[2].jumps_to.as_deref(), Some("svc"));
    }

    /// Real `nft -j list table` output (nft 1.0.6): a verdict map in the
    /// style of kube-proxy's nftables mode and an interval set.
    const SETS: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "kp", "handle": 4}}, {"map": {"family": "ip", "name": "service-ips", "table": "kp", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 1, "map": "verdict", "elem": [[{"concat": ["10.96.0.10", "udp", 53]}, {"goto": {"target": "svc2"}}], [{"concat": ["10.96.0.1", "tcp", 443]}, {"goto": {"target": "svc1"}}]]}}, {"set": {"family": "ip", "name": "s", "table": "kp", "type": "ipv4_addr", "handle": 4, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "192.168.1.1"]}}, {"chain": {"family": "ip", "table": "kp", "name": "svc1", "handle": 2}}, {"chain": {"family": "ip", "table": "kp", "name": "svc2", "handle": 3}}]}"#;

    #[test]
    fn counts_set_and_map_elements() {
        let rs = parse(SETS, &[]).unwrap();
        let t = &rs.tables[0];
        assert_eq!(
            t.sets,
            [
                Set {
                    name: "service-ips".into(),
                    kind: "map",
                    elements: 2
                },
                Set {
                    name: "s".into(),
                    kind: "set",
                    elements: 2
                },
            ]
        );
        assert_eq!(t.chains.len(), 2);
    }
}
