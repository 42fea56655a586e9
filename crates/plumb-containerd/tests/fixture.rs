//! The fixture itself, as root: containerd starts, a pod gets a sandbox in
//! the kubelet's cgroup layout and an address on the lab bridge, its
//! container runs in `<pod cgroup>/<container id>`, two pods talk over the
//! bridge, and dropping the fixture leaves no process, mount, cgroup,
//! bridge or directory behind.

use plumb_containerd::Containerd;
use std::path::Path;
use std::time::Duration;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "run as root");
}

#[test]
fn pods_run_in_the_kubelets_cgroups_talk_over_the_bridge_and_leave_nothing() {
    require_root();
    let cd = Containerd::start().expect("containerd");
    assert_eq!(cd.runtime_name, "containerd");
    let a = cd.run_pod("web-a", "shop").expect("pod a");
    let b = cd.run_pod("web-b", "shop").expect("pod b");
    assert_eq!(a.cgroup_rel, format!("kubepods/besteffort/pod{}", a.uid));
    assert!(a.cgroup.ends_with(&a.cgroup_rel), "{}", a.cgroup.display());
    assert!(a.cgroup.join(&a.sandbox_id).is_dir(), "sandbox cgroup");
    assert_ne!(a.ip, b.ip);
    let server = cd
        .start_container(
            &a,
            "srv",
            &["/bin/sh", "-c", "echo pong-7311 | nc -l -p 7311"],
        )
        .expect("server");
    let spid = server
        .wait_for_process("nc -l -p 7311", Duration::from_secs(20))
        .expect("server process");
    let v2 = std::fs::read_to_string(format!("/proc/{spid}/cgroup")).unwrap();
    assert!(
        v2.lines()
            .any(|l| l == format!("0::/kubepods/besteffort/pod{}/{}", a.uid, server.id)),
        "{v2}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let got = b
        .sh_in_netns(&format!("busybox nc {} 7311 </dev/null", a.ip))
        .expect("client in b's netns");
    assert_eq!(got.trim(), "pong-7311");
    let roots = ["/var/lib/plumb-containerd", "/run/plumb-containerd"];
    let sock = cd.socket();
    let cgroups = [a.cgroup.clone(), b.cgroup.clone()];
    let v1_memory = Path::new("/sys/fs/cgroup/memory").join(&a.cgroup_rel);
    drop(cd);
    assert!(!sock.exists());
    for c in cgroups {
        assert!(!c.exists(), "{} removed", c.display());
    }
    assert!(!v1_memory.exists(), "{} removed", v1_memory.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for r in roots {
        assert!(!mounts.contains(r), "no mount below {r}");
    }
}
