//! What can go wrong with a user's object. Each error is one line a user
//! can act on (a verifier refusal adds the verifier's own last lines).

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not an ELF file (a BPF object is built with clang -target bpf)", .0.display())]
    NotElf(PathBuf),
    #[error("{} is not a BPF object libbpf can open: {reason}", .path.display())]
    NotBpf { path: PathBuf, reason: String },
    #[error("{} holds no BPF programs", .0.display())]
    NoPrograms(PathBuf),
    #[error("{0}")]
    Btf(#[from] crate::btf::BtfError),
    #[error("--set {name}: {reason}")]
    BadGlobal { name: String, reason: String },
    #[error("--attach {0}: expected SECTION=TARGET")]
    BadAttach(String),
    #[error("--attach {0}: the object has no program in that section (or of that name)")]
    NoSuchSection(String),
    #[error("{}{}", load_what(.program, *.verified, .reason), tail(.log))]
    Load {
        program: Option<String>,
        /// The verifier ran and refused (else libbpf or the kernel refused
        /// before it: a missing attach target, a map).
        verified: bool,
        reason: String,
        log: Vec<String>,
    },
    #[error("program {program} ({section}) cannot attach here: {reason}")]
    Attach {
        program: String,
        section: String,
        reason: String,
    },
    #[error("program {program} ({section}) needs a target: {what}")]
    NeedsTarget {
        program: String,
        section: String,
        what: &'static str,
    },
    #[error("{0}")]
    Select(String),
    #[error("map {map}: {reason}")]
    Map { map: String, reason: String },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    /// Exit code, as plumb's others: 2 for what was asked, 1 for what the
    /// kernel refused.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Read { .. }
            | Error::NotElf(_)
            | Error::NotBpf { .. }
            | Error::NoPrograms(_)
            | Error::Btf(_)
            | Error::BadGlobal { .. }
            | Error::BadAttach(_)
            | Error::NoSuchSection(_)
            | Error::NeedsTarget { .. }
            | Error::Select(_) => 2,
            _ => 1,
        }
    }
}

fn load_what(program: &Option<String>, verified: bool, reason: &str) -> String {
    match program {
        Some(p) if verified => format!("the kernel's verifier rejected program {p}: {reason}"),
        Some(p) => format!("the kernel refused to load program {p}: {reason}"),
        None => format!("the kernel refused to load the object: {reason}"),
    }
}

/// The verifier's last lines, indented under the error.
fn tail(log: &[String]) -> String {
    let keep: Vec<&String> = log.iter().rev().take(12).collect();
    let mut s = String::new();
    if !keep.is_empty() {
        s.push_str("\nverifier log (last lines):");
    }
    for l in keep.into_iter().rev() {
        s.push_str("\n  ");
        s.push_str(l);
    }
    s
}
