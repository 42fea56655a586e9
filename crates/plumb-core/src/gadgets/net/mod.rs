//! What the network gadgets (drop, retrans, reset) share: the Rust mirror of
//! `struct plumb_flow` (bpf/include/plumb_net.h), its attribution to the
//! namespace and pod on each side of the flow, and the count of runs the
//! kernel skipped (a tp_btf program is not re-entered on a CPU where it, or
//! another tracing program, is already running: those events are lost).
//!
//! Loading, program choice and the attached gadget itself are written once
//! in [`gadget`]; the in-kernel filter's configuration in [`kernel`].

pub mod gadget;
pub mod kernel;

pub use gadget::{NetDecode, NetGadget, NetOpen, NetSkel};

use crate::enrich::Enricher;
use crate::error::DecodeError;
use crate::event::Workload;
use bytemuck::{Pod, Zeroable};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;

/// `struct plumb_flow`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RawFlow {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub proto: u8,
    pub has_ports: u8,
    pub netns: u32,
    pub ifindex: u32,
    pub sk_cgroup: u64,
    pub ifname: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<RawFlow>() == 72);

/// One side of a flow: its namespace and owner, where known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Side {
    pub netns: Option<u32>,
    pub netns_name: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    #[serde(skip)]
    pub workload: Option<Arc<Workload>>,
}

impl Side {
    /// The side as briefly as it can be named, for tables: `namespace/pod`,
    /// else `pod:` and the start of the pod UID, else `ctr:` and the start
    /// of the container id, else `netns:` and the namespace's name or inode.
    pub fn who(&self) -> Option<String> {
        let short = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(p)) => return Some(format!("{ns}/{p}")),
            (None, Some(p)) => return Some(p.clone()),
            _ => {}
        }
        if let Some(u) = &self.pod_uid {
            return Some(format!("pod:{}", short(u, 8)));
        }
        if let Some(c) = &self.container_id {
            return Some(format!("ctr:{}", short(c, 12)));
        }
        match (&self.netns_name, self.netns) {
            (Some(n), _) => Some(format!("netns:{n}")),
            (None, Some(i)) => Some(format!("netns:{i}")),
            _ => None,
        }
    }
}

/// A packet's or socket's flow as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Network namespace the event happened in (inode), 0 if unknown.
    pub netns: u32,
    /// Its name under /run/netns, if it has one.
    pub netns_name: Option<String>,
    pub ifname: Option<String>,
    pub ifindex: Option<u32>,
    pub proto: String,
    pub family: Option<&'static str>,
    pub saddr: Option<IpAddr>,
    pub sport: Option<u16>,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// ICMP `type/code` in one cell, for tables (ICMP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<String>,
    pub src_netns: Option<u32>,
    pub src_netns_name: Option<String>,
    pub src_pod: Option<String>,
    pub src_namespace: Option<String>,
    pub src_pod_uid: Option<String>,
    pub src_container_id: Option<String>,
    /// The source side as briefly as it can be named ([`Side::who`]).
    pub src_who: Option<String>,
    pub dst_netns: Option<u32>,
    pub dst_netns_name: Option<String>,
    pub dst_pod: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_pod_uid: Option<String>,
    pub dst_container_id: Option<String>,
    pub dst_who: Option<String>,
    #[serde(skip)]
    pub sides: [Side; 2],
}

/// Which variant of a gadget's programs fits the running kernel (decided
/// from its BTF), and what the gadget cannot show there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support<V> {
    pub variant: V,
    /// Limits on this kernel, one sentence each ("needs Linux X ...").
    pub notes: Vec<String>,
}

/// The error for a gadget that cannot run on this kernel: why, as
/// `plumb gadgets` would say it.
pub fn unsupported(gadget: &'static str, hook: &str, why: String) -> crate::Error {
    crate::Error::Unsupported {
        gadget,
        why: format!("{hook}: {why}"),
    }
}

pub use crate::loader::recursion_misses;

pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

