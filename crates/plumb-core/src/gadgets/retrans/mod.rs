//! `plumb trace retrans`: every TCP retransmission with its flow, the
//! socket's state, the number of segments and the pod on each side.

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/retrans.skel.rs"));
}

use super::net::{Flow, RawFlow};
use super::{Attached, Body, Column, Decoded, GadgetDesc, Hook};
use crate::error::{DecodeError, Result};
use crate::loader::{self, Loaded, StartCtx};
use crate::raw::{self, RawHdr};
use bytemuck::{Pod, Zeroable};
use serde::Serialize;

/// `struct retrans_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RawRetrans {
    pub hdr: RawHdr,
    pub flow: RawFlow,
    pub segs: u32,
    pub state: u8,
    pub synack: u8,
    pub tcp_flags: u16,
}
const _: () =
    assert!(std::mem::size_of::<skel::types::retrans_event>() == std::mem::size_of::<RawRetrans>());

/// TCP states. These values are part of the kernel's user-visible ABI
/// (/proc/net/tcp, sock_diag) and have never been renumbered.
pub fn tcp_state(s: u8) -> String {
    const NAMES: [&str; 13] = [
        "",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    NAMES
        .get(s as usize)
        .filter(|n| !n.is_empty())
        .map(|n| n.to_string())
        .unwrap_or_else(|| s.to_string())
}

/// TCP flags as `SYN|ACK`.
pub fn tcp_flags(f: u16) -> String {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    let v: Vec<&str> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| f & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join("|")
}

/// One retransmission. `saddr`/`sport` are the retransmitting end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retrans {
    pub state: String,
    pub segs: u32,
    pub tcp_flags: String,
    pub synack: bool,
    #[serde(flatten)]
    pub flow: Flow,
}

pub static DESC: GadgetDesc = GadgetDesc {
    name: "retrans",
    summary: "every TCP retransmission, with the flow, the TCP state and the pods",
    help: "The source is the end that retransmits. `segs` is the number of segments sent again, \
           which is what the kernel's TcpRetransSegs counter adds. pid and comm are not reported: \
           retransmissions run from timers and softirqs; the cgroup/pod is that of the socket's \
           creator, and src_*/dst_* name the owner of each address.",
    params: &[],
    columns: &[
        Column::new("timestamp", "TIME", 15),
        Column::new("netns", "NETNS", 10),
        Column::new("saddr", "SADDR", 15),
        Column::new("sport", "SPORT", 5),
        Column::new("daddr", "DADDR", 15),
        Column::new("dport", "DPORT", 5),
        Column::new("state", "STATE", 11),
        Column::new("tcp_flags", "FLAGS", 9),
        Column::new("segs", "SEGS", 4),
        Column::new("pod", "POD", 0),
    ],
    summary_keys: &["saddr", "daddr", "dport", "src_pod", "dst_pod"],
    hooks: &[Hook::TpBtf("tcp_retransmit_skb")],
    start,
};

struct Running {
    loaded: Loaded<skel::RetransSkel<'static>>,
}

fn start(ctx: &StartCtx<'_>) -> Result<Box<dyn Attached>> {
    let mut loaded = loader::load("retrans", skel::RetransSkelBuilder::default(), |open| {
        crate::configure_common!(open, ctx, "retrans");
        Ok(())
    })?;
    loaded.attach("retrans", &["retrans_synack"])?;
    Ok(Box::new(Running { loaded }))
}

pub fn decode(data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
    let r: RawRetrans = raw::read(data)?;
    if r.hdr.kind != raw::kind::RETRANS {
        return Err(DecodeError::Kind(r.hdr.kind));
    }
    Ok(Decoded {
        hdr: r.hdr,
        body: Body::Retrans(Retrans {
            state: tcp_state(r.state),
            segs: r.segs,
            tcp_flags: tcp_flags(r.tcp_flags),
            synack: r.synack != 0,
            flow: Flow::decode(&r.flow)?,
        }),
    })
}

impl Attached for Running {
    crate::impl_attached_common!();

    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
        decode(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_states_and_flags() {
        assert_eq!(tcp_state(2), "SYN_SENT");
        assert_eq!(tcp_state(1), "ESTABLISHED");
        assert_eq!(tcp_state(99), "99");
        assert_eq!(tcp_flags(0x12), "SYN|ACK");
        assert_eq!(tcp_flags(0x02), "SYN");
    }

    #[test]
    fn decodes_a_syn_retransmit() {
        let mut r = RawRetrans::zeroed();
        r.hdr.kind = raw::kind::RETRANS;
        r.flow.family = libc::AF_INET as u16;
        r.flow.proto = 6;
        r.flow.has_ports = 1;
        r.flow.sport = 40000;
        r.flow.dport = 8080;
        r.state = 2;
        r.segs = 1;
        r.tcp_flags = 2;
        let Body::Retrans(x) = decode(bytemuck::bytes_of(&r)).unwrap().body else {
            panic!()
        };
        assert_eq!(
            (x.state.as_str(), x.segs, x.flow.dport),
            ("SYN_SENT", 1, Some(8080))
        );
        assert!(decode(&bytemuck::bytes_of(&r)[..50]).is_err());
    }
}

#[cfg(test)]
mod root_tests;
