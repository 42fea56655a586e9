//! `trace drop --summary` at saturation: drops counted in the kernel, per
//! CPU, under a key holding exactly what the summary groups by (reason,
//! the packet's namespace, and the destination address that names
//! `dst_who`), instead of one ring-buffer record per packet.
//!
//! The map keeps totals for the whole run and is never cleared (clearing
//! would race with the programs' increments); each read hands on what grew
//! since the last one. It is bounded (`DROP_COUNT_KEYS`): a drop whose key
//! finds it full is counted in `drop_count_overflow` and reported as lost.

use super::{flag, RawDrop};
use crate::raw;
use bytemuck::{Pod, Zeroable};
use libbpf_rs::{MapCore, MapFlags};
use std::collections::HashMap;

/// `struct drop_count_key` (drop.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct RawCountKey {
    pub reason: u32,
    pub netns: u32,
    pub daddr: [u32; 4],
    pub family: u16,
    pub flags: u16,
}

/// Keys a summary may group by and still be counted in the kernel: what
/// the count key holds, and what user space derives from it.
const COUNTABLE: &[&str] = &[
    "type",
    "node",
    "reason",
    "netns",
    "netns_name",
    "family",
    "daddr",
    "dst_netns",
    "dst_netns_name",
    "dst_pod",
    "dst_namespace",
    "dst_pod_uid",
    "dst_container_id",
    "dst_who",
];

/// Can a summary by `keys` be counted in the kernel?
pub fn can_count(keys: &[String]) -> bool {
    !keys.is_empty() && keys.iter().all(|k| COUNTABLE.contains(&k.as_str()))
}

/// The totals read so far, per key.
#[derive(Debug, Default)]
pub struct Totals {
    seen: HashMap<RawCountKey, u64>,
}

impl Totals {
    /// What grew since the last read, as drop records (without stack or
    /// location) and how many times each happened.
    pub fn read(&mut self, map: &dyn MapCore) -> Vec<(RawDrop, u64)> {
        let mut out = Vec::new();
        for k in map.keys() {
            let Ok(key) = raw::read::<RawCountKey>(&k) else {
                continue;
            };
            let total: u64 = match map.lookup_percpu(&k, MapFlags::ANY) {
                Ok(Some(per_cpu)) => per_cpu
                    .iter()
                    .filter_map(|v| raw::read::<u64>(v).ok())
                    .sum(),
                _ => continue,
            };
            let before = self.seen.insert(key, total).unwrap_or(0);
            if total > before {
                out.push((record(&key), total - before));
            }
        }
        out
    }
}

/// The drop record a count key stands for.
pub fn record(k: &RawCountKey) -> RawDrop {
    let mut r = RawDrop::zeroed();
    r.hdr.kind = raw::kind::DROP;
    r.hdr.flags = raw::HDR_NO_TASK | (k.flags & flag::REASON);
    r.reason = k.reason;
    r.flow.netns = k.netns;
    r.flow.family = k.family;
    r.flow.daddr = k.daddr;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_summaries_the_key_can_answer_are_counted_in_the_kernel() {
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(can_count(&keys(&["reason", "netns", "dst_who"])));
        assert!(can_count(&keys(&["reason"])));
        assert!(!can_count(&keys(&["reason", "sport"])));
        assert!(!can_count(&keys(&["src_who"])));
        assert!(!can_count(&[]));
    }

    #[test]
    fn a_key_becomes_a_drop_of_that_reason_namespace_and_destination() {
        let k = RawCountKey {
            reason: 6,
            netns: 4026531840,
            daddr: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            family: libc::AF_INET as u16,
            flags: flag::REASON,
        };
        let d = super::super::decode_with(
            bytemuck::bytes_of(&record(&k)),
            |r| format!("R{r}"),
            |_| String::new(),
        )
        .unwrap();
        let crate::gadgets::Body::Drop(x) = d.body else {
            panic!()
        };
        assert_eq!(x.reason, "R6");
        assert_eq!(x.flow.netns, 4026531840);
        assert_eq!(x.flow.daddr, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(x.flow.sport, None);
    }
}
