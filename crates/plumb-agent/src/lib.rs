//! plumb-agent: plumb on every node of a cluster.
//!
//! The agent runs the same pipeline as the local commands, with a sink that
//! forwards events into a gRPC stream ([`server`]), guarded by a bearer
//! token or mutual TLS ([`auth`]). Next to it, always-on counters
//! aggregated in the kernel ([`counters`]), folded into per-pod totals
//! ([`ledger`], [`attribution`]), are exported to Prometheus ([`metrics`]). [`client`] is the other end: it runs a gadget on many
//! agents at once and merges their streams. [`bpftrace`] runs a client's
//! bpftrace script, when the agent allows it.

pub mod attribution;
pub mod auth;
pub mod bpftrace;
pub mod capture;
pub mod client;
pub mod counters;
pub mod error;
pub mod identity;
pub mod k8s;
pub mod ledger;
pub mod listen;
pub mod logs;
pub mod metrics;
pub mod profile_wire;
pub mod progs;
pub mod ringbuf;
pub mod server;
mod session;

pub use error::{AgentError, Result};

/// Code generated from `proto/plumb/agent/v1/agent.proto`.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("plumb.agent.v1");
}
