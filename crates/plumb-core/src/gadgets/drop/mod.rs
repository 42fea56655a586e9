//! `plumb trace drop`: every packet the kernel frees as dropped, with the
//! kernel's drop reason (named from the running kernel's BTF), the network
//! namespace and interface, the flow, the owner of each side, and with
//! `--stack` the kernel stack where it was dropped.

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/drop.skel.rs"));
}

mod counts;
mod reasons;

pub use reasons::{reason_filter, ReasonFilter, ReasonNames, BITMAP_REASONS, REASON_WORDS};

use super::net::{self, Flow, NetGadget, RawFlow, Support};
use super::{Attached, Body, Column, Decoded, GadgetDesc, Hook, ParamSpec};
use crate::error::{DecodeError, Result};
use crate::event::Event;
use crate::kernel::{self, Arg, KernelSymbols};
use crate::loader::{self, StartCtx};
use crate::raw::{self, RawHdr};
use bytemuck::{Pod, Zeroable};
use libbpf_rs::btf::Btf;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

pub const MAX_STACK: usize = 32;

/// `plumb_hdr.flags` of a drop record (drop.h), above the header's own
/// bits ([`raw::HDR_NO_TASK`]), which a drop record keeps.
pub mod flag {
    pub const REASON: u16 = 8;
    pub const STACK: u16 = 16;
    pub const NO_STACK: u16 = 32;
}
const _: () = assert!(flag::REASON & raw::HDR_NO_TASK == 0);

/// Frames of the tracing machinery itself (the BPF program, the
/// tracepoint's iterator), left off the front of a stack.
const TRACING_FRAMES: &[&str] = &["bpf_prog_", "bpf_trace_run", "__traceiter_", "__bpf_trace_"];

/// What `reason` says on kernels whose tracepoint gives none (before 5.17).
pub const UNKNOWN_REASON: &str = "UNKNOWN";

/// `struct drop_event` without its variable-length stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RawDrop {
    pub hdr: RawHdr,
    pub flow: RawFlow,
    pub location: u64,
    pub reason: u32,
    pub stack_len: u32,
}
const _: () = assert!(
    std::mem::size_of::<skel::types::drop_event>()
        == std::mem::size_of::<RawDrop>() + 8 * MAX_STACK
);
const _: () = assert!(
    std::mem::size_of::<skel::types::drop_count_key>()
        == std::mem::size_of::<counts::RawCountKey>()
);
const _: () =
    assert!(std::mem::size_of::<skel::types::plumb_flow>() == std::mem::size_of::<RawFlow>());

/// Reasons left out unless `--all-reasons` or `--reason` asks for them:
/// ordinary frees, not losses.
pub const NORMAL_REASONS: &[&str] = &["NOT_SPECIFIED", "CONSUMED"];

/// One dropped packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drop {
    /// The kernel's reason, named from its BTF; `UNKNOWN` on kernels whose
    /// tracepoint gives none.
    pub reason: String,
    /// The kernel function that freed the packet.
    pub location: String,
    #[serde(flatten)]
    pub flow: Flow,
    /// With `--stack`: the kernel stack, innermost first; empty when the
    /// kernel could not record it (counted as "stack not recorded").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<Vec<String>>,
}

