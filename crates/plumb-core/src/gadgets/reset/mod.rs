//! `plumb trace reset`: every TCP RST sent or received, with the direction,
//! the flow (in the RST's own direction), the socket's state and, for RSTs
//! sent, the kernel's reason (named from the running kernel's BTF).

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/reset.skel.rs"));
}

use super::net::{self, Flow, NetGadget, RawFlow, Support};
use super::retrans::tcp_state;
use super::{Attached, Body, Column, Decoded, GadgetDesc, Hook};
use crate::error::{DecodeError, Result};
use crate::kernel::{self, Arg};
use crate::loader::StartCtx;
use crate::raw::{self, RawHdr};
use bytemuck::{Pod, Zeroable};
use libbpf_rs::btf::Btf;
use serde::Serialize;
use std::collections::BTreeMap;

/// `struct reset_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RawReset {
    pub hdr: RawHdr,
    pub flow: RawFlow,
    pub reason: u32,
    pub direction: u8,
    pub state: u8,
    pub has_reason: u8,
    pub _pad: u8,
}
const _: () =
    assert!(std::mem::size_of::<skel::types::reset_event>() == std::mem::size_of::<RawReset>());

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Sent,
    Received,
}

/// One RST. `saddr`/`sport` are the end that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reset {
    pub direction: Direction,
    /// TCP state of the local socket, if there is one (none: no socket
    /// matched the packet, e.g. a closed port).
    pub state: Option<String>,
    /// Why the kernel sent it (enum sk_rst_reason), for RSTs sent.
    pub reason: Option<String>,
    #[serde(flatten)]
    pub flow: Flow,
}

pub static DESC: GadgetDesc = GadgetDesc {
    name: "reset",
    summary: "every TCP reset sent or received, with direction, state, reason and pods",
    help: "The tuple is given in the RST's direction (saddr sent it), so the side that sent a \
           reset and the side that received it show the same tuple. `reason` (RSTs sent, Linux \
           6.10 and newer) comes from the running kernel's BTF (enum sk_rst_reason). Before \
           Linux 6.9 the kernel reports only RSTs sent by a socket, not those sent for packets \
           that match no socket (a closed port). pid and comm are not reported (softirq \
           context); attribution is by network namespace and address owner (src_*/dst_*, \
           FROM/TO).",
    params: &[],
    columns: &[
        Column::new("timestamp", "TIME", 15),
        Column::new("direction", "DIR", 8),
        Column::new("netns", "NETNS", 10),
        Column::new("saddr", "SADDR", 15),
        Column::new("sport", "SPORT", 5),
        Column::new("daddr", "DADDR", 15),
        Column::new("dport", "DPORT", 5),
        Column::new("state", "STATE", 11),
        Column::new("reason", "REASON", 13),
        Column::new("src_who", "FROM", 14),
        Column::new("dst_who", "TO", 0),
    ],
    summary_keys: &[
        "direction",
        "saddr",
        "sport",
        "daddr",
        "dport",
        "reason",
        "src_who",
        "dst_who",
    ],
    hooks: &[
        Hook::TpBtf("tcp_send_reset"),
        Hook::TpBtf("tcp_receive_reset"),
        Hook::Kernel(
            "the arguments of tcp_send_reset in the kernel's BTF",
            kernel_support,
        ),
    ],
    start,
};

/// The tcp_send_reset program that fits the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `tcp_send_reset(sk, skb, reason)`: Linux 6.10 and newer.
    Reason,
    /// `tcp_send_reset(sk, skb)`.
    NoReason,
}

/// Which program fits the kernel `btf` describes, and what it cannot show
/// there; `Err` says why reset cannot run.
pub fn support(btf: &Btf<'_>) -> std::result::Result<Support<Variant>, String> {
    let sock = |a: &Arg| *a == Arg::Ptr(Some("sock".into()));
    let skb = |a: &Arg| *a == Arg::Ptr(Some("sk_buff".into()));
    let list = |a: &[Arg]| a.iter().map(Arg::to_string).collect::<Vec<_>>().join(", ");
    match kernel::tracepoint_args(btf, "tcp_receive_reset").as_deref() {
        Some([s, ..]) if sock(s) => {}
        Some(other) => {
            return Err(format!(
                "unknown prototype of tcp_receive_reset ({}): needs tcp_receive_reset(sk)",
                list(other)
            ))
        }
        None => {
            return Err(
                "needs Linux 5.5 with BTF (missing tracepoint btf_trace_tcp_receive_reset)".into(),
            )
        }
    }
    let Some(args) = kernel::tracepoint_args(btf, "tcp_send_reset") else {
        return Err(
            "needs Linux 5.5 with BTF (missing tracepoint btf_trace_tcp_send_reset)".into(),
        );
    };
    let mut notes = Vec::new();
    let variant = match args.as_slice() {
        [k, b, Arg::Enum(_) | Arg::Int { .. }, ..] if sock(k) && skb(b) => Variant::Reason,
        [k, b] if sock(k) && skb(b) => {
            notes.push(
                "reset reasons need Linux 6.10 (missing the reason argument of tcp_send_reset)"
                    .to_string(),
            );
            Variant::NoReason
        }
        other => {
            return Err(format!(
                "unknown prototype of tcp_send_reset ({}): needs tcp_send_reset(sk, skb[, reason])",
                list(other)
            ))
        }
    };
    if !socketless_rsts(btf) {
        notes.push(
            "RSTs sent without a socket (to a closed port) need Linux 6.9 (missing struct \
             trace_event_raw_tcp_send_reset): only RSTs sent by sockets are shown"
                .to_string(),
        );
    }
    Ok(Support { variant, notes })
}

