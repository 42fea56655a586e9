//! The agent's errors. Each keeps its cause; the binary prints the chain
//! on one line.

use std::path::PathBuf;

/// An error and its causes on one line.
pub use crate::session::chain;

pub type Result<T> = std::result::Result<T, AgentError>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read {what} {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("'{0}' is not an address (HOST:PORT or unix:PATH)")]
    BadAddress(String),
    #[error(
        "refusing to listen on {0} without authentication: give --token-file or \
         --tls-cert/--tls-key/--client-ca (only a unix socket may go without)"
    )]
    NoAuth(String),
    #[error("--tls-cert, --tls-key and --client-ca go together")]
    PartialTls,
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration")]
    Tls(#[source] tonic::transport::Error),
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    #[error("gRPC server")]
    Serve(#[source] tonic::transport::Error),
    #[error("always-on counters")]
    Counters(#[source] plumb_core::Error),
    /// `who` names the agent as the user knows it: `agent HOST:PORT`, or
    /// `node NAME (agent pod NS/POD)` through Kubernetes.
    #[error("{who}: cannot connect")]
    Connect {
        who: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{who}: {} ({:?})", status.message(), status.code())]
    Remote { who: String, status: tonic::Status },
    /// A deadline passed: the agent is hung, stopped or far too slow.
    #[error("{who}: not answering: {what} took longer than {}", humantime_secs(*.after))]
    NotAnswering {
        who: String,
        what: &'static str,
        after: std::time::Duration,
    },
    /// The connection ended under a call: the agent (or its node) went
    /// away, as the socket told.
    #[error("{who}: the connection was lost: {why}")]
    Lost { who: String, why: String },
    #[error("{who}: the connection stalled: no answer to HTTP/2 pings within {}", humantime_secs(*.after))]
    Stalled {
        who: String,
        after: std::time::Duration,
    },
    #[error("{who}: bad profile")]
    BadProfile {
        who: String,
        #[source]
        source: crate::profile_wire::BadFrame,
    },
    #[error("{0}")]
    Internal(String),
}

/// `3s`, `1.5s`: a deadline as the user typed it.
fn humantime_secs(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s}s")
    }
}
