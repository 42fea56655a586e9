//! plumb-bpftrace: bpftrace as a plumb command.
//!
//! `plumb bpftrace` (on this host) and the agent's `Bpftrace` call (on a
//! node, for `plumb remote` and `kubectl plumb`) are the same four steps,
//! kept here so the two cannot drift apart: find the node's bpftrace and
//! check the kernel has BTF ([`preflight`]); resolve the process or pod
//! the script is about ([`context`]); put that context into the script
//! ([`script`]); run bpftrace, stream its output line by line, and stop
//! it at the deadline or when told to, so that it prints its maps and no
//! process or BPF program is left behind ([`runner`]).

pub mod context;
pub mod error;
pub mod preflight;
pub mod runner;
pub mod script;

pub use context::Context;
pub use error::{Error, Result};
