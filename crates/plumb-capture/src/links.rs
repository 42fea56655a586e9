//! The interfaces of the network namespace the calling thread is in,
//! asked of the kernel over rtnetlink (a link dump): their index, name,
//! hardware type, and the index of their peer (IFLA_LINK, which for a
//! pod's veth is the node's end of it).

use crate::error::{Error, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    /// ARPHRD_* hardware type.
    pub hatype: u16,
    /// IFLA_LINK: the peer's index, in the peer's namespace (veths).
    pub peer: Option<i32>,
    pub up: bool,
    pub loopback: bool,
}

fn nl(source: std::io::Error) -> Error {
    Error::Socket {
        what: "listing interfaces (rtnetlink)",
        source,
    }
}

/// Every interface of this thread's network namespace.
pub fn here() -> Result<Vec<Link>> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(nl)?;
    socket.bind_auto().map_err(nl)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(nl)?;
    let mut req = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    req.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0).map_err(nl)?;
    let mut links = Vec::new();
    let mut rx = vec![0u8; 64 << 10];
    loop {
        let size = socket.recv(&mut &mut rx[..], 0).map_err(nl)?;
        let mut off = 0;
        while off < size {
            let msg: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&rx[off..size])
                    .map_err(|e| nl(std::io::Error::other(e.to_string())))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(links),
                NetlinkPayload::Error(e) => {
                    return Err(nl(std::io::Error::other(format!("{e:?}"))))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    links.push(link_of(&m))
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn link_of(m: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut peer = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Link(i) => peer = Some(*i as i32),
            _ => {}
        }
    }
    let flags = m.header.flags;
    Link {
        index: m.header.index as i32,
        name,
        hatype: u16::from(m.header.link_layer_type),
        peer: peer.filter(|&p| p != 0 && p != m.header.index as i32),
        up: flags.contains(LinkFlags::Up),
        loopback: flags.contains(LinkFlags::Loopback),
    }
}