impl Flow {
    pub fn decode(r: &RawFlow) -> Result<Flow, DecodeError> {
        let (family, saddr, daddr) = match r.family as i32 {
            0 => (None, None, None),
            libc::AF_INET | libc::AF_INET6 => (
                Some(if r.family as i32 == libc::AF_INET {
                    "ipv4"
                } else {
                    "ipv6"
                }),
                Some(super::tcp::addr(r.family, r.saddr)?),
                Some(super::tcp::addr(r.family, r.daddr)?),
            ),
            f => {
                return Err(DecodeError::Range {
                    field: "family",
                    value: f as u64,
                })
            }
        };
        let icmp = family.is_some() && matches!(r.proto, 1 | 58);
        let ports = r.has_ports != 0 && !icmp;
        let icmp_tc = (icmp && r.has_ports != 0).then_some((r.sport as u8, r.dport as u8));
        let ifname = crate::raw::cstr(&r.ifname);
        Ok(Flow {
            netns: r.netns,
            netns_name: None,
            ifname: (!ifname.is_empty()).then_some(ifname),
            ifindex: (r.ifindex != 0).then_some(r.ifindex),
            proto: if family.is_none() {
                "other".into()
            } else {
                proto_name(r.proto)
            },
            family,
            saddr,
            sport: ports.then_some(r.sport),
            daddr,
            dport: ports.then_some(r.dport),
            icmp_type: icmp_tc.map(|t| t.0),
            icmp_code: icmp_tc.map(|t| t.1),
            icmp: icmp_tc.map(|(t, c)| format!("{t}/{c}")),
            src_netns: None,
            src_netns_name: None,
            src_pod: None,
            src_namespace: None,
            src_pod_uid: None,
            src_container_id: None,
            src_who: None,
            dst_netns: None,
            dst_netns_name: None,
            dst_pod: None,
            dst_namespace: None,
            dst_pod_uid: None,
            dst_container_id: None,
            dst_who: None,
            sides: Default::default(),
        })
    }

    /// Name the namespace and the owner of each side. An IPv4-mapped IPv6
    /// address is attributed as the IPv4 address it carries.
    pub fn enrich(&mut self, e: &mut Enricher) {
        if let Some(info) = e.netns(self.netns) {
            self.netns_name = info.name.clone();
        }
        for (i, ip) in [self.saddr, self.daddr].into_iter().enumerate() {
            let Some(info) = ip.and_then(|ip| e.netns_of_ip(ip.to_canonical())) else {
                continue;
            };
            let w = info.workload.clone();
            self.sides[i] = Side {
                netns: Some(info.inode),
                netns_name: info.name.clone(),
                pod: w.pod.clone(),
                namespace: w.namespace.clone(),
                pod_uid: w.pod_uid.clone(),
                container_id: w.container_id.clone(),
                workload: (!w.is_empty()).then_some(w),
            };
        }
        self.copy_sides();
    }

    /// Copy the sides into the flat `src_*`/`dst_*` keys.
    pub fn copy_sides(&mut self) {
        let [s, d] = &self.sides;
        (
            self.src_netns,
            self.src_netns_name,
            self.src_pod,
            self.src_namespace,
            self.src_pod_uid,
            self.src_container_id,
            self.src_who,
        ) = (
            s.netns,
            s.netns_name.clone(),
            s.pod.clone(),
            s.namespace.clone(),
            s.pod_uid.clone(),
            s.container_id.clone(),
            s.who(),
        );
        (
            self.dst_netns,
            self.dst_netns_name,
            self.dst_pod,
            self.dst_namespace,
            self.dst_pod_uid,
            self.dst_container_id,
            self.dst_who,
        ) = (
            d.netns,
            d.netns_name.clone(),
            d.pod.clone(),
            d.namespace.clone(),
            d.pod_uid.clone(),
            d.container_id.clone(),
            d.who(),
        );
    }

    /// Owners of both sides, for pod/container filters.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.sides.iter().filter_map(|s| s.workload.as_deref())
    }
}

