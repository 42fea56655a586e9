//! Network namespaces a filter selects, as the kernel numbers them (the
//! inode of the namespace file): those named by `--netns NAME|PATH`, and
//! those holding the processes of the pods or containers `--pod`, `-n` and
//! `--container` select.
//!
//! Network events carry no task, so for drop, retrans and reset a pod is
//! found in the kernel by its namespace. The host's own namespace is never
//! taken from a pod (a hostNetwork pod shares it with everything else on the
//! node): such pods' events are found by their sockets' cgroups instead.

use super::Filter;
use crate::enrich::netns::{list_namespaces, workload_of_pid};
use crate::error::{Error, Result};
use crate::event::Workload;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where `ip netns add NAME` keeps its namespaces.
pub const RUN_NETNS: &str = "/run/netns";

/// A namespace the user named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsTarget {
    /// As typed.
    pub arg: String,
    pub inode: u32,
}

/// `--netns NAME|PATH`: a name under /run/netns, or a path to a namespace
/// file (`/proc/PID/ns/net`, a bind mount).
pub fn resolve(arg: &str) -> Result<NetnsTarget> {
    let bad = |reason: String| Error::BadFilter {
        flag: "netns",
        reason,
    };
    let t = arg.trim();
    if t.is_empty() {
        return Err(bad("empty name".into()));
    }
    let path = if t.contains('/') {
        PathBuf::from(t)
    } else {
        Path::new(RUN_NETNS).join(t)
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        bad(if t.contains('/') {
            format!("{t}: {e}")
        } else {
            format!("no network namespace named '{t}' in {RUN_NETNS} ({e}); give a name there or a path like /proc/PID/ns/net")
        })
    })?;
    // A namespace file is on nsfs; its link names it `net:[INODE]`.
    let is_net = std::fs::read_link(&path)
        .ok()
        .map(|l| l.to_string_lossy().starts_with("net:["))
        .unwrap_or(false)
        || is_nsfs(&path);
    if !is_net {
        return Err(bad(format!(
            "{} is not a network namespace file",
            path.display()
        )));
    }
    Ok(NetnsTarget {
        arg: t.to_string(),
        inode: meta.ino() as u32,
    })
}

/// Is `path` on the namespace filesystem (nsfs), and a network namespace?
fn is_nsfs(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed statfs buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != NSFS_MAGIC {
        return false;
    }
    // A network namespace file, not another kind: NS_GET_NSTYPE.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: an ioctl without arguments on a descriptor we own.
    let kind = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    kind == libc::CLONE_NEWNET
}

/// The namespaces holding a process of the workloads `filter` selects, now
/// (the host's excluded). `fill` names a workload (pod, namespace) from the
/// metadata sources. A pod no source could name is kept when names are
/// needed: it might be the one asked for, and user space decides.
pub fn owned_by(filter: &Filter, fill: &dyn Fn(&mut Workload)) -> BTreeSet<u32> {
    let names_needed = filter.names_pods();
    let mut out = BTreeSet::new();
    for l in list_namespaces() {
        if l.host {
            continue;
        }
        for &pid in &l.pids {
            let mut w = workload_of_pid(pid);
            if w.is_empty() {
                continue;
            }
            if names_needed {
                fill(&mut w);
            }
            let unnamed = names_needed && w.pod_uid.is_some() && w.pod.is_none();
            if unnamed || filter.matches_workload(&w) {
                out.insert(l.inode);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_name_or_a_file_that_is_no_namespace_is_one_clear_line() {
        let e = resolve("plumb-no-such-netns").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "bad value for --netns: no network namespace named 'plumb-no-such-netns' in /run/netns"
            ),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = resolve("/etc/hostname").unwrap_err().to_string();
        assert_eq!(
            e,
            "bad value for --netns: /etc/hostname is not a network namespace file"
        );
        assert!(resolve("/no/such/file").is_err());
    }

    #[test]
    fn our_own_namespace_resolves_to_its_inode() {
        let t = resolve("/proc/self/ns/net").expect("our namespace");
        let link = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(
            link.to_string_lossy(),
            format!("net:[{}]", t.inode),
            "the inode the kernel names"
        );
    }
}
