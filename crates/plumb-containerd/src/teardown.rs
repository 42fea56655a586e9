//! Removing what a fixture made, whether its owner ends normally or died:
//! every process still naming the fixture's directories (containerd's
//! shims and what they run), every mount below them, the pods' cgroups,
//! the CNI bridge, and the directories. The CRI calls that remove pods
//! come first when containerd is still there; this is what is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Processes whose command line mentions `dir` (the shims are started with
/// `-address <state>/containerd.sock`), other than this one.
fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILL every process in `cgroup` and below, then remove the cgroups,
/// deepest first.
pub fn remove_cgroup_tree(cgroup: &Path) {
    if !cgroup.exists() {
        return;
    }
    // cgroup.kill (5.14+) kills the whole subtree at once.
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
    let mut dirs = Vec::new();
    let mut todo = vec![cgroup.to_path_buf()];
    while let Some(d) = todo.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            todo.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        dirs.push(d);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in dirs.iter().rev() {
        while std::fs::remove_dir(d).is_err() && d.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every cgroup hierarchy mounted (v1 controllers and v2).
fn hierarchies() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let point = pre.split(' ').nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// A pod's cgroup (`rel`, below a hierarchy's root) removed from every
/// hierarchy runc made it in, with the QoS parents once no other pod is in
/// them.
pub fn remove_pod_cgroups(rel: &str) {
    for h in hierarchies() {
        let pod = h.join(rel);
        remove_cgroup_tree(&pod);
        let mut up = pod.parent();
        while let Some(d) = up.filter(|d| *d != h) {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            up = d.parent();
        }
    }
}

/// Unmount everything mounted below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: a NUL-terminated path; MNT_DETACH never blocks.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// What is left of a fixture: its processes, mounts, pod cgroups, bridge
/// and directories.
pub fn remove(dirs: &[&Path], pod_cgroups: &[String], bridge: &str) {
    for d in dirs {
        for pid in processes_naming(d) {
            // SAFETY: signalling a process that names our directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for c in pod_cgroups {
        remove_pod_cgroups(c);
    }
    for d in dirs {
        unmount_below(d);
    }
    let _ = std::process::Command::new("ip")
        .args(["link", "del", bridge])
        .output();
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}