/// Does tcp_send_reset fire for RSTs sent without a socket (to a closed
/// port) on the kernel `btf` describes? Linux 6.9 made it an event of its
/// own, which does; before, it was one of the tcp_event_sk_skb class and
/// fired only for full sockets.
pub fn socketless_rsts(btf: &Btf<'_>) -> bool {
    kernel::has_struct(btf, "trace_event_raw_tcp_send_reset")
}

/// For `plumb gadgets`: `Err` why reset cannot run here, or its limits.
pub fn kernel_support() -> std::result::Result<Vec<String>, String> {
    net::gadget::kernel_support(support)
}

crate::net_skel!(OpenResetSkel, ResetSkel);
crate::assert_kinds_match!(skel::types::plumb_kind);
use skel::{OpenResetSkel, ResetSkel};

struct Decoder {
    reasons: &'static BTreeMap<u32, String>,
}

impl net::NetDecode<ResetSkel<'static>> for Decoder {
    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
        decode_with(data, |r| kernel::name_or_number(self.reasons, r))
    }
}

fn start(ctx: &StartCtx<'_>) -> Result<Box<dyn Attached>> {
    let variant = net::gadget::variant("reset", "tp_btf/tcp_send_reset", support)?;
    let leave_out = match variant {
        Variant::Reason => "reset_send_noreason",
        Variant::NoReason => "reset_send",
    };
    let loaded = net::gadget::load(
        "reset",
        skel::ResetSkelBuilder::default(),
        ctx,
        &[leave_out],
        &[],
        |_| Ok(()),
    )?;
    Ok(NetGadget::boxed(
        loaded,
        Decoder {
            reasons: kernel::vmlinux_enum("sk_rst_reason", "SK_RST_REASON_"),
        },
    ))
}

pub fn decode_with(
    data: &[u8],
    name: impl Fn(u32) -> String,
) -> std::result::Result<Decoded, DecodeError> {
    let r: RawReset = raw::read(data)?;
    if r.hdr.kind != raw::kind::RESET {
        return Err(DecodeError::Kind(r.hdr.kind));
    }
    let direction = match r.direction {
        1 => Direction::Sent,
        2 => Direction::Received,
        v => {
            return Err(DecodeError::Range {
                field: "direction",
                value: v as u64,
            })
        }
    };
    Ok(Decoded {
        hdr: r.hdr,
        body: Body::Reset(Reset {
            direction,
            state: (r.state != 0).then(|| tcp_state(r.state)),
            reason: (r.has_reason != 0).then(|| name(r.reason)),
            flow: Flow::decode(&r.flow)?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_direction_state_and_reason() {
        let mut r = RawReset::zeroed();
        r.hdr.kind = raw::kind::RESET;
        r.direction = 1;
        r.has_reason = 1;
        r.reason = 1;
        let Body::Reset(x) = decode_with(bytemuck::bytes_of(&r), |v| format!("R{v}"))
            .unwrap()
            .body
        else {
            panic!()
        };
        assert_eq!(
            (x.direction, x.state, x.reason.as_deref()),
            (Direction::Sent, None, Some("R1"))
        );
        r.direction = 2;
        r.state = 2;
        r.has_reason = 0;
        let Body::Reset(x) = decode_with(bytemuck::bytes_of(&r), |v| format!("R{v}"))
            .unwrap()
            .body
        else {
            panic!()
        };
        assert_eq!(
            (x.direction, x.state.as_deref(), x.reason),
            (Direction::Received, Some("SYN_SENT"), None)
        );
        r.direction = 3;
        assert!(decode_with(bytemuck::bytes_of(&r), |_| String::new()).is_err());
    }

    #[test]
    fn the_program_variant_and_limits_follow_the_kernels_prototype() {
        use crate::gadgets::net::btf_fixture as fixture;
        let old = support(&fixture!("btf_linux_5_15")).unwrap();
        assert_eq!(old.variant, Variant::NoReason);
        assert_eq!(old.notes.len(), 2, "{:?}", old.notes);
        assert!(old.notes[0].starts_with("reset reasons need Linux 6.10"));
        assert!(old.notes[1]
            .starts_with("RSTs sent without a socket (to a closed port) need Linux 6.9"));
        let six_nine = support(&fixture!("btf_linux_6_9")).unwrap();
        assert_eq!(six_nine.variant, Variant::NoReason);
        assert_eq!(six_nine.notes.len(), 1, "socket-less RSTs are seen on 6.9");
        let now = support(&fixture!("btf_linux_6_18")).unwrap();
        assert_eq!((now.variant, now.notes.len()), (Variant::Reason, 0));
        let e = support(&fixture!("reasons_fixture")).unwrap_err();
        assert_eq!(
            e,
            "needs Linux 5.5 with BTF (missing tracepoint btf_trace_tcp_receive_reset)"
        );
    }
}

#[cfg(test)]
mod root_tests;
