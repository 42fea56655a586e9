//! BPF maps of the whole node (the bpf syscall: every map id, its info, the
//! programs that use it), with the number of entries of hash and LRU maps
//! counted by batch lookups under a time bound, and a flag on maps near
//! capacity.
//!
//! When an LRU hash evicts depends on how the kernel hands out its
//! preallocated nodes (kernel/bpf/bpf_lru_list.c). With the common LRU
//! (the default), each CPU keeps a local free list refilled from the
//! global one LOCAL_FREE_TARGET (128) nodes at a time; a CPU whose local
//! list is empty when fewer than 128 nodes are left globally evicts
//! (shrinks the inactive list) instead. So eviction can start while up to
//! about ncpus × 128 nodes still sit unused in free lists, and no earlier:
//! that is the band in which we say "at capacity, evicting". With
//! BPF_F_NO_COMMON_LRU every CPU has its own list of max_entries / ncpus
//! nodes and evicts PERCPU_FREE_TARGET (4) at a time once its own list is
//! full. An LRU_PERCPU_HASH without that flag has per-CPU values but the
//! common LRU.

use crate::finding::{Finding, Severity};
use libbpf_rs::query::{MapInfoIter, ProgInfoIter, ProgInfoQueryOptions};
use libbpf_rs::{MapCore, MapHandle, MapType};
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
    /// BPF_F_* creation flags (BPF_F_NO_COMMON_LRU is 1 << 1).
    pub flags: u32,
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
/// key iteration otherwise, stopping at `budget` (the count is then a
/// lower bound, and says so).
pub fn count_entries(map: &MapHandle, ty: MapType, budget: Duration) -> (u64, bool) {
    let start = Instant::now();
    let per_cpu = matches!(ty, MapType::PercpuHash | MapType::LruPercpuHash);
    if let Some(r) = count_batched(map, per_cpu, start, budget) {
        return r;
    }
    let mut n = 0u64;
    for _ in map.keys() {
        n += 1;
        if n.is_multiple_of(256) && start.elapsed() > budget {
            return (n, true);
        }
    }
    (n, false)
}

/// BPF_MAP_LOOKUP_BATCH until the kernel says ENOENT. A hash map's batches
/// end at bucket boundaries, so a short batch is not the last one (and a
/// bucket larger than the batch is ENOSPC: retry with a bigger batch).
/// `None` when the kernel does not do batches for this map.
fn count_batched(
    map: &MapHandle,
    per_cpu: bool,
    start: Instant,
    budget: Duration,
) -> Option<(u64, bool)> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = map.as_fd().as_raw_fd();
    let key_size = map.key_size() as usize;
    // Per-CPU values come as one 8-byte-aligned slot per possible CPU.
    let value_size = if per_cpu {
        (map.value_size() as usize).div_ceil(8) * 8 * possible_cpus() as usize
    } else {
        map.value_size() as usize
    };
    // The batch token is the kernel's bucket index (a u32); room for more.
    let mut token_in = vec![0u8; key_size.max(8)];
    let mut token_out = vec![0u8; key_size.max(8)];
    let mut batch: usize = 256;
    let mut keys = vec![0u8; batch * key_size];
    let mut values = vec![0u8; batch * value_size];
    let opts = libbpf_rs::libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    let mut first = true;
    let mut n = 0u64;
    loop {
        let mut count = batch as u32;
        // SAFETY: the buffers hold `batch` keys and values of the sizes the
        // kernel writes, and the tokens are larger than its u32.
        let ret = unsafe {
            libbpf_rs::libbpf_sys::bpf_map_lookup_batch(
                fd,
                if first {
                    std::ptr::null_mut()
                } else {
                    token_in.as_mut_ptr().cast()
                },
                token_out.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        match -ret {
            0 => n += u64::from(count),
            libc::ENOENT => return Some((n + u64::from(count), false)),
            libc::ENOSPC if batch < 1 << 20 => {
                batch *= 4;
                keys.resize(batch * key_size, 0);
                values.resize(batch * value_size, 0);
                continue;
            }
            libc::EINTR => continue,
            // Batches not supported here (older kernels, some map types):
            // count by keys instead.
            _ => return None,
        }
        token_in.copy_from_slice(&token_out);
        first = false;
        if start.elapsed() > budget {
            return Some((n, true));
        }
    }
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
            flags: info.map_flags,
            entries,
            partial,
            programs: users.remove(&info.id).unwrap_or_default(),
        });
    }
    out
}

