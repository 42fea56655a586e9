//! Typed errors of the library. The binary turns each into one line and an
//! exit code; the cause (errno, path, verifier log) is kept, never flattened.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong between "run this gadget" and its last event.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("plumb needs root or the {cap} capability (run with sudo, or grant {cap})")]
    MissingCapability { cap: &'static str },
    #[error("this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); plumb needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8 or newer)")]
    NoBtf,
    #[error("tracefs is not mounted at /sys/kernel/tracing and could not be mounted: {0}")]
    Tracefs(#[source] io::Error),
    #[error("unknown gadget '{name}'; known gadgets: {known}")]
    UnknownGadget { name: String, known: String },
    #[error("bad value for --{flag}: {reason}")]
    BadFilter { flag: &'static str, reason: String },
    #[error("bad value for --{param}: {reason}")]
    BadParam { param: String, reason: String },
    #[error("cannot open BPF object of gadget {gadget}: {source}")]
    Open {
        gadget: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{}: {source}{}", load_what(gadget, .log), verifier_tail(.log))]
    Load {
        gadget: &'static str,
        #[source]
        source: libbpf_rs::Error,
        /// libbpf's and the verifier's messages, last lines last.
        log: Vec<String>,
    },
    #[error("cannot attach {gadget} to {hook}: {source}")]
    Attach {
        gadget: &'static str,
        hook: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("gadget {gadget} cannot run on this kernel: {why}")]
    Unsupported { gadget: &'static str, why: String },
    #[error("ring buffer of gadget {gadget}: {source}")]
    RingBuffer {
        gadget: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing output: {0}")]
    Output(#[source] io::Error),
}

/// Whether the verifier's last lines are shown in `Display` (set by `-v`).
static SHOW_VERIFIER_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Include the verifier's last lines in load errors (the CLI's `-v`).
pub fn show_verifier_log(on: bool) {
    SHOW_VERIFIER_LOG.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Did the verifier refuse the program (its log says so), or did the load
/// fail before it ran (map creation, BTF, permissions)?
fn load_what(gadget: &str, log: &[String]) -> String {
    let verifier = log.iter().any(|l| {
        l.starts_with("processed ")
            || l.contains("-- BEGIN PROG LOAD LOG --")
            || l.contains("invalid mem access")
    });
    if verifier {
        format!("the kernel's verifier rejected gadget {gadget}")
    } else {
        format!("the kernel refused to load gadget {gadget}")
    }
}

fn verifier_tail(log: &[String]) -> String {
    if log.is_empty() {
        return String::new();
    }
    if !SHOW_VERIFIER_LOG.load(std::sync::atomic::Ordering::Relaxed) {
        return " (run with -v for the verifier's log)".to_string();
    }
    let tail: Vec<&str> = log
        .iter()
        .rev()
        .take(20)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("\nverifier log (last lines):\n{}", tail.join("\n"))
}

impl Error {
    /// Exit code for the binary: 2 usage, 3 environment, 4 kernel refused, 1 other.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::UnknownGadget { .. } | Error::BadFilter { .. } | Error::BadParam { .. } => 2,
            Error::MissingCapability { .. }
            | Error::NoBtf
            | Error::Tracefs(_)
            | Error::Unsupported { .. } => 3,
            Error::Open { .. } | Error::Load { .. } | Error::Attach { .. } => 4,
            _ => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A record from the kernel that could not be decoded. Counted and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than the {need} its layout needs")]
    Short { need: usize, got: usize },
    #[error("record kind {0} is not one this gadget writes")]
    Kind(u16),
    #[error("field {field} out of range: {value}")]
    Range { field: &'static str, value: u64 },
}
