//! A fake Kubernetes pod for agent tests: a cgroup laid out as the
//! kubelet's systemd driver lays it out
//! (`/plumb-test-N.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`
//! below the cgroup v2 root),
//! optionally with a process holding a lab network namespace, as a pod's
//! sandbox does. Commands can be run inside it. Dropping it kills the
//! holder and removes the cgroups, also when the test panics.

use super::cgroup2_root;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

pub struct FakePod {
    pub uid: String,
    pub container: String,
    /// The test's own slice, the pod slice and the container scope.
    dirs: Vec<PathBuf>,
    netns: Option<PathBuf>,
    holder: Option<Child>,
}

fn unique() -> (u32, u32, u128) {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    (std::process::id(), N.fetch_add(1, Ordering::Relaxed), t)
}

impl FakePod {
    /// A pod; with `netns` (a /run/netns path), a process inside it holds
    /// that namespace, so the namespace belongs to the pod.
    pub fn new(netns: Option<&Path>) -> FakePod {
        let (pid, n, t) = unique();
        let uid = format!(
            "{pid:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            n & 0xffff,
            (t >> 12) & 0xfff,
            t & 0xfff,
            (t >> 24) & 0xffff_ffff_ffff
        );
        let container = format!("{:032x}{:032x}", t, (u128::from(pid) << 32) | u128::from(n));
        let slice = cgroup2_root().join(format!("plumb-test-{pid}-{n}.slice"));
        let pod = slice.join(format!(
            "kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        let scope = pod.join(format!("cri-containerd-{container}.scope"));
        std::fs::create_dir_all(&scope).expect("create the fake pod's cgroups");
        let mut p = FakePod {
            uid,
            container,
            dirs: vec![slice, pod, scope],
            netns: netns.map(Path::to_path_buf),
            holder: None,
        };
        if netns.is_some() {
            let mut sleep = Command::new("sleep");
            sleep.arg("3600");
            p.holder = Some(p.spawn(sleep));
        }
        p
    }

    fn scope(&self) -> &Path {
        &self.dirs[2]
    }

    /// The container's cgroup relative to the hierarchy (for `--cgroup`).
    pub fn cgroup_path(&self) -> String {
        self.scope()
            .strip_prefix(cgroup2_root())
            .map(|p| format!("/{}", p.display()))
            .unwrap_or_default()
    }

    /// The container's cgroup id (its directory's inode), as BPF sees it.
    pub fn cgroup_id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.scope()).expect("scope").ino()
    }

    /// Start `cmd` inside the pod: its container's cgroup, and the pod's
    /// network namespace if it has one. Its exec is counted in the pod.
    pub fn spawn(&self, mut cmd: Command) -> Child {
        let procs: OwnedFd = File::options()
            .write(true)
            .open(self.scope().join("cgroup.procs"))
            .expect("open cgroup.procs")
            .into();
        let ns: Option<OwnedFd> = self
            .netns
            .as_ref()
            .map(|p| File::open(p).expect("open the netns").into());
        // SAFETY: between fork and exec only write(2) and setns(2) on file
        // descriptors opened before the fork (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(ns) = &ns {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd.stdin(Stdio::null())
            .spawn()
            .expect("start a process in the fake pod")
    }

    /// Run `prog args...` inside the pod to the end.
    pub fn run(&self, prog: &str, args: &[&str]) -> ExitStatus {
        let mut c = Command::new(prog);
        c.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        self.spawn(c).wait().expect("wait for the pod's process")
    }

    /// Kill the holder and remove the cgroups (what a pod's deletion does).
    pub fn delete(&mut self) {
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        for d in self.dirs.iter().rev() {
            // A task that just exited may still be leaving the cgroup.
            for _ in 0..100 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
        }
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        self.delete();
    }
}