/// See the module documentation.
pub const LOCAL_FREE_TARGET: u64 = 128;
pub const PERCPU_FREE_TARGET: u64 = 4;
pub const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// How full a map is, as the kernel's allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Below 80% (LRU) or 90% (hash).
    Fine,
    /// An LRU map from 80% full, not yet where eviction can start.
    NearCapacity,
    /// An LRU map within the free-list slack of max_entries: inserts now
    /// evict the least recently used entries.
    Evicting,
    /// A hash map from 90% full: inserts fail with E2BIG when it is full.
    HashNearFull,
}

/// Entries below max_entries at which an LRU map can start evicting.
pub fn lru_slack(m: &MapSummary, ncpus: u64) -> u64 {
    if m.flags & BPF_F_NO_COMMON_LRU != 0 {
        ncpus * PERCPU_FREE_TARGET
    } else {
        ncpus * LOCAL_FREE_TARGET
    }
}

pub fn pressure(m: &MapSummary, ncpus: u64) -> Pressure {
    let (Some(n), true) = (m.entries, m.max_entries > 0) else {
        return Pressure::Fine;
    };
    let max = u64::from(m.max_entries);
    let fill = n as f64 / max as f64;
    if m.ty.starts_with("Lru") {
        if n >= max || (fill >= 0.8 && n + lru_slack(m, ncpus) >= max) {
            Pressure::Evicting
        } else if fill >= 0.8 {
            Pressure::NearCapacity
        } else {
            Pressure::Fine
        }
    } else if fill >= 0.9 {
        Pressure::HashNearFull
    } else {
        Pressure::Fine
    }
}

