//! What the user selected (`--pod`, `--netns`, `--pid`, `--cgroup`), as
//! the places programs attach to: a network namespace for socket, XDP and
//! TC programs, a cgroup for cgroup programs, a process and its root for
//! uprobes. The CLI resolves pods and processes; this is what it found.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// How to name it in messages ("pod shop/web-1"); empty: this host.
    pub what: String,
    pub pid: Option<u32>,
    /// The process's root (`/proc/PID/root`): where a uprobe's binary is.
    pub root: Option<PathBuf>,
    /// A network namespace file.
    pub netns: Option<PathBuf>,
    /// A cgroup v2 directory.
    pub cgroup: Option<PathBuf>,
}

impl Target {
    /// The selection's globals ([`crate::object::SELECTION_GLOBALS`]), by
    /// name, for those this selection gives.
    pub fn globals(&self) -> BTreeMap<String, String> {
        let mut g = BTreeMap::new();
        if let Some(pid) = self.pid {
            g.insert("plumb_target_pid".to_string(), pid.to_string());
        }
        if let Some(ino) = self
            .cgroup
            .as_ref()
            .and_then(|c| std::fs::metadata(c).ok())
            .map(|m| m.ino())
        {
            g.insert("plumb_target_cgroup_id".to_string(), ino.to_string());
        }
        if let Some(ino) = self
            .netns
            .as_ref()
            .and_then(|n| std::fs::metadata(n).ok())
            .map(|m| m.ino())
        {
            g.insert("plumb_target_netns".to_string(), ino.to_string());
        }
        g
    }
}
