//! `plumb trace retrans`: every TCP retransmission with its flow, the
//! socket's state, the number of segments and the pod on each side.

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/retrans.skel.rs"));
}

use super::net::{self, Flow, NetGadget, RawFlow, Support};
use super::{Attached, Body, Column, Decoded, GadgetDesc, Hook};
use crate::error::{DecodeError, Result};
use crate::kernel::{self, Arg};
use crate::loader::StartCtx;
use crate::raw::{self, RawHdr};
use bytemuck::{Pod, Zeroable};
use libbpf_rs::btf::Btf;
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
           creator, and src_*/dst_* (FROM/TO) name the owner of each address.",
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
        Column::new("src_who", "FROM", 14),
        Column::new("dst_who", "TO", 0),
    ],
    summary_keys: &["saddr", "sport", "daddr", "dport", "src_who", "dst_who"],
    hooks: &[
        Hook::TpBtf("tcp_retransmit_skb"),
        Hook::Kernel(
            "the arguments of tcp_retransmit_skb in the kernel's BTF",
            kernel_support,
        ),
    ],
    start,
};

/// The tcp_retransmit_skb program that fits the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `tcp_retransmit_skb(sk, skb, result)`: report when `result` is this
    /// value (0 for an `int err`; the success member for an enum).
    Result(i64),
    /// `tcp_retransmit_skb(sk, skb)`: fires for sent segments only.
    NoResult,
}

/// Which program fits the kernel `btf` describes; `Err` says why none does.
pub fn support(btf: &Btf<'_>) -> std::result::Result<Support<Variant>, String> {
    let Some(args) = kernel::tracepoint_args(btf, "tcp_retransmit_skb") else {
        return Err(
            "needs Linux 5.5 with BTF (missing tracepoint btf_trace_tcp_retransmit_skb)".into(),
        );
    };
    let sock = |a: &Arg| *a == Arg::Ptr(Some("sock".into()));
    let skb = |a: &Arg| *a == Arg::Ptr(Some("sk_buff".into()));
    let list = |a: &[Arg]| a.iter().map(Arg::to_string).collect::<Vec<_>>().join(", ");
    let variant = match args.as_slice() {
        [k, b] if sock(k) && skb(b) => Variant::NoResult,
        [k, b, Arg::Int { bits: 32, .. }] if sock(k) && skb(b) => Variant::Result(0),
        [k, b, Arg::Enum(e)] if sock(k) && skb(b) => {
            // A result enum: success is the member that says so.
            let ok = kernel::enum_members(btf, e)
                .unwrap_or_default()
                .into_iter()
                .find(|(n, _)| n.ends_with("_SUCCESS"))
                .map(|(_, v)| v as i64);
            match ok {
                Some(v) => Variant::Result(v),
                None => {
                    return Err(format!(
                        "unknown result enum {e} of tcp_retransmit_skb (no *_SUCCESS member)"
                    ))
                }
            }
        }
        other => {
            return Err(format!(
                "unknown prototype of tcp_retransmit_skb ({}): needs tcp_retransmit_skb(sk, skb[, err])",
                list(other)
            ))
        }
    };
    Ok(Support {
        variant,
        notes: Vec::new(),
    })
}

/// For `plumb gadgets`: `Err` why retrans cannot run here, or its limits.
pub fn kernel_support() -> std::result::Result<Vec<String>, String> {
    net::gadget::kernel_support(support)
}

crate::net_skel!(OpenRetransSkel, RetransSkel);
crate::assert_kinds_match!(skel::types::plumb_kind);
use skel::{OpenRetransSkel, RetransSkel};

struct Decoder;

impl net::NetDecode<RetransSkel<'static>> for Decoder {
    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
        decode(data)
    }
}

/// The test-only override of the kernel probe: a root test forces the
/// result-enum variant, which no kernel plumb can obtain picks, with this
/// gadget parameter (the success value). Compiled into tests only.
#[cfg(test)]
pub(crate) const FORCE_RESULT: &str = "test-force-result";

#[cfg(test)]
fn forced(ctx: &StartCtx<'_>) -> Option<Variant> {
    let v = ctx.params.0.get(FORCE_RESULT)?;
    Some(Variant::Result(v.parse().expect("a success value")))
}

#[cfg(not(test))]
fn forced(_ctx: &StartCtx<'_>) -> Option<Variant> {
    None
}

fn start(ctx: &StartCtx<'_>) -> Result<Box<dyn Attached>> {
    let variant = match forced(ctx) {
        Some(v) => v,
        None => net::gadget::variant("retrans", "tp_btf/tcp_retransmit_skb", support)?,
    };
    let leave_out = match variant {
        Variant::Result(_) => "retrans_skb_noerr",
        Variant::NoResult => "retrans_skb",
    };
    // SYN-ACK retransmits: optional (a hook some kernels lack).
    let loaded = net::gadget::load(
        "retrans",
        skel::RetransSkelBuilder::default(),
        ctx,
        &[leave_out],
        &["retrans_synack"],
        |open| {
            if let Variant::Result(ok) = variant {
                crate::rodata!(open, "retrans")?.retrans_ok = ok;
            }
            Ok(())
        },
    )?;
    Ok(NetGadget::boxed(loaded, Decoder))
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

    #[test]
    fn the_program_variant_follows_the_kernels_prototype() {
        use crate::gadgets::net::btf_fixture as fixture;
        for old in [fixture!("btf_linux_5_15"), fixture!("btf_linux_6_6")] {
            assert_eq!(support(&old).unwrap().variant, Variant::NoResult);
        }
        assert_eq!(
            support(&fixture!("btf_linux_6_18")).unwrap().variant,
            Variant::Result(0)
        );
        assert_eq!(
            support(&fixture!("btf_retrans_result_enum"))
                .unwrap()
                .variant,
            Variant::Result(1),
            "success read from the enum"
        );
        assert!(support(&fixture!("btf_linux_6_9"))
            .unwrap_err()
            .contains("missing tracepoint btf_trace_tcp_retransmit_skb"));
    }
}

#[cfg(test)]
mod root_tests;
