//! What a cgroup path says about its owner.
//!
//! Container runtimes and the kubelet name cgroups after the container id and
//! the pod UID. The layouts differ by runtime (containerd, CRI-O, Docker,
//! podman), by cgroup driver (cgroupfs or systemd) and by cgroup version; the
//! fixtures in the tests below are real paths of each kind. Nothing here
//! guesses: a path that matches no known layout gives an empty workload.

use crate::event::Workload;

/// Runtime prefixes of systemd scope units, longest first where one is a
/// prefix of another. `*-conmon-*` scopes are the runtime monitors, not the
/// container, and are skipped.
const SCOPE_PREFIXES: &[(&str, &str)] = &[
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
    ("nerdctl-", "containerd"),
];

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn is_pod_uid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A pod UID from one path segment: `pod<uid>` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd driver).
fn pod_uid(segment: &str) -> Option<String> {
    let seg = segment.strip_suffix(".slice").unwrap_or(segment);
    let idx = seg.rfind("pod")?;
    let before = &seg[..idx];
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = seg[idx + 3..].replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// A container from one path segment: a systemd scope, or a bare id.
fn container(segment: &str, in_pod: bool, parent: Option<&str>) -> Option<(String, &'static str)> {
    if let Some(scope) = segment.strip_suffix(".scope") {
        if scope.contains("-conmon-") {
            return None;
        }
        for (prefix, runtime) in SCOPE_PREFIXES {
            if let Some(id) = scope.strip_prefix(prefix) {
                if is_container_id(id) {
                    return Some((id.to_string(), runtime));
                }
            }
        }
        return None;
    }
    if let Some(id) = segment.strip_prefix("libpod-") {
        // podman with the cgroupfs manager: /libpod_parent/libpod-<id>
        return is_container_id(id).then(|| (id.to_string(), "podman"));
    }
    if let Some(id) = segment.strip_prefix("crio-") {
        // CRI-O with the cgroupfs manager: /kubepods/<qos>/pod<uid>/crio-<id>
        // (its monitor is crio-conmon-<id>, which is not the container).
        return is_container_id(id).then(|| (id.to_string(), "cri-o"));
    }
    if !is_container_id(segment) {
        return None;
    }
    // A bare id: the runtime is told by where it sits.
    let runtime = match parent {
        Some("docker") => "docker",
        _ if in_pod => "cri",
        Some(_) => "containerd",
        None => return None,
    };
    Some((segment.to_string(), runtime))
}

/// Read the workload out of a cgroup path (relative to its hierarchy's root).
pub fn parse(path: &str) -> Workload {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut w = Workload::default();
    let in_kubepods = segments
        .iter()
        .any(|s| s.starts_with("kubepods") || s.contains("-kubepods"));
    for (i, seg) in segments.iter().enumerate() {
        if in_kubepods && w.pod_uid.is_none() {
            if let Some(uid) = pod_uid(seg) {
                w.pod_uid = Some(uid);
                continue;
            }
        }
        if w.container_id.is_none() {
            let parent = i.checked_sub(1).map(|p| segments[p]);
            if let Some((id, runtime)) = container(seg, w.pod_uid.is_some(), parent) {
                w.container_id = Some(id);
                w.container_runtime = Some(runtime);
            }
        }
    }
    w
}

/// The v1 hierarchies' paths from `/proc/PID/cgroup`, for hosts where the
/// task's cgroup v2 path says nothing (v1-only or hybrid hosts). The first
/// path that names a container wins.
///
/// The unified line (`0::`) is left out: the event's own cgroup id already
/// said where the task was in cgroup v2 when it happened, and the file says
/// where it is now, which for a task that moved since is another cgroup.
pub fn parse_proc_cgroup(contents: &str) -> Option<Workload> {
    contents
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let hierarchy = f.next()?;
            f.next()?;
            let path = f.next()?;
            (hierarchy != "0").then_some(path)
        })
        .map(parse)
        .find(|w| w.container_id.is_some() || w.pod_uid.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7c3ad5e8c1f4d1b8b5e9f0e3c2a1b4d6e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3";
    const UID: &str = "0b9a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d";

    fn check(path: &str, id: Option<&str>, runtime: Option<&str>, uid: Option<&str>) {
        let w = parse(path);
        assert_eq!(w.container_id.as_deref(), id, "container id of {path}");
        assert_eq!(w.container_runtime, runtime, "runtime of {path}");
        assert_eq!(w.pod_uid.as_deref(), uid, "pod uid of {path}");
    }

    #[test]
    fn kubelet_systemd_driver_containerd() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        check(&p, Some(ID), Some("containerd"), Some(UID));
    }

    #[test]
    fn kubelet_systemd_driver_guaranteed_crio() {
        let p = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        );
        check(&p, Some(ID), Some("cri-o"), Some(UID));
    }

    #[test]
    fn crio_conmon_is_not_the_container() {
        let p = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope",
            UID.replace('-', "_")
        );
        check(&p, None, None, Some(UID));
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        check(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            Some(ID),
            Some("cri"),
            Some(UID),
        );
        check(
            &format!("/kubepods/pod{UID}/{ID}"),
            Some(ID),
            Some("cri"),
            Some(UID),
        );
        check(
            &format!("/kubepods/besteffort/pod{UID}"),
            None,
            None,
            Some(UID),
        );
    }

    #[test]
    fn crio_cgroupfs_driver() {
        check(
            &format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            Some(ID),
            Some("cri-o"),
            Some(UID),
        );
        check(
            &format!("/kubepods/burstable/pod{UID}/crio-conmon-{ID}"),
            None,
            None,
            Some(UID),
        );
    }

    #[test]
    fn kind_node_nests_kubelet_slice() {
        let p = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        check(&p, Some(ID), Some("containerd"), Some(UID));
    }

    #[test]
    fn docker_both_drivers() {
        check(&format!("/docker/{ID}"), Some(ID), Some("docker"), None);
        check(
            &format!("/system.slice/docker-{ID}.scope"),
            Some(ID),
            Some("docker"),
            None,
        );
    }

    #[test]
    fn podman_layouts() {
        check(
            &format!("/machine.slice/libpod-{ID}.scope"),
            Some(ID),
            Some("podman"),
            None,
        );
        check(
            &format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"),
            Some(ID),
            Some("podman"),
            None,
        );
        check(
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            None,
            None,
            None,
        );
        check(
            &format!("/libpod_parent/libpod-{ID}"),
            Some(ID),
            Some("podman"),
            None,
        );
    }

    #[test]
    fn plain_containerd_namespace() {
        check(
            &format!("/default/{ID}"),
            Some(ID),
            Some("containerd"),
            None,
        );
        check(
            &format!("/system.slice/nerdctl-{ID}.scope"),
            Some(ID),
            Some("containerd"),
            None,
        );
    }

    #[test]
    fn ordinary_host_paths_are_empty() {
        for p in [
            "/",
            "",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/sshd.service",
            "/process_api/e37ac68a1099959c7fa7a804efbea00e",
            "/docker",
            &format!("/pod{UID}"),
        ] {
            assert!(parse(p).is_empty(), "{p} gave {:?}", parse(p));
        }
    }

    #[test]
    fn v1_proc_cgroup_file() {
        let contents = format!(
            "12:memory:/kubepods/burstable/pod{UID}/{ID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n0::/\n"
        );
        let w = parse_proc_cgroup(&contents).unwrap();
        assert_eq!(w.container_id.as_deref(), Some(ID));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert!(parse_proc_cgroup("0::/\n4:memory:/process_api/abc\n").is_none());
        // A task now in a pod's v2 cgroup, but not when the event's cgroup id
        // was taken: only the v1 lines are read.
        assert!(parse_proc_cgroup(&format!("4:memory:/\n0::/kubepods/pod{UID}\n")).is_none());
    }

    #[test]
    fn v1_files_of_each_runtime() {
        let uid_ = UID.replace('-', "_");
        // (the /proc/PID/cgroup of a task on a v1 host, what it names)
        let cases = [
            // Docker, cgroupfs driver.
            (
                format!("12:pids:/docker/{ID}\n4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"),
                Some("docker"),
                None,
            ),
            // Docker, systemd driver.
            (
                format!("4:memory:/system.slice/docker-{ID}.scope\n1:name=systemd:/system.slice/docker-{ID}.scope\n"),
                Some("docker"),
                None,
            ),
            // kubelet + containerd, systemd driver.
            (
                format!("9:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope\n"),
                Some("containerd"),
                Some(UID),
            ),
            // kubelet + CRI-O, cgroupfs driver.
            (
                format!("7:memory:/kubepods/besteffort/pod{UID}/crio-{ID}\n"),
                Some("cri-o"),
                Some(UID),
            ),
            // podman, systemd.
            (
                format!("5:memory:/machine.slice/libpod-{ID}.scope\n"),
                Some("podman"),
                None,
            ),
        ];
        for (file, runtime, uid) in cases {
            let w = parse_proc_cgroup(&file).unwrap_or_else(|| panic!("nothing in {file}"));
            assert_eq!(w.container_id.as_deref(), Some(ID), "{file}");
            assert_eq!(w.container_runtime, runtime, "{file}");
            assert_eq!(w.pod_uid.as_deref(), uid, "{file}");
        }
    }
}
