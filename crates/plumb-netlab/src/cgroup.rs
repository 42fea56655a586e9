//! Kubernetes-looking pods for the lab: a long-lived process inside a pod
//! namespace, in a cgroup laid out the way the kubelet and containerd lay
//! them out (systemd driver):
//!
//! `<cgroup2>/plumb-lab-<id>.slice/kubepods-besteffort-pod<uid_with_underscores>.slice/cri-containerd-<64 hex>.scope`
//!
//! A tracer that names a network namespace's owner from the cgroup of a
//! process inside it then finds a pod UID and a container id, as it would on
//! a real node. The lab started these processes; it stops them (by pid) and
//! removes the cgroups when it is dropped.

use crate::{LabError, Result};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pod identity a lab process carries in its cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// `0b9a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d`
    pub pod_uid: String,
    /// 64 lowercase hex digits.
    pub container_id: String,
    /// The cgroup, relative to the cgroup2 root (starts with `/`).
    pub cgroup: String,
    /// The process holding the pod's namespace.
    pub pid: u32,
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn v2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The lab's own slice, below the cgroup2 root.
pub fn lab_slice(id: u32) -> String {
    format!("plumb-lab-{id}.slice")
}

/// A well-mixed 64-bit value (splitmix64), for ids that only need to be
/// unique, not secret.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn seed(lab: u32, n: u32) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    mix(now ^ ((lab as u64) << 40) ^ ((n as u64) << 20) ^ std::process::id() as u64)
}

/// A pod UID in the kubelet's format (a version 4 UUID).
pub fn make_pod_uid(lab: u32, n: u32) -> String {
    let a = seed(lab, n);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        8 + (b >> 62),
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

/// A container id in containerd's format (64 hex digits).
pub fn make_container_id(lab: u32, n: u32) -> String {
    let mut x = seed(lab, n ^ 0x8000_0000);
    (0..4)
        .map(|_| {
            x = mix(x);
            format!("{x:016x}")
        })
        .collect()
}

/// The cgroup path (relative to the root) of a lab pod's container.
pub fn pod_cgroup(lab: u32, pod_uid: &str, container_id: &str) -> String {
    format!(
        "/{}/kubepods-besteffort-pod{}.slice/cri-containerd-{container_id}.scope",
        lab_slice(lab),
        pod_uid.replace('-', "_")
    )
}

/// Start `sleep infinity` inside the namespace at `netns` and the cgroup
/// `cgroup` (absolute path), both joined in the child before it execs, so
/// the process is never seen anywhere else.
pub fn spawn_in(netns: &Path, cgroup: &Path) -> Result<Child> {
    std::fs::create_dir_all(cgroup)
        .map_err(|e| LabError(format!("mkdir {}: {e}", cgroup.display())))?;
    let ns =
        std::fs::File::open(netns).map_err(|e| LabError(format!("{}: {e}", netns.display())))?;
    let procs_path = cgroup.join("cgroup.procs");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|e| LabError(format!("{}: {e}", procs_path.display())))?;
    let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
    let mut cmd = Command::new("sleep");
    cmd.arg("infinity")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe system calls (setns, write) between
    // fork and exec, on descriptors that stay open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| LabError(format!("start the pod process: {e}")))?;
    drop((ns, procs));
    Ok(child)
}

/// Pids listed in a cgroup's `cgroup.procs`.
fn procs_of(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Stop every process in the cgroup tree at `dir` (by pid: only the lab's
/// own processes live there) and remove the tree, deepest first.
pub fn remove_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        for pid in procs_of(d) {
            // SAFETY: kill(2) on a pid listed in the lab's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !procs_of(d).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_have_the_kubelet_and_containerd_formats() {
        let uid = make_pod_uid(7, 1);
        let parts: Vec<&str> = uid.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{uid}");
        assert!("89ab".contains(&parts[3][..1]), "{uid}");
        let cid = make_container_id(7, 1);
        assert_eq!(cid.len(), 64);
        assert!(cid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(make_container_id(7, 2), cid);
        assert_eq!(
            pod_cgroup(7, "0b9a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d", &cid),
            format!(
                "/plumb-lab-7.slice/kubepods-besteffort-pod0b9a1c2d_3e4f_4a5b_8c6d_7e8f9a0b1c2d.slice/cri-containerd-{cid}.scope"
            )
        );
    }
}
