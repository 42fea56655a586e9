//! The in-kernel part of a network gadget's filter (see
//! bpf/include/plumb_net_filter.h): which checks are on, the ports and
//! prefixes, and the namespace set the programs look events up in.
//!
//! The namespace set holds the namespaces `--netns` names and those of the
//! pods a selection covers. Pods come and go during a run, so the runner
//! asks [`KernelNet::refresh`] for a new set every few seconds and writes
//! the difference into the map ([`sync`]). `-v` prints [`describe`]: what
//! runs in the kernel and what only in user space, for this gadget.

use crate::filter::Filter;
use crate::raw::{netns_bits, RawNetFilter};
use libbpf_rs::{MapCore, MapFlags};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How often the namespaces of a pod selection are looked up again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The network filter as the kernel gets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelNet {
    pub raw: RawNetFilter,
    /// Namespace inode → `netns_bits` (ASKED, OWNER).
    pub netns: BTreeMap<u32, u32>,
}

/// Are the cgroups of the selected workloads in the kernel's cgroup list
/// (so a socket can be checked by its cgroup)?
fn cgroups_known(f: &Filter) -> bool {
    !f.cgroups.is_empty() || !f.kernel_cgroups.is_empty() || f.kernel_newer_than > 0
}

impl KernelNet {
    /// The kernel filter for `f`; `owned`: the namespaces of the pods or
    /// containers it selects (see [`crate::filter::netns::owned_by`]).
    pub fn new(f: &Filter, owned: &BTreeSet<u32>) -> KernelNet {
        let mut raw = RawNetFilter {
            netns: !f.netns.is_empty() as u32,
            sk_cgroup: !f.cgroups.is_empty() as u32,
            ..Default::default()
        };
        if f.needs_workload() {
            raw.owner = if cgroups_known(f) {
                netns_bits::OWNER_CGROUPS
            } else {
                netns_bits::OWNER_ANY_SOCKET
            };
        }
        raw.n_ports = f.ports.len() as u32;
        for (i, p) in f.ports.iter().enumerate() {
            raw.ports[i] = *p;
        }
        // Parsing bounds the prefixes so that their kernel forms fit.
        let cidrs: Vec<_> = f.addrs.iter().flat_map(|c| c.kernel()).collect();
        raw.n_cidrs = cidrs.len().min(raw.cidrs.len()) as u32;
        for (slot, c) in raw.cidrs.iter_mut().zip(cidrs) {
            *slot = c;
        }
        let mut k = KernelNet {
            raw,
            netns: BTreeMap::new(),
        };
        k.set_netns(f, owned);
        k
    }

    fn set_netns(&mut self, f: &Filter, owned: &BTreeSet<u32>) {
        self.netns.clear();
        for t in &f.netns {
            *self.netns.entry(t.inode).or_default() |= netns_bits::ASKED;
        }
        if f.needs_workload() {
            for &i in owned {
                *self.netns.entry(i).or_default() |= netns_bits::OWNER;
            }
        }
    }

    /// Does the namespace set follow the pods (and so need refreshing)?
    pub fn follows_pods(f: &Filter) -> bool {
        f.needs_workload()
    }

    /// A new namespace set from the pods' namespaces now; the old one, if
    /// it changed.
    pub fn refresh(&mut self, f: &Filter, owned: &BTreeSet<u32>) -> Option<BTreeMap<u32, u32>> {
        let old = self.netns.clone();
        self.set_netns(f, owned);
        (old != self.netns).then_some(old)
    }
}

/// Write `new` into a gadget's `plumb_netns` map that holds `old`.
pub fn sync(
    map: &dyn MapCore,
    old: &BTreeMap<u32, u32>,
    new: &BTreeMap<u32, u32>,
) -> Result<(), libbpf_rs::Error> {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            map.update(&k.to_ne_bytes(), &v.to_ne_bytes(), MapFlags::ANY)?;
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(k)) {
        map.delete(&k.to_ne_bytes())?;
    }
    Ok(())
}