pub static DESC: GadgetDesc = GadgetDesc {
    name: "drop",
    summary: "every packet the kernel drops, with the kernel's drop reason, flow and pods",
    help: "Reason names come from the running kernel's BTF (enum skb_drop_reason; subsystem \
           reasons from the subsystem's enum, or SUBSYS:n). By default the reasons \
           NOT_SPECIFIED and CONSUMED are left out: the kernel uses them for ordinary frees that \
           are not losses; --all-reasons shows them, and --reason shows exactly the reasons it \
           names (the two cannot be combined). Kernels before 5.17 give no reason: it shows as \
           UNKNOWN. pid and comm are not reported: drops happen in softirq context where the \
           current task is unrelated. Attribution uses the packet's network namespace (netns, \
           the device's) and the namespace that owns each address (src_*/dst_*, FROM/TO); the \
           header's cgroup/pod is that of the socket's creator when the packet belongs to a \
           local socket. ICMP packets show their type/code (ICMP column, icmp_type/icmp_code).",
    params: &[
        ParamSpec {
            name: "reason",
            help: "Only these drop reasons (comma-separated names, e.g. NETFILTER_DROP,NO_SOCKET)",
            value: Some("NAME,..."),
        },
        ParamSpec {
            name: "all-reasons",
            help: "Also show NOT_SPECIFIED and CONSUMED, which are mostly ordinary frees",
            value: None,
        },
        ParamSpec {
            name: "stack",
            help: "Add the kernel stack where the packet was dropped",
            value: None,
        },
    ],
    columns: &[
        Column::new("timestamp", "TIME", 15),
        Column::new("netns", "NETNS", 10),
        Column::new("ifname", "IF", 8),
        Column::new("proto", "PROTO", 5),
        Column::new("saddr", "SADDR", 15),
        Column::new("sport", "SPORT", 5),
        Column::new("daddr", "DADDR", 15),
        Column::new("dport", "DPORT", 5),
        Column::new("icmp", "ICMP", 4),
        Column::new("reason", "REASON", 15),
        Column::new("src_who", "FROM", 14),
        Column::new("dst_who", "TO", 14),
        Column::new("location", "LOCATION", 0),
    ],
    summary_keys: &["reason", "netns", "dst_who"],
    hooks: &[
        Hook::TpBtf("kfree_skb"),
        Hook::Kernel(
            "the arguments of kfree_skb in the kernel's BTF",
            kernel_support,
        ),
    ],
    start,
};

/// The kfree_skb program that fits the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `kfree_skb(skb, location, reason, ...)`: Linux 5.17 and newer.
    Reason,
    /// `kfree_skb(skb, location)`.
    NoReason,
}