/// A BTF fixture: the object built from `drop/testdata/NAME.bpf.c` by
/// build.rs (the kernels the variant decisions are tested against).
#[cfg(test)]
macro_rules! btf_fixture {
    ($name:literal) => {{
        static OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".bpf.o"));
        libbpf_rs::btf::Btf::from_raw($name, OBJ)
            .expect("parse fixture")
            .expect("fixture has BTF")
    }};
}
#[cfg(test)]
pub(crate) use btf_fixture;

/// Checks the lab tests of the network gadgets share.
#[cfg(test)]
pub(crate) mod lab_checks {
    use super::Flow;
    use crate::runner::RunStats;
    use plumb_netlab::Pod;
    use std::net::{Ipv4Addr, UdpSocket};

    /// Send `n` UDP datagrams from `from` to `to:port`, from one socket;
    /// returns its local port.
    pub fn udp_burst(from: &Pod, to: Ipv4Addr, port: u16, n: usize) -> u16 {
        from.ns
            .run(move || {
                let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                for _ in 0..n {
                    s.send_to(b"plumb-filter-test", (to, port)).expect("send");
                }
                s.local_addr().expect("local address").port()
            })
            .expect("run in the sending pod")
    }

    /// Events the gadget's in-kernel filter kept out, from its own counter.
    pub fn left_out_in_kernel(stats: &RunStats) -> u64 {
        stats
            .counters
            .iter()
            .find(|(what, _)| what == "left out by the in-kernel filter")
            .map(|(_, n)| *n)
            .expect("the gadget counts what its kernel filter leaves out")
    }

    /// Every record the kernel wrote was read: delivered or filtered in
    /// user space. With `delivered` exact, nothing else was reserved.
    pub fn assert_reserved_only(stats: &RunStats) {
        assert_eq!(
            stats.kernel_written,
            Some(stats.seen + stats.filtered + stats.malformed),
            "ring-buffer records written == delivered + filtered in user space"
        );
        assert_eq!(stats.lost, 0);
    }

    /// Side `src` (else the destination) of `flow` is exactly `pod`: its
    /// namespace and the namespace's name, and, for a k8s lab pod, the pod
    /// UID and container id of the process holding it.
    pub fn assert_side(flow: &Flow, src: bool, pod: &Pod) {
        let (netns, name, uid, cid, who) = if src {
            (
                flow.src_netns,
                &flow.src_netns_name,
                &flow.src_pod_uid,
                &flow.src_container_id,
                &flow.src_who,
            )
        } else {
            (
                flow.dst_netns,
                &flow.dst_netns_name,
                &flow.dst_pod_uid,
                &flow.dst_container_id,
                &flow.dst_who,
            )
        };
        let side = if src { "source" } else { "destination" };
        assert_eq!(netns, Some(pod.ns.inode), "{side} netns");
        assert_eq!(
            name.as_deref(),
            Some(pod.ns.name.as_str()),
            "{side} netns_name"
        );
        let k = pod.k8s.as_ref().expect("a k8s lab pod");
        assert_eq!(uid.as_deref(), Some(k.pod_uid.as_str()), "{side} pod_uid");
        assert_eq!(
            cid.as_deref(),
            Some(k.container_id.as_str()),
            "{side} container_id"
        );
        assert_eq!(
            who.clone(),
            Some(format!("pod:{}", &k.pod_uid[..8])),
            "{side} who"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_shows_type_and_code_not_ports() {
        let mut r = RawFlow::zeroed();
        r.family = libc::AF_INET as u16;
        r.proto = 1;
        r.has_ports = 1;
        r.sport = 8;
        r.dport = 0;
        r.saddr[0] = u32::from_ne_bytes([10, 0, 0, 1]);
        let f = Flow::decode(&r).unwrap();
        assert_eq!(
            (f.proto.as_str(), f.icmp_type, f.icmp_code, f.sport),
            ("icmp", Some(8), Some(0), None)
        );
        assert_eq!(f.saddr, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn non_ip_packets_have_no_addresses() {
        let f = Flow::decode(&RawFlow::zeroed()).unwrap();
        assert_eq!((f.proto.as_str(), f.saddr, f.family), ("other", None, None));
        let mut r = RawFlow::zeroed();
        r.family = 3;
        assert!(Flow::decode(&r).is_err());
    }
}
