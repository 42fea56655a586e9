//! What can go wrong before or while bpftrace runs. Each error is one line
//! a user can act on; the cause is kept.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no bpftrace binary: {0}")]
    NoBinary(String),
    #[error(
        "this kernel has no BTF ({} is missing): bpftrace needs it (plumb never uses kernel headers)",
        .0.display()
    )]
    NoBtf(PathBuf),
    #[error("no process {0}")]
    NoProcess(u32),
    #[error("cannot read the cgroup of process {pid}")]
    ProcessCgroup {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup v2 hierarchy is mounted: a pod's or process's cgroup cannot be found")]
    NoCgroup2,
    #[error("no pod {0} on this node")]
    NoPod(String),
    #[error("pod name {pod} is ambiguous on this node: it is in namespaces {namespaces}; give -n")]
    AmbiguousPod { pod: String, namespaces: String },
    #[error("pod {0} has no process on this node")]
    EmptyPod(String),
    #[error("the script uses ${0}, which only a context gives: add --pod (with -n) or --pid")]
    NoContext(&'static str),
    #[error("the script is {0} bytes; at most {max} are accepted", max = crate::script::MAX_SCRIPT)]
    TooLong(usize),
    #[error("the script is empty")]
    Empty,
    #[error("cannot start {}", .binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for bpftrace")]
    Wait(#[source] std::io::Error),
}

impl Error {
    /// Exit code for the binary, as plumb's others: 2 usage (what was asked
    /// for is wrong or not there), 3 environment (this host cannot run
    /// bpftrace), 1 other.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NoBinary(_) | Error::NoBtf(_) | Error::NoCgroup2 => 3,
            Error::NoProcess(_)
            | Error::NoPod(_)
            | Error::AmbiguousPod { .. }
            | Error::EmptyPod(_)
            | Error::NoContext(_)
            | Error::TooLong(_)
            | Error::Empty => 2,
            Error::ProcessCgroup { .. } | Error::Spawn { .. } | Error::Wait(_) => 1,
        }
    }
}
