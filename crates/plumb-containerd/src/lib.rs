//! A real containerd for tests, run the way a node runs it under the
//! kubelet: Debian's containerd with its CRI plugin, runc (cgroupfs driver)
//! and the CNI bridge and host-local plugins. Pods are created through the
//! CRI as the kubelet creates them: a sandbox per pod under the cgroup
//! parent `/kubepods/besteffort/pod<uid>`, containers in it, all carrying
//! the kubelet's labels. Tests then check plumb's names against what the
//! runtime itself answers.
//!
//! Nothing here reaches outside this machine: the images are made from the
//! static busybox and imported (see `image`), the pods' network is a bridge
//! on a lab-only subnet with no gateway and no route out. Each fixture has
//! its own root, state, socket and CNI configuration (never the system's),
//! takes a network-lab id so its subnet and names are its own, and removes
//! every pod, mount, bridge, cgroup and process it made when dropped, or,
//! if its owner died, when the id is next taken.

mod config;
mod cri;
mod image;
mod teardown;

/// The CRI messages and client (the subset in `proto/cri/lifecycle_v1.proto`).
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

pub use config::{BUSYBOX_IMAGE, PAUSE_IMAGE};

use plumb_netlab::alloc::{self, Claim};
use plumb_netlab::hostnet::HostPrefixes;
use proto::{ContainerConfig, ContainerMetadata, ImageSpec, LinuxPodSandboxConfig};
use proto::{PodSandboxConfig, PodSandboxMetadata};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Labels the kubelet puts on every sandbox and container.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// The QoS class the pods get (no requests or limits: best effort).
pub const QOS_PARENT: &str = "kubepods/besteffort";

