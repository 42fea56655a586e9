//! What can go wrong in a capture, each in one line a user can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad filter expression {expression:?}: {message}")]
    Filter { expression: String, message: String },
    #[error("capturing needs CAP_NET_RAW in the namespace captured (run plumb as root)")]
    NotPermitted,
    #[error("{what}: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no interface {name:?} in {place}")]
    NoInterface { name: String, place: String },
    #[error(
        "{place} has no interface to capture on but loopback (give --interface lo to capture it)"
    )]
    NoInterfaces { place: String },
    #[error("interface {name} in {place} has hardware type {hatype}, which plumb capture cannot frame yet")]
    LinkType {
        name: String,
        place: String,
        hatype: u16,
    },
    #[error("cannot enter the network namespace {}: {source}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{place}: interface {name} has no node-side peer (it is not a veth whose other end is on the node)")]
    NoPeer { name: String, place: String },
    #[error("writing the capture: {0}")]
    Write(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
