//! `plumb trace drop`: every packet the kernel frees as dropped, with the
//! kernel's drop reason (named from the running kernel's BTF), the network
//! namespace and interface, the flow, the owner of each side, and with
//! `--stack` the kernel stack where it was dropped.

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/drop.skel.rs"));
}

use super::net::{Flow, RawFlow};
use super::{Attached, Body, Column, Decoded, GadgetDesc, Hook, ParamSpec, Params};
use crate::error::{DecodeError, Error, Result};
use crate::kernel::{self, KernelSymbols};
use crate::loader::{self, Loaded, StartCtx};
use crate::raw::{self, RawHdr};
use bytemuck::{Pod, Zeroable};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;

pub const MAX_STACK: usize = 32;
const REASON_WORDS: usize = 16;

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
const _: () =
    assert!(std::mem::size_of::<skel::types::plumb_flow>() == std::mem::size_of::<RawFlow>());

/// Reasons left out unless `--all-reasons` or `--reason` asks for them:
/// ordinary frees, not losses.
pub const NORMAL_REASONS: &[&str] = &["NOT_SPECIFIED", "CONSUMED"];

/// One dropped packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drop {
    pub reason: String,
    /// The kernel function that freed the packet.
    pub location: String,
    #[serde(flatten)]
    pub flow: Flow,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<Vec<String>>,
}

pub static DESC: GadgetDesc = GadgetDesc {
    name: "drop",
    summary: "every packet the kernel drops, with the kernel's drop reason, flow and pods",
    help: "Reason names come from the running kernel's BTF (enum skb_drop_reason). By default the \
           reasons NOT_SPECIFIED and CONSUMED are left out: the kernel uses them for ordinary frees \
           that are not losses; --all-reasons shows them. pid and comm are not reported: drops \
           happen in softirq context where the current task is unrelated. Attribution uses the \
           packet's network namespace (netns, the device's) and the namespace that owns each \
           address (src_*/dst_*); the header's cgroup/pod is that of the socket's creator when the \
           packet belongs to a local socket.",
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
        Column::new("ifname", "IF", 10),
        Column::new("proto", "PROTO", 5),
        Column::new("saddr", "SADDR", 15),
        Column::new("sport", "SPORT", 5),
        Column::new("daddr", "DADDR", 15),
        Column::new("dport", "DPORT", 5),
        Column::new("reason", "REASON", 20),
        Column::new("location", "LOCATION", 0),
    ],
    summary_keys: &["reason", "netns", "dst_pod"],
    hooks: &[Hook::TpBtf("kfree_skb")],
    start,
};

struct Running {
    loaded: Loaded<skel::DropSkel<'static>>,
    reasons: &'static BTreeMap<u32, String>,
    syms: RefCell<KernelSymbols>,
}

/// The bitmap of reason values to report, from the params and `names`.
pub fn reason_bitmap(
    params: &Params,
    names: &BTreeMap<u32, String>,
) -> Result<Option<[u64; REASON_WORDS]>> {
    let wanted = params.list("reason");
    let mut bits = [0u64; REASON_WORDS];
    let mut set = |v: u32| {
        if (v as usize) < REASON_WORDS * 64 {
            bits[v as usize / 64] |= 1 << (v % 64);
        }
    };
    if !wanted.is_empty() {
        for w in &wanted {
            let w = w.to_ascii_uppercase();
            let w = w.strip_prefix("SKB_DROP_REASON_").unwrap_or(&w);
            let v = names
                .iter()
                .find(|(_, n)| n.as_str() == w)
                .map(|(v, _)| *v)
                .ok_or_else(|| Error::BadParam {
                    param: "reason".into(),
                    reason: format!("this kernel has no drop reason '{w}'"),
                })?;
            set(v);
        }
        return Ok(Some(bits));
    }
    if params.flag("all-reasons") || names.is_empty() {
        return Ok(None);
    }
    for (v, n) in names {
        if !NORMAL_REASONS.contains(&n.as_str()) {
            set(*v);
        }
    }
    Ok(Some(bits))
}

fn start(ctx: &StartCtx<'_>) -> Result<Box<dyn Attached>> {
    let reasons = kernel::vmlinux_enum("skb_drop_reason", "SKB_DROP_REASON_");
    let bitmap = reason_bitmap(ctx.params, reasons)?;
    let want_stack = ctx.params.flag("stack");
    let loaded = loader::load("drop", skel::DropSkelBuilder::default(), |open| {
        crate::configure_common!(&mut *open, ctx, "drop");
        let ro = open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| Error::Open {
                gadget: "drop",
                source: libbpf_rs::Error::from(std::io::Error::other("BPF object has no .rodata")),
            })?;
        if let Some(b) = bitmap {
            ro.drop_reasons = b;
            ro.drop_filter_reasons = 1;
        }
        ro.drop_want_stack = want_stack as u32;
        Ok(())
    });
    let mut loaded = loaded?;
    loaded.attach("drop", &[])?;
    Ok(Box::new(Running {
        loaded,
        reasons,
        syms: RefCell::new(KernelSymbols::new()),
    }))
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
    let frames: Vec<String> = stack
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
        .filter(|&a| a != 0)
        .map(&mut sym)
        .collect();
    Ok(Decoded {
        hdr: r.hdr,
        body: Body::Drop(Drop {
            reason: name(r.reason),
            location: sym(r.location),
            flow: Flow::decode(&r.flow)?,
            stack: (stack_len > 0).then_some(frames),
        }),
    })
}

impl Attached for Running {
    crate::impl_attached_common!();

    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
        let mut syms = self.syms.borrow_mut();
        decode_with(
            data,
            |r| kernel::name_or_number(self.reasons, r),
            |a| syms.name(a),
        )
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod root_tests;
