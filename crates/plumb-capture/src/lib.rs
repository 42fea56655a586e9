//! `plumb capture`: packets of the selected pods, network namespaces and
//! interfaces, filtered in the kernel by a tcpdump expression (compiled by
//! libpcap), read from the kernel's memory-mapped TPACKET_V3 ring, and
//! written as pcapng whose every packet names its node, namespace, pod and
//! direction. The local command and the agent's Capture call both run a
//! [`session::Capture`]; they differ only in their sink.

pub mod error;
pub mod filter;
pub mod links;
pub mod order;
pub mod pcapng;
pub mod point;
pub mod ring;
pub mod session;

pub use error::{Error, Result};
pub use point::{Place, Point, Spec};
pub use ring::RingSize;
pub use session::{Capture, Ended, Limits, Sink, Summary};
