//! `plumb trace tcp`: TCP connect, accept, close (with duration and bytes)
//! and failed connects, IPv4 and IPv6.
//!
//! The pid/comm of a record is the socket's owner as seen at connect() or
//! accept(), not the task that happened to run when the state changed.

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/tcp.skel.rs"));
}

use super::{Attached, Body, Column, Decoded, GadgetDesc, Hook};
use crate::error::{DecodeError, Result};
use crate::event::errno_name;
use crate::loader::{self, Loaded, StartCtx};
use crate::raw::{self, RawHdr};
use bytemuck::{Pod, Zeroable};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `struct tcp_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RawTcp {
    pub hdr: RawHdr,
    pub duration_ns: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub event: u8,
    pub active: u8,
    pub error: i32,
    pub netns: u32,
}
const _: () =
    assert!(std::mem::size_of::<skel::types::tcp_event>() == std::mem::size_of::<RawTcp>());

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpEvent {
    Connect,
    Accept,
    Close,
    ConnectFailed,
}

/// One TCP lifecycle event. `saddr`/`sport` are the local end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tcp {
    pub event: TcpEvent,
    pub family: &'static str,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub netns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    /// connect_failed: why (ECONNREFUSED, ETIMEDOUT, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub static DESC: GadgetDesc = GadgetDesc {
    name: "tcp",
    summary: "TCP connect, accept, close (with duration) and failed connects, IPv4 and IPv6",
    help: "pid/comm are the socket's owner, recorded at connect() or accept(). A connection \
           accepted by nobody is reported on close with pid 0. Connections opened before plumb \
           started are not reported (their owner is not known), except those accepted since, \
           which have no duration. A failed connect says why: ECONNREFUSED, ETIMEDOUT (no SYN \
           answered), or ECONNABORTED (the application closed it before it connected).",
    params: &[],
    columns: &[
        Column::new("timestamp", "TIME", 15),
        Column::new("pid", "PID", 7),
        Column::new("comm", "COMM", 16),
        Column::new("event", "EVENT", 14),
        Column::new("saddr", "SADDR", 15),
        Column::new("sport", "SPORT", 5),
        Column::new("daddr", "DADDR", 15),
        Column::new("dport", "DPORT", 5),
        Column::new("duration_ns", "DURATION_NS", 11),
        Column::new("error", "ERROR", 0),
    ],
    summary_keys: &["event", "comm", "daddr", "dport"],
    hooks: &[
        Hook::TpBtf("inet_sock_set_state"),
        Hook::Tracepoint("syscalls", "sys_exit_accept4"),
    ],
    start,
};

struct Running {
    loaded: Loaded<skel::TcpSkel<'static>>,
}

fn start(ctx: &StartCtx<'_>) -> Result<Box<dyn Attached>> {
    let mut loaded = loader::load("tcp", skel::TcpSkelBuilder::default(), |open| {
        crate::configure_common!(open, ctx, "tcp");
        Ok(())
    })?;
    loaded.attach("tcp", &["accept_exit"])?;
    Ok(Box::new(Running { loaded }))
}

/// An address as the kernel stores it (network byte order words).
pub fn addr(family: u16, words: [u32; 4]) -> std::result::Result<IpAddr, DecodeError> {
    match family as i32 {
        libc::AF_INET => Ok(IpAddr::V4(Ipv4Addr::from(u32::from_be(words[0])))),
        libc::AF_INET6 => {
            let mut b = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        f => Err(DecodeError::Range {
            field: "family",
            value: f as u64,
        }),
    }
}

pub fn decode(data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
    let r: RawTcp = raw::read(data)?;
    if r.hdr.kind != raw::kind::TCP {
        return Err(DecodeError::Kind(r.hdr.kind));
    }
    let event = match r.event {
        1 => TcpEvent::Connect,
        2 => TcpEvent::Accept,
        3 => TcpEvent::Close,
        4 => TcpEvent::ConnectFailed,
        v => {
            return Err(DecodeError::Range {
                field: "event",
                value: v as u64,
            })
        }
    };
    let closed = event == TcpEvent::Close;
    Ok(Decoded {
        hdr: r.hdr,
        body: Body::Tcp(Tcp {
            event,
            family: if r.family as i32 == libc::AF_INET {
                "ipv4"
            } else {
                "ipv6"
            },
            saddr: addr(r.family, r.saddr)?,
            sport: r.sport,
            daddr: addr(r.family, r.daddr)?,
            dport: r.dport,
            netns: r.netns,
            duration_ns: (closed && r.duration_ns > 0).then_some(r.duration_ns),
            rx_bytes: closed.then_some(r.rx_bytes),
            tx_bytes: closed.then_some(r.tx_bytes),
            // No socket error: the application closed the socket before the
            // connection was made.
            error: (event == TcpEvent::ConnectFailed).then(|| match r.error {
                0 => "ECONNABORTED".to_string(),
                e => errno_name(e),
            }),
        }),
    })
}

impl Attached for Running {
    fn ring_buffers(&self) -> Vec<&dyn libbpf_rs::MapCore> {
        vec![&self.loaded.skel().maps.events]
    }

    /// Records the ring buffer could not take, and sockets whose owner the
    /// LRU map evicted (their later events cannot be reported).
    fn lost(&self) -> u64 {
        let maps = &self.loaded.skel().maps;
        loader::percpu_sum(&maps.plumb_lost)
            + loader::lru_evicted(&maps.tcp_owners, &maps.tcp_owner_churn)
    }

    fn prog_ids(&self) -> Vec<u32> {
        self.loaded.prog_ids()
    }

    fn skipped(&self) -> Vec<String> {
        self.loaded.skipped.clone()
    }

    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
        decode(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_v4_and_v6() {
        let mut r = RawTcp::zeroed();
        r.hdr.kind = raw::kind::TCP;
        r.family = libc::AF_INET as u16;
        r.event = 4;
        r.error = libc::ECONNREFUSED;
        r.saddr[0] = u32::from_ne_bytes([127, 0, 0, 1]);
        r.daddr[0] = u32::from_ne_bytes([10, 1, 2, 3]);
        r.sport = 40000;
        r.dport = 80;
        let Body::Tcp(t) = decode(bytemuck::bytes_of(&r)).unwrap().body else {
            panic!()
        };
        assert_eq!(t.saddr.to_string(), "127.0.0.1");
        assert_eq!(t.daddr.to_string(), "10.1.2.3");
        assert_eq!(t.event, TcpEvent::ConnectFailed);
        assert_eq!(t.error.as_deref(), Some("ECONNREFUSED"));
        r.error = 0;
        let Body::Tcp(t) = decode(bytemuck::bytes_of(&r)).unwrap().body else {
            panic!()
        };
        assert_eq!(
            t.error.as_deref(),
            Some("ECONNABORTED"),
            "closed before connected"
        );
        r.family = libc::AF_INET6 as u16;
        r.event = 3;
        r.duration_ns = 5;
        r.daddr = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        let Body::Tcp(t) = decode(bytemuck::bytes_of(&r)).unwrap().body else {
            panic!()
        };
        assert_eq!(t.daddr.to_string(), "::1");
        assert_eq!(t.duration_ns, Some(5));
        r.family = 99;
        assert!(decode(bytemuck::bytes_of(&r)).is_err());
    }
}

#[cfg(test)]
mod root_tests;