/// What a network gadget checks in the kernel, in words (for `-v`).
pub fn describe(f: &Filter) -> String {
    let mut parts = Vec::new();
    if !f.netns.is_empty() {
        let list: Vec<String> = f
            .netns
            .iter()
            .map(|t| format!("{} ({})", t.arg, t.inode))
            .collect();
        parts.push(format!(
            "network namespace of the packet's device or socket is {}",
            list.join(" or ")
        ));
    }
    let cgroups = |f: &Filter| {
        let (list, newer) = if f.cgroups.is_empty() {
            (&f.kernel_cgroups, f.kernel_newer_than)
        } else {
            (&f.cgroups, 0)
        };
        let mut c: Vec<String> = list.iter().map(|t| t.path.clone()).collect();
        if newer > 0 {
            c.push(format!("cgroups created since (id > {newer})"));
        }
        if c.is_empty() {
            "no cgroup that exists now".to_string()
        } else {
            c.join(", ")
        }
    };
    if !f.cgroups.is_empty() {
        parts.push(format!(
            "the socket's cgroup is in {} (packets without a socket are left out)",
            cgroups(f)
        ));
    }
    if f.needs_workload() {
        let sockets = if cgroups_known(f) {
            format!("its socket's cgroup is in {}", cgroups(f))
        } else {
            "it has a socket".to_string()
        };
        parts.push(format!(
            "the packet's or socket's network namespace holds a process of the selected \
             workloads (looked up every {} s), or {sockets}",
            REFRESH.as_secs()
        ));
    }
    if !f.ports.is_empty() {
        let p: Vec<String> = f.ports.iter().map(u16::to_string).collect();
        parts.push(format!("either TCP/UDP port is {}", p.join(" or ")));
    }
    if !f.addrs.is_empty() {
        let a: Vec<String> = f.addrs.iter().map(|c| c.to_string()).collect();
        parts.push(format!("either address is in {}", a.join(" or ")));
    }
    if parts.is_empty() {
        "nothing (every event reaches user space)".to_string()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{FilterArgs, NetnsTarget};

    fn filter(a: FilterArgs) -> Filter {
        Filter::parse(&a, None).unwrap()
    }

    #[test]
    fn ports_prefixes_and_namespaces_reach_the_kernel() {
        let mut f = filter(FilterArgs {
            port: vec!["53".into(), "8080".into()],
            addr: vec!["10.1.0.0/16".into(), "fd00::/8".into()],
            ..Default::default()
        });
        f.netns.push(NetnsTarget {
            arg: "a".into(),
            inode: 4026532000,
        });
        let k = KernelNet::new(&f, &BTreeSet::new());
        assert_eq!(
            (k.raw.n_ports, k.raw.ports[0], k.raw.ports[1]),
            (2, 53, 8080)
        );
        assert_eq!(k.raw.n_cidrs, 3, "the IPv4 prefix twice, the IPv6 once");
        assert_eq!((k.raw.netns, k.raw.owner, k.raw.sk_cgroup), (1, 0, 0));
        assert_eq!(k.netns, BTreeMap::from([(4026532000, netns_bits::ASKED)]));
        let d = describe(&f);
        assert!(d.contains("is a (4026532000)"), "{d}");
        assert!(d.contains("either TCP/UDP port is 53 or 8080"), "{d}");
        assert!(
            d.contains("either address is in 10.1.0.0/16 or fd00::/8"),
            "{d}"
        );
    }

    #[test]
    fn a_pod_selection_follows_its_namespaces_and_sockets() {
        let f = filter(FilterArgs {
            pod: Some("web".into()),
            ..Default::default()
        });
        let mut k = KernelNet::new(&f, &BTreeSet::from([7, 8]));
        assert_eq!(
            k.raw.owner,
            netns_bits::OWNER_ANY_SOCKET,
            "no cgroups known"
        );
        assert_eq!(k.netns.len(), 2);
        assert_eq!(k.refresh(&f, &BTreeSet::from([7, 8])), None);
        let old = k.refresh(&f, &BTreeSet::from([8, 9])).expect("changed");
        assert_eq!(old.keys().copied().collect::<Vec<_>>(), vec![7, 8]);
        assert_eq!(k.netns.keys().copied().collect::<Vec<_>>(), vec![8, 9]);
        assert!(describe(&f).contains("or it has a socket"));
        let none = filter(FilterArgs::default());
        assert_eq!(
            KernelNet::new(&none, &BTreeSet::new()),
            KernelNet::default()
        );
        assert_eq!(describe(&none), "nothing (every event reaches user space)");
    }
}
