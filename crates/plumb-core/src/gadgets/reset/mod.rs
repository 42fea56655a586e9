//! `plumb trace reset`: every TCP RST sent or received, with the direction,
//! the flow (in the RST's own direction), the socket's state and, for RSTs
//! sent, the kernel's reason (named from the running kernel's BTF).

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/reset.skel.rs"));
}

use super::net::{Flow, RawFlow};
use super::retrans::tcp_state;
use super::{Attached, Body, Column, Decoded, GadgetDesc, Hook};
use crate::error::{DecodeError, Result};
use crate::kernel;
use crate::loader::{self, Loaded, StartCtx};
use crate::raw::{self, RawHdr};
use bytemuck::{Pod, Zeroable};
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
           reset and the side that received it show the same tuple. `reason` (RSTs sent) comes \
           from the running kernel's BTF (enum sk_rst_reason). pid and comm are not reported \
           (softirq context); attribution is by network namespace and address owner.",
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
        Column::new("reason", "REASON", 0),
    ],
    summary_keys: &["direction", "saddr", "daddr", "dport", "reason"],
    hooks: &[
        Hook::TpBtf("tcp_send_reset"),
        Hook::TpBtf("tcp_receive_reset"),
    ],
    start,
};

struct Running {
    loaded: Loaded<skel::ResetSkel<'static>>,
    reasons: &'static BTreeMap<u32, String>,
}

fn start(ctx: &StartCtx<'_>) -> Result<Box<dyn Attached>> {
    let mut loaded = loader::load("reset", skel::ResetSkelBuilder::default(), |open| {
        crate::configure_common!(open, ctx, "reset");
        Ok(())
    })?;
    loaded.attach("reset", &[])?;
    Ok(Box::new(Running {
        loaded,
        reasons: kernel::vmlinux_enum("sk_rst_reason", "SK_RST_REASON_"),
    }))
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

impl Attached for Running {
    crate::impl_attached_common!();

    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
        decode_with(data, |r| kernel::name_or_number(self.reasons, r))
    }
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
}

#[cfg(test)]
mod root_tests;