#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Run a command to its end; its stderr is the error.
fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| Error(format!("{}: {e}", args[0])))?;
    if !out.status.success() {
        return Err(Error(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The cgroup v2 hierarchy (`/sys/fs/cgroup`, or its `unified` mount on
/// a hybrid host): where BPF's cgroup ids come from.
fn cgroup_root() -> Result<PathBuf> {
    plumb_netlab::cgroup::v2_root().ok_or_else(|| Error("no cgroup v2 hierarchy".into()))
}

/// A pod UID as the API server makes them (a random UUID, version 4).
fn new_uid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Where the fixture with lab id `id` keeps its files.
fn dirs_of(id: u32) -> (PathBuf, PathBuf) {
    (
        PathBuf::from(format!("/var/lib/plumb-containerd/{id}")),
        PathBuf::from(format!("/run/plumb-containerd/{id}")),
    )
}

/// The file listing the pod cgroups a fixture made, relative to each
/// hierarchy's root (read back after a crash).
fn pods_file(root: &Path) -> PathBuf {
    root.with_extension("pods")
}

fn recorded_pods(root: &Path) -> Vec<String> {
    std::fs::read_to_string(pods_file(root))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A pod the fixture runs.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub sandbox_id: String,
    pub ip: Ipv4Addr,
    /// The pod's cgroup v2 directory, `<root>/kubepods/besteffort/pod<uid>`.
    pub cgroup: PathBuf,
    /// The same relative to a hierarchy's root (runc makes it in each).
    pub cgroup_rel: String,
    config: PodSandboxConfig,
}

impl Pod {
    /// The sandbox's process (its pause), which holds the namespaces.
    pub fn sandbox_pid(&self) -> Result<u32> {
        first_pid(&self.cgroup.join(&self.sandbox_id))
    }

    /// The pod's network namespace, as a path to open.
    pub fn netns(&self) -> Result<PathBuf> {
        Ok(PathBuf::from(format!(
            "/proc/{}/ns/net",
            self.sandbox_pid()?
        )))
    }

    /// The inode of the pod's network namespace.
    pub fn netns_inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let p = self.netns()?;
        std::fs::metadata(&p)
            .map(|m| m.ino())
            .map_err(|e| Error(format!("{}: {e}", p.display())))
    }

    /// Run `cmd` with sh in the pod's network namespace (from the host's
    /// file system: iptables, ip).
    pub fn sh_in_netns(&self, cmd: &str) -> Result<String> {
        let ns = self.netns()?;
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["sh", "-c", cmd])
            .output()
            .map_err(|e| Error(format!("nsenter: {e}")))?;
        if !out.status.success() {
            return Err(Error(format!(
                "`{cmd}` in {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A container the fixture started.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub id: String,
    /// `<pod cgroup>/<container id>`, as runc's cgroupfs driver makes it.
    pub cgroup: PathBuf,
}

impl Container {
    /// The processes in the container, the container's first process first
    /// (in order of pid; the init process is the oldest).
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_to_string(self.cgroup.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        v.sort_by_key(|p| start_time(*p));
        v
    }

    /// Wait until a process in the container has `needle` in its command
    /// line; its pid.
    pub fn wait_for_process(&self, needle: &str, timeout: Duration) -> Result<u32> {
        self.wait_for(timeout, &format!("'{needle}'"), |cmd| cmd.contains(needle))
    }

    /// Wait until a process in the container runs `argv` exactly (not a
    /// shell whose script mentions it); its pid.
    pub fn wait_for_command(&self, argv: &[&str], timeout: Duration) -> Result<u32> {
        let want = argv.join(" ");
        self.wait_for(timeout, &format!("command '{want}'"), |cmd| cmd == want)
    }

    fn wait_for(&self, timeout: Duration, what: &str, hit: impl Fn(&str) -> bool) -> Result<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            for pid in self.pids() {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if hit(cmd.trim_end()) {
                    return Ok(pid);
                }
            }
            if Instant::now() > deadline {
                return Err(Error(format!(
                    "no process with {what} in container {} after {timeout:?}",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The container's cgroup id (its directory's inode), as BPF sees it.
    pub fn cgroup_id(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.cgroup)
            .map(|m| m.ino())
            .map_err(|e| Error(format!("{}: {e}", self.cgroup.display())))
    }
}

fn start_time(pid: u32) -> u64 {
    // Field 22 of /proc/PID/stat, after the command name's parenthesis.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            rest.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(u64::MAX)
}

fn first_pid(cgroup: &Path) -> Result<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse().ok())
        .ok_or_else(|| Error(format!("no process in {}", cgroup.display())))
}

/// A running containerd; stopped, with everything it ran, when dropped.
pub struct Containerd {
    root: PathBuf,
    state: PathBuf,
    bridge: String,
    daemon: Option<Child>,
    cri: cri::Cri,
    pods: Mutex<Vec<Pod>>,
    /// What the runtime says it is (CRI Version).
    pub runtime_name: String,
    pub runtime_version: String,
    // Released last, once everything named after the id is gone.
    claim: Option<Claim>,
}

impl Containerd {
    /// Start containerd with the images imported and the CNI network set.
    pub fn start() -> Result<Containerd> {
        for tool in ["containerd", "ctr", "runc", "/usr/lib/cni/bridge"] {
            let found = if tool.starts_with('/') {
                Path::new(tool).exists()
            } else {
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !found {
                return Err(Error(format!(
                    "{tool} is missing (Debian's containerd, runc and containernetworking-plugins)"
                )));
            }
        }
        let host = HostPrefixes::read().map_err(|e| Error(e.0))?;
        let claim = alloc::claim(|id| {
            !host.overlaps(&plumb_netlab::subnet_v4(id * plumb_netlab::MAX_NODES))
        })
        .map_err(|e| Error(e.0))?;
        let id = claim.id;
        let (root, state) = dirs_of(id);
        let bridge = format!("pl{id}cd");
        // A dead owner's fixture of the same id goes first.
        teardown::remove(&[&root, &state], &recorded_pods(&root), &bridge);
        let _ = std::fs::remove_file(pods_file(&root));
        let subnet = plumb_netlab::subnet_v4(id * plumb_netlab::MAX_NODES);
        let mut cd = Containerd {
            root,
            state,
            bridge,
            daemon: None,
            cri: cri::Cri::new(Path::new("/nonexistent"))?,
            pods: Mutex::new(Vec::new()),
            runtime_name: String::new(),
            runtime_version: String::new(),
            claim: Some(claim),
        };
        let cni_conf = cd.root.join("cni-conf");
        for d in [&cd.root, &cd.state, &cni_conf, &cd.root.join("logs")] {
            std::fs::create_dir_all(d).map_err(|e| Error(format!("{}: {e}", d.display())))?;
        }
        let paths = config::Paths {
            root: &cd.root.join("root"),
            state: &cd.state,
            cni_conf: &cni_conf,
        };
        let toml = cd.root.join("config.toml");
        let write = |p: &Path, text: String| {
            std::fs::write(p, text).map_err(|e| Error(format!("{}: {e}", p.display())))
        };
        write(&toml, config::containerd_toml(&paths))?;
        write(
            &cni_conf.join("10-plumb.conflist"),
            config::cni_conflist(
                &format!("plumb-{id}"),
                &cd.bridge,
                &format!("{}/{}", subnet.addr, subnet.len),
                &cd.root.join("ipam"),
            ),
        )?;
        let log = std::fs::File::create(cd.log_path()).map_err(|e| Error(format!("log: {e}")))?;
        let log2 = log.try_clone().map_err(|e| Error(format!("log: {e}")))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&toml)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error(format!("containerd: {e}")))?;
        cd.daemon = Some(child);
        cd.cri = cri::Cri::new(&cd.socket())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let version = loop {
            match cd.cri.version() {
                Ok(v) => break v,
                Err(e) => {
                    if let Some(Ok(Some(st))) = cd.daemon.as_mut().map(|c| c.try_wait()) {
                        return Err(Error(format!(
                            "containerd exited ({st}): {}",
                            cd.log_tail()
                        )));
                    }
                    if Instant::now() > deadline {
                        return Err(Error(format!("containerd did not answer: {e}")));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        cd.runtime_name = version.runtime_name;
        cd.runtime_version = version.runtime_version;
        image::import(&cd.root.join("image"), &cd.socket())?;
        Ok(cd)
    }

    /// containerd's socket.
    pub fn socket(&self) -> PathBuf {
        self.state.join("containerd.sock")
    }

    /// The socket as `--runtime-endpoint` and crictl take it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("containerd.log")
    }

    /// The last lines containerd logged (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Run a pod sandbox named `name` in `namespace`, as the kubelet does.
    pub fn run_pod(&self, name: &str, namespace: &str) -> Result<Pod> {
        self.run_pod_labelled(name, namespace, &[])
    }

    /// [`Containerd::run_pod`] with the pod's own labels (`app=web`),
    /// which the kubelet puts on the sandbox beside its own.
    pub fn run_pod_labelled(
        &self,
        name: &str,
        namespace: &str,
        pod_labels: &[(&str, &str)],
    ) -> Result<Pod> {
        let uid = new_uid();
        let mut labels = HashMap::from([
            (POD_NAME.to_string(), name.to_string()),
            (POD_NAMESPACE.to_string(), namespace.to_string()),
            (POD_UID.to_string(), uid.clone()),
        ]);
        for (k, v) in pod_labels {
            labels.insert(k.to_string(), v.to_string());
        }
        let cgroup_parent = format!("/{QOS_PARENT}/pod{uid}");
        let log_dir = self.root.join("logs").join(&uid);
        std::fs::create_dir_all(&log_dir).map_err(|e| Error(format!("logs: {e}")))?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels,
            annotations: HashMap::new(),
            linux: Some(LinuxPodSandboxConfig { cgroup_parent }),
        };
        let cgroup_rel = format!("{QOS_PARENT}/pod{uid}");
        let cgroup = cgroup_root()?.join(&cgroup_rel);
        // Recorded before the call: a sandbox half made is still removed.
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(pods_file(&self.root))
                .map_err(|e| Error(format!("pods file: {e}")))?;
            let _ = writeln!(f, "{cgroup_rel}");
        }
        let sandbox_id = self
            .cri
            .run_pod_sandbox(config.clone())
            .map_err(|e| Error(format!("{e}\n{}", self.log_tail())))?;
        let mut pod = Pod {
            name: name.into(),
            namespace: namespace.into(),
            uid,
            sandbox_id,
            ip: Ipv4Addr::UNSPECIFIED,
            cgroup,
            cgroup_rel,
            config,
        };
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pod.clone());
        let ip = self.cri.pod_ip(&pod.sandbox_id)?;
        pod.ip = ip
            .parse()
            .map_err(|_| Error(format!("pod {name}: no IPv4 address from CNI ('{ip}')")))?;
        Ok(pod)
    }

    /// Create and start container `name` in `pod`, running `argv`.
    pub fn start_container(&self, pod: &Pod, name: &str, argv: &[&str]) -> Result<Container> {
        let mut labels = pod.config.labels.clone();
        labels.insert(CONTAINER_NAME.into(), name.into());
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: BUSYBOX_IMAGE.into(),
            }),
            command: argv.iter().map(|s| s.to_string()).collect(),
            args: Vec::new(),
            labels,
            annotations: HashMap::new(),
            log_path: format!("{name}.log"),
        };
        let id = self
            .cri
            .create_container(&pod.sandbox_id, config, pod.config.clone())
            .map_err(|e| Error(format!("{e}\n{}", self.log_tail())))?;
        self.cri
            .start_container(&id)
            .map_err(|e| Error(format!("{e}\n{}", self.log_tail())))?;
        Ok(Container {
            name: name.into(),
            cgroup: pod.cgroup.join(&id),
            id,
        })
    }

    /// Stop a container (SIGTERM, then SIGKILL after `grace`) and remove it.
    pub fn remove_container(&self, c: &Container, grace: Duration) -> Result<()> {
        self.cri.stop_container(&c.id, grace.as_secs() as i64)?;
        self.cri.remove_container(&c.id)
    }

    /// Delete a pod as the kubelet does: stop its sandbox (its containers
    /// with it), remove it, then its pod cgroup.
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        self.cri.stop_pod_sandbox(&pod.sandbox_id)?;
        self.cri.remove_pod_sandbox(&pod.sandbox_id)?;
        teardown::remove_pod_cgroups(&pod.cgroup_rel);
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p.sandbox_id != pod.sandbox_id);
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut *self.pods.lock().unwrap_or_else(|e| e.into_inner()));
        for p in &pods {
            let _ = self.cri.stop_pod_sandbox(&p.sandbox_id);
            let _ = self.cri.remove_pod_sandbox(&p.sandbox_id);
        }
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: signalling the containerd we started, by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut cgroups = recorded_pods(&self.root);
        cgroups.extend(pods.iter().map(|p| p.cgroup_rel.clone()));
        teardown::remove(&[&self.root, &self.state], &cgroups, &self.bridge);
        let _ = std::fs::remove_file(pods_file(&self.root));
        drop(self.claim.take());
    }
}