/// Which program fits the kernel `btf` describes; `Err` says why none does.
pub fn support(btf: &Btf<'_>) -> std::result::Result<Support<Variant>, String> {
    let Some(args) = kernel::tracepoint_args(btf, "kfree_skb") else {
        return Err("needs Linux 5.5 with BTF (missing tracepoint btf_trace_kfree_skb)".into());
    };
    let skb = |a: &Arg| *a == Arg::Ptr(Some("sk_buff".into()));
    match args.as_slice() {
        [s, Arg::Ptr(_), Arg::Enum(e), ..] if skb(s) && e == "skb_drop_reason" => Ok(Support {
            variant: Variant::Reason,
            notes: Vec::new(),
        }),
        [s, Arg::Ptr(_)] if skb(s) => Ok(Support {
            variant: Variant::NoReason,
            notes: vec![
                "drop reasons need Linux 5.17 (missing the reason argument of kfree_skb): \
                 reason shows UNKNOWN and --reason is refused"
                    .into(),
            ],
        }),
        other => Err(format!(
            "unknown prototype of kfree_skb ({}): needs kfree_skb(skb, location[, reason])",
            other
                .iter()
                .map(Arg::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// For `plumb gadgets`: `Err` why drop cannot run here, or its limits.
pub fn kernel_support() -> std::result::Result<Vec<String>, String> {
    net::gadget::kernel_support(support)
}

crate::net_skel!(OpenDropSkel, DropSkel);
crate::assert_kinds_match!(skel::types::plumb_kind);
use skel::{DropSkel, OpenDropSkel};

struct Decoder {
    names: &'static ReasonNames,
    /// With `--reason`: the names kept (exact, subsystem reasons included).
    wanted: Option<BTreeSet<String>>,
    syms: RefCell<KernelSymbols>,
    /// Events whose stack the kernel could not record.
    stacks_missing: Cell<u64>,
    /// Counting in the kernel (`--summary`): the totals read last time.
    counts: Option<RefCell<counts::Totals>>,
}

impl net::NetDecode<DropSkel<'static>> for Decoder {
    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
        let mut syms = self.syms.borrow_mut();
        let d = decode_with(data, |r| self.names.name(r), |a| syms.name(a))?;
        if d.hdr.flags & flag::NO_STACK != 0 {
            self.stacks_missing.set(self.stacks_missing.get() + 1);
        }
        Ok(d)
    }

    /// `--reason` exactly: subsystem reasons pass the kernel's filter per
    /// subsystem, so they are checked by name here.
    fn keep(&self, ev: &Event) -> bool {
        match (&self.wanted, &ev.body) {
            (Some(w), Body::Drop(d)) => w.contains(&d.reason),
            _ => true,
        }
    }

    /// Stacks the kernel could not record (those events carry an empty
    /// `stack`), and kernel addresses kallsyms could not name (shown as hex).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("stack not recorded", self.stacks_missing.get()),
            (
                "kernel frames not symbolized",
                self.syms.borrow().unresolved,
            ),
        ]
    }

    fn counted(&self, skel: &DropSkel<'static>) -> Option<Vec<(Decoded, u64)>> {
        let totals = self.counts.as_ref()?;
        let rows = totals.borrow_mut().read(&skel.maps.drop_counts);
        Some(
            rows.into_iter()
                .filter_map(|(raw, n)| {
                    decode_with(
                        bytemuck::bytes_of(&raw),
                        |r| self.names.name(r),
                        |_| String::new(),
                    )
                    .ok()
                    .map(|d| (d, n))
                })
                .collect(),
        )
    }

    /// Drops that found the count map full were counted nowhere: lost.
    fn lost(&self, skel: &DropSkel<'static>) -> u64 {
        if self.counts.is_some() {
            loader::percpu_sum(&skel.maps.drop_count_overflow)
        } else {
            0
        }
    }
}

fn start(ctx: &StartCtx<'_>) -> Result<Box<dyn Attached>> {
    let variant = net::gadget::variant("drop", "tp_btf/kfree_skb", support)?;
    let names = ReasonNames::vmlinux();
    let filter = reason_filter(ctx.params, names, variant == Variant::Reason)?;
    let want_stack = ctx.params.flag("stack");
    let count_only = !want_stack
        && ctx
            .count_keys
            .as_ref()
            .is_some_and(|keys| counts::can_count(keys));
    let f = filter.clone();
    let leave_out = match variant {
        Variant::Reason => "drop_kfree_skb_noreason",
        Variant::NoReason => "drop_kfree_skb",
    };
    let loaded = net::gadget::load(
        "drop",
        skel::DropSkelBuilder::default(),
        ctx,
        &[leave_out],
        &[],
        |open| {
            let ro = crate::rodata!(open, "drop")?;
            if let Some(f) = &f {
                ro.drop_reasons = f.bits;
                ro.drop_subsys_mask = f.subsys_mask;
                ro.drop_filter_reasons = 1;
            }
            ro.drop_want_stack = want_stack as u32;
            ro.drop_count_only = count_only as u32;
            Ok(())
        },
    )?;
    Ok(NetGadget::boxed(
        loaded,
        Decoder {
            names,
            wanted: filter.and_then(|f| f.wanted),
            syms: RefCell::new(KernelSymbols::new()),
            stacks_missing: Cell::new(0),
            counts: count_only.then(|| RefCell::new(counts::Totals::default())),
        },
    ))
}

/// Decode a record; `name` names a reason, `sym` a kernel address.
pub fn decode_with(
    data: &[u8],
    name: impl Fn(u32) -> String,
    mut sym: impl FnMut(u64) -> String,
) -> std::result::Result<Decoded, DecodeError> {
    let r: RawDrop = raw::read(data)?;
    if r.hdr.kind != raw::kind::DROP {
        return Err(DecodeError::Kind(r.hdr.kind));
    }
    let stack_len = r.stack_len as usize;
    if stack_len > MAX_STACK * 8 || !stack_len.is_multiple_of(8) {
        return Err(DecodeError::Range {
            field: "stack_len",
            value: r.stack_len as u64,
        });
    }
    let stack = raw::tail::<RawDrop>(data, stack_len)?;
    let mut frames: Vec<String> = stack
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
        .filter(|&a| a != 0)
        .map(&mut sym)
        .collect();
    // The innermost frames are our own program and the tracepoint's
    // plumbing, not the path that dropped the packet.
    let ours = frames
        .iter()
        .take_while(|f| TRACING_FRAMES.iter().any(|p| f.starts_with(p)))
        .count();
    frames.drain(..ours);
    let asked = r.hdr.flags & flag::STACK != 0;
    Ok(Decoded {
        hdr: r.hdr,
        body: Body::Drop(Drop {
            reason: if r.hdr.flags & flag::REASON != 0 {
                name(r.reason)
            } else {
                UNKNOWN_REASON.to_string()
            },
            location: sym(r.location),
            flow: Flow::decode(&r.flow)?,
            stack: (asked || stack_len > 0).then_some(frames),
        }),
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod root_tests;

#[cfg(test)]
mod filter_root_tests;
