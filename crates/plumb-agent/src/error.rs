//! The agent's errors. Each keeps its cause; the binary prints the chain
//! on one line.

use std::path::PathBuf;

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
    #[error("cannot connect to agent {addr}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("agent {addr}: {} ({:?})", status.message(), status.code())]
    Remote { addr: String, status: tonic::Status },
    #[error("{0}")]
    Internal(String),
}
