//! What the network gadgets (drop, retrans, reset) share: the Rust mirror of
//! `struct plumb_flow` (bpf/include/plumb_net.h) and its attribution to the
//! namespace and pod on each side of the flow.

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
    pub container_id: Option<String>,
    #[serde(skip)]
    pub workload: Option<Arc<Workload>>,
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
    #[serde(rename = "src_netns")]
    pub src_netns: Option<u32>,
    pub src_pod: Option<String>,
    pub src_namespace: Option<String>,
    pub src_container_id: Option<String>,
    pub dst_netns: Option<u32>,
    pub dst_pod: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_container_id: Option<String>,
    #[serde(skip)]
    pub sides: [Side; 2],
}

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
        let icmp = matches!(r.proto, 1 | 58);
        let ports = r.has_ports != 0 && !icmp;
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
            icmp_type: (icmp && r.has_ports != 0).then_some(r.sport as u8),
            icmp_code: (icmp && r.has_ports != 0).then_some(r.dport as u8),
            src_netns: None,
            src_pod: None,
            src_namespace: None,
            src_container_id: None,
            dst_netns: None,
            dst_pod: None,
            dst_namespace: None,
            dst_container_id: None,
            sides: Default::default(),
        })
    }

    /// Name the namespace and the owner of each side.
    pub fn enrich(&mut self, e: &mut Enricher) {
        if let Some(info) = e.netns(self.netns) {
            self.netns_name = info.name.clone();
        }
        for (i, ip) in [self.saddr, self.daddr].into_iter().enumerate() {
            let Some(info) = ip.and_then(|ip| e.netns_of_ip(ip)) else {
                continue;
            };
            let w = info.workload.clone();
            self.sides[i] = Side {
                netns: Some(info.inode),
                netns_name: info.name.clone(),
                pod: w.pod.clone(),
                namespace: w.namespace.clone(),
                container_id: w.container_id.clone(),
                workload: (!w.is_empty()).then_some(w),
            };
        }
        let [s, d] = &self.sides;
        (
            self.src_netns,
            self.src_pod,
            self.src_namespace,
            self.src_container_id,
        ) = (
            s.netns,
            s.pod.clone(),
            s.namespace.clone(),
            s.container_id.clone(),
        );
        (
            self.dst_netns,
            self.dst_pod,
            self.dst_namespace,
            self.dst_container_id,
        ) = (
            d.netns,
            d.pod.clone(),
            d.namespace.clone(),
            d.container_id.clone(),
        );
    }

    /// Owners of both sides, for pod/container filters.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.sides.iter().filter_map(|s| s.workload.as_deref())
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
