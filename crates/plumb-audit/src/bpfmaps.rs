//! BPF maps of the whole node (the bpf syscall: every map id, its info, the
//! programs that use it), with the number of entries of hash and LRU maps
//! counted by batch lookups under a time bound, and a flag on maps near
//! capacity: an LRU hash at its maximum is evicting live entries.

use crate::finding::{Finding, Severity};
use libbpf_rs::query::{MapInfoIter, ProgInfoIter, ProgInfoQueryOptions};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct MapSummary {
    pub id: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub max_entries: u32,
    /// Counted entries (hash and LRU maps); `None` for other types.
    pub entries: Option<u64>,
    /// The count stopped at the time bound: `entries` is a lower bound.
    pub partial: bool,
    pub programs: Vec<String>,
}

fn counts_entries(t: MapType) -> bool {
    matches!(
        t,
        MapType::Hash | MapType::LruHash | MapType::PercpuHash | MapType::LruPercpuHash
    )
}

/// Count a map's entries: batch lookups where the kernel supports them,
/// key iteration otherwise, stopping at `budget`.
pub fn count_entries(map: &MapHandle, ty: MapType, budget: Duration) -> (u64, bool) {
    let start = Instant::now();
    let mut n = 0u64;
    let per_cpu = matches!(ty, MapType::PercpuHash | MapType::LruPercpuHash);
    if !per_cpu {
        if let Ok(it) = map.lookup_batch(256, MapFlags::ANY, MapFlags::ANY) {
            for _ in it {
                n += 1;
                if n.is_multiple_of(256) && start.elapsed() > budget {
                    return (n, true);
                }
            }
            if n > 0 {
                return (n, false);
            }
        }
    }
    n = 0;
    for _ in map.keys() {
        n += 1;
        if n.is_multiple_of(256) && start.elapsed() > budget {
            return (n, true);
        }
    }
    (n, false)
}

/// What eviction or a full table means for maps of well-known datapaths.
pub fn known_map(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase();
    if n.starts_with("cilium_snat") || n.contains("nat") && n.starts_with("cilium") {
        return Some("Cilium's NAT table: an evicted entry breaks a live NATed connection (the peer sees resets or timeouts); raise bpf-nat-global-max or --bpf-map-dynamic-size-ratio");
    }
    if n.starts_with("cilium_ct") {
        return Some("Cilium's connection-tracking table: evicted entries make established connections look new (policy drops, resets); raise bpf-ct-global-tcp-max/any-max");
    }
    if n.starts_with("cilium_lb") {
        return Some("Cilium's load-balancer (service) map: when full, new services or backends cannot be programmed");
    }
    if n.starts_with("cilium_") {
        return Some("a Cilium datapath map");
    }
    None
}

/// Every map on the node, with its users and fill level.
pub fn collect(budget: Duration) -> Vec<MapSummary> {
    let mut users: HashMap<u32, Vec<String>> = HashMap::new();
    for p in ProgInfoIter::with_query_opts(ProgInfoQueryOptions::default().include_map_ids(true)) {
        for m in &p.map_ids {
            users.entry(*m).or_default().push(format!(
                "{} (id {})",
                p.name.to_string_lossy(),
                p.id
            ));
        }
    }
    let mut out = Vec::new();
    for info in MapInfoIter::default() {
        let (entries, partial) = if counts_entries(info.ty) {
            match MapHandle::from_map_id(info.id) {
                Ok(h) => {
                    let (n, p) = count_entries(&h, info.ty, budget);
                    (Some(n), p)
                }
                Err(_) => (None, false),
            }
        } else {
            (None, false)
        };
        out.push(MapSummary {
            id: info.id,
            name: info.name.to_string_lossy().into_owned(),
            ty: format!("{:?}", info.ty),
            max_entries: info.max_entries,
            entries,
            partial,
            programs: users.remove(&info.id).unwrap_or_default(),
        });
    }
    out
}

/// Findings for maps near capacity.
pub fn analyse(maps: &[MapSummary]) -> Vec<Finding> {
    let mut out = Vec::new();
    for m in maps {
        let (Some(n), true) = (m.entries, m.max_entries > 0) else {
            continue;
        };
        let fill = n as f64 / m.max_entries as f64;
        let lru = m.ty.starts_with("Lru");
        // An LRU map evicts before it is exactly full: the kernel keeps
        // per-CPU free lists, so a small map that is evicting sits some
        // entries below max_entries (56/64 on two CPUs).
        if fill < if lru { 0.8 } else { 0.9 } {
            continue;
        }
        let title = if lru {
            format!(
                "BPF LRU map {} (id {}) is at capacity ({n}/{}): it is evicting entries",
                m.name, m.id, m.max_entries
            )
        } else {
            format!(
                "BPF hash map {} (id {}) is {:.0}% full ({n}/{}): inserts will fail",
                m.name,
                m.id,
                fill * 100.0,
                m.max_entries
            )
        };
        let mut f = Finding::new(if fill >= 0.99 || lru { Severity::Critical } else { Severity::Warning }, "bpf-maps", title)
            .evidence(format!("type {}, max_entries {}", m.ty, m.max_entries))
            .advice(known_map(&m.name).map(|k| format!("This is {k}.")).unwrap_or_else(|| {
                "Raise the map's max_entries (or shorten entry lifetimes) in the program that owns it.".to_string()
            }));
        if !m.programs.is_empty() {
            f = f.evidence(format!("used by {}", m.programs.join(", ")));
        }
        out.push(f.data(serde_json::json!({
            "id": m.id, "name": m.name, "type": m.ty, "entries": n, "max_entries": m.max_entries,
            "evicting": lru, "partial": m.partial,
        })));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(ty: &str, n: u64, max: u32) -> MapSummary {
        MapSummary {
            id: 7,
            name: "m".into(),
            ty: ty.into(),
            max_entries: max,
            entries: Some(n),
            partial: false,
            programs: vec![],
        }
    }

    #[test]
    fn flags_full_lru_as_evicting_and_leaves_half_full_alone() {
        let f = analyse(&[summary("LruHash", 64, 64)]);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].title.contains("at capacity (64/64): it is evicting"),
            "{}",
            f[0].title
        );
        assert!(analyse(&[summary("Hash", 32, 64)]).is_empty());
        assert_eq!(analyse(&[summary("LruHash", 56, 64)]).len(), 1);
        assert!(analyse(&[summary("LruHash", 32, 64)]).is_empty());
        assert!(analyse(&[summary("Hash", 62, 64)])[0]
            .title
            .contains("inserts will fail"));
    }

    #[test]
    fn knows_cilium_maps() {
        assert!(known_map("cilium_snat_v4_external")
            .unwrap()
            .contains("NAT"));
        assert!(known_map("cilium_ct4_global")
            .unwrap()
            .contains("connection-tracking"));
        assert!(known_map("my_map").is_none());
    }
}
