//! Running the tools that dump kernel state (`iptables-save`, `nft`,
//! `bpftool`, `ip`), inside the network namespace being audited.
//!
//! Checks talk to an [`Exec`], not to processes, so their parsing and
//! bookkeeping (which backend a dump came from, what was skipped and why)
//! are unit-tested with canned outputs and no root.

use std::path::PathBuf;
use std::process::Command;

/// Why a command gave no output to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    /// The program is not installed (the shell's exit status 127).
    #[error("{0} is not installed")]
    NotFound(String),
    /// It ran and failed: its first line on stderr.
    #[error("{0}")]
    Failed(String),
    /// nsenter or sh could not be started.
    #[error("cannot run a command: {0}")]
    Spawn(String),
}

/// Runs a shell command line and returns its stdout.
pub trait Exec {
    fn output(&self, cmd: &str) -> Result<String, CmdError>;
}

/// Runs commands in one network namespace (through `nsenter --net=`), or in
/// the host's.
#[derive(Debug, Clone)]
pub struct Runner {
    netns: Option<PathBuf>,
}

impl Runner {
    pub fn host() -> Self {
        Runner { netns: None }
    }

    pub fn netns(path: PathBuf) -> Self {
        Runner { netns: Some(path) }
    }
}

impl Exec for Runner {
    fn output(&self, cmd: &str) -> Result<String, CmdError> {
        let mut c = match &self.netns {
            Some(p) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", p.display()))
                    .args(["sh", "-c", cmd]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.args(["-c", cmd]);
                c
            }
        };
        let out = c.output().map_err(|e| CmdError::Spawn(e.to_string()))?;
        if out.status.code() == Some(127) {
            let program = cmd.split_whitespace().next().unwrap_or(cmd);
            return Err(CmdError::NotFound(program.to_string()));
        }
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(CmdError::Failed(if line.is_empty() {
                format!("`{cmd}` failed ({})", out.status)
            } else {
                line.trim().to_string()
            }));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Canned outputs for unit tests: command line → result.
#[cfg(test)]
pub mod fake {
    use super::{CmdError, Exec};
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct Fake(pub HashMap<String, Result<String, CmdError>>);

    impl Fake {
        pub fn ok(mut self, cmd: &str, out: &str) -> Self {
            self.0.insert(cmd.to_string(), Ok(out.to_string()));
            self
        }
    }

    impl Exec for Fake {
        fn output(&self, cmd: &str) -> Result<String, CmdError> {
            self.0.get(cmd).cloned().unwrap_or_else(|| {
                Err(CmdError::NotFound(
                    cmd.split_whitespace().next().unwrap_or(cmd).to_string(),
                ))
            })
        }
    }
}