/// Findings for maps near capacity; `ncpus` is the number of possible CPUs.
pub fn analyse(maps: &[MapSummary], ncpus: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    for m in maps {
        let p = pressure(m, ncpus);
        let Some(n) = m.entries.filter(|_| p != Pressure::Fine) else {
            continue;
        };
        let max = m.max_entries;
        // Whole percent, rounded down: 4080/4096 is 99%, not "100%".
        let pct = n * 100 / u64::from(max);
        let per_cpu = m.flags & BPF_F_NO_COMMON_LRU != 0;
        let (sev, title) = match p {
            Pressure::Evicting => (
                Severity::Critical,
                format!(
                    "BPF LRU map {} (id {}) is at capacity ({n}/{max}): it is evicting entries",
                    m.name, m.id
                ),
            ),
            Pressure::NearCapacity => (
                Severity::Warning,
                format!(
                    "BPF LRU map {} (id {}) is near capacity ({n}/{max}, {pct}%)",
                    m.name, m.id
                ),
            ),
            _ => (
                if n >= u64::from(max) {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                format!(
                    "BPF hash map {} (id {}) is {pct}% full ({n}/{max}): inserts will fail",
                    m.name, m.id
                ),
            ),
        };
        let mut f = Finding::new(sev, "bpf-maps", title)
            .evidence(format!("type {}, max_entries {max}", m.ty))
            .advice(known_map(&m.name).map(|k| format!("This is {k}.")).unwrap_or_else(|| {
                "Raise the map's max_entries (or shorten entry lifetimes) in the program that owns it.".to_string()
            }));
        if m.ty.starts_with("Lru") {
            let slack = lru_slack(m, ncpus);
            f = f.evidence(if per_cpu {
                format!(
                    "per-CPU LRU lists (BPF_F_NO_COMMON_LRU) of {} entries on each of {ncpus} CPUs: a CPU evicts once its own list is full",
                    u64::from(max) / ncpus.max(1)
                )
            } else {
                format!(
                    "common LRU: eviction starts within {slack} entries of max_entries ({ncpus} CPUs × {LOCAL_FREE_TARGET} nodes in per-CPU free lists)"
                )
            });
        }
        if m.partial {
            f = f.evidence("counting stopped at the time bound: entries is a lower bound");
        }
        if !m.programs.is_empty() {
            f = f.evidence(format!("used by {}", m.programs.join(", ")));
        }
        out.push(f.data(serde_json::json!({
            "id": m.id, "name": m.name, "type": m.ty, "entries": n, "max_entries": max,
            "evicting": p == Pressure::Evicting, "per_cpu_lru": per_cpu, "partial": m.partial,
        })));
    }
    out
}

/// Possible CPUs, as the kernel sizes per-CPU structures.
pub fn possible_cpus() -> u64 {
    libbpf_rs::num_possible_cpus().map_or(1, |n| n as u64)
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
            flags: 0,
            entries: Some(n),
            partial: false,
            programs: vec![],
        }
    }

    #[test]
    fn small_full_lru_is_evicting_half_full_maps_are_fine() {
        let f = analyse(&[summary("LruHash", 64, 64)], 2);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].title,
            "BPF LRU map m (id 7) is at capacity (64/64): it is evicting entries"
        );
        // 56/64 is what 200 inserts leave in a 64-entry map on 2 CPUs.
        assert_eq!(
            analyse(&[summary("LruHash", 56, 64)], 2)[0].severity,
            Severity::Critical
        );
        assert!(analyse(&[summary("Hash", 32, 64)], 2).is_empty());
        assert!(analyse(&[summary("LruHash", 32, 64)], 2).is_empty());
        assert!(analyse(&[summary("Hash", 62, 64)], 2)[0]
            .title
            .contains("inserts will fail"));
    }

    #[test]
    fn a_large_lru_is_only_evicting_within_the_free_list_slack() {
        // 2 CPUs: eviction can start 256 entries below max, not earlier.
        let near = summary("LruHash", 900_000, 1_000_000);
        assert_eq!(pressure(&near, 2), Pressure::NearCapacity);
        let f = analyse(&[near], 2);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(
            f[0].title,
            "BPF LRU map m (id 7) is near capacity (900000/1000000, 90%)"
        );
        assert_eq!(
            pressure(&summary("LruHash", 999_743, 1_000_000), 2),
            Pressure::NearCapacity
        );
        assert_eq!(
            analyse(&[summary("LruHash", 999_743, 1_000_000)], 2)[0].title,
            "BPF LRU map m (id 7) is near capacity (999743/1000000, 99%)",
            "whole percent, rounded down"
        );
        assert_eq!(
            pressure(&summary("LruHash", 999_744, 1_000_000), 2),
            Pressure::Evicting
        );
        // 64 CPUs: 8192 nodes can sit in local free lists.
        assert_eq!(
            pressure(&summary("LruHash", 991_808, 1_000_000), 64),
            Pressure::Evicting
        );
        assert_eq!(
            pressure(&summary("LruHash", 700_000, 1_000_000), 2),
            Pressure::Fine
        );
    }

    #[test]
    fn per_cpu_lru_lists_have_a_small_slack() {
        let mut m = summary("LruHash", 999_000, 1_000_000);
        m.flags = BPF_F_NO_COMMON_LRU;
        assert_eq!(pressure(&m, 2), Pressure::NearCapacity);
        m.entries = Some(999_992);
        assert_eq!(pressure(&m, 2), Pressure::Evicting);
        let f = analyse(&[m], 2);
        assert!(f[0].evidence[1]
            .starts_with("per-CPU LRU lists (BPF_F_NO_COMMON_LRU) of 500000 entries"));
        // LRU_PERCPU_HASH without the flag uses the common LRU.
        let common = summary("LruPercpuHash", 999_800, 1_000_000);
        assert_eq!(pressure(&common, 2), Pressure::Evicting);
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
