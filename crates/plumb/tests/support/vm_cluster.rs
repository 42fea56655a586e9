//! A cluster of QEMU guests for multi-node tests (issue 22): guests on
//! Debian's 6.12 cloud kernel, booted by `scripts/vm.sh`, joined by a
//! bridge on this machine and one tap each. The addresses exist only on
//! that bridge (10.250.K.0/24, no gateway, no route out). Each guest runs
//! `plumb agent` on its address with the cluster's token, and an exec of
//! `/bin/true plumb-vmc-NODE` twice a second, so every node has events of
//! its own to send. A guest's agent can be killed from the test
//! ([`VmCluster::kill_agent`]): a one-shot Python listener beside it kills
//! it when connected to.
//!
//! Dropping the cluster stops the guests (SIGTERM to `vm.sh`, whose trap
//! stops QEMU and virtiofsd) and removes the taps and the bridge. A test
//! process that dies without dropping it takes its guests along (each
//! `vm.sh` gets SIGTERM as its parent-death signal), and the next cluster
//! removes bridges left by processes that are gone.

use super::TempDir;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KERNEL: &str = "6.12";
const API_PORT: u16 = 7001;
const CONTROL_PORT: u16 = 7002;

pub struct VmNode {
    pub name: String,
    pub addr: Ipv4Addr,
    /// host:port of its agent's API.
    pub api: String,
    /// The marker its exec loop passes to /bin/true.
    pub marker: String,
    log: PathBuf,
}

pub struct VmCluster {
    pub nodes: Vec<VmNode>,
    bridge: String,
    taps: Vec<String>,
    guests: Vec<Child>,
    dir: TempDir,
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Remove the bridges (and so their taps) of cluster processes now gone.
fn remove_stale() {
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("plvb")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            for t in std::fs::read_dir(format!("/sys/class/net/{name}/brif"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = ip(&["link", "del", &t.file_name().to_string_lossy()]);
            }
            let _ = ip(&["link", "del", &name]);
        }
    }
}

impl VmCluster {
    /// Boot `n` guests (node names vm1..vmN) and wait until every agent
    /// answers on its port.
    pub fn start(n: usize) -> VmCluster {
        remove_stale();
        let pid = std::process::id();
        let k = pid % 200 + 20;
        let bridge = format!("plvb{pid}");
        // Under target/: the guests share this machine's files but have a
        // /tmp of their own.
        let dir = TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "vmc");
        let token = dir.path().join("token");
        std::fs::write(&token, plumb_core::testing::marker("vmc-token")).expect("token");
        let fetched = Command::new("bash")
            .arg(repo().join("scripts/vm.sh"))
            .arg("kernels")
            .output()
            .expect("run scripts/vm.sh kernels");
        assert!(
            fetched.status.success(),
            "scripts/vm.sh kernels: {}",
            String::from_utf8_lossy(&fetched.stderr)
        );
        let mut c = VmCluster {
            nodes: Vec::new(),
            bridge: bridge.clone(),
            taps: Vec::new(),
            guests: Vec::new(),
            dir,
        };
        ip(&["link", "add", &bridge, "type", "bridge"]).expect("bridge");
        ip(&["addr", "add", &format!("10.250.{k}.1/24"), "dev", &bridge]).expect("bridge address");
        ip(&["link", "set", &bridge, "up"]).expect("bridge up");
        let plumb = env!("CARGO_BIN_EXE_plumb");
        for i in 1..=n {
            let tap = format!("plvt{pid}-{i}");
            ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).expect("tap");
            c.taps.push(tap.clone());
            ip(&["link", "set", &tap, "master", &bridge]).expect("tap on the bridge");
            ip(&["link", "set", &tap, "up"]).expect("tap up");
            let name = format!("vm{i}");
            let addr = Ipv4Addr::new(10, 250, k as u8, 10 + i as u8);
            let marker = format!("plumb-vmc-{name}");
            let script = format!(
                "(while :; do /bin/true {marker}; sleep 0.5; done) & \
                 {plumb} agent --listen {addr}:{API_PORT} --node-name {name} --token-file {tok} & \
                 agent=$!; \
                 python3 -c 'import os, signal, socket, sys; \
                 s = socket.create_server((sys.argv[1], int(sys.argv[2]))); s.accept(); \
                 os.kill(int(sys.argv[3]), signal.SIGKILL)' {addr} {CONTROL_PORT} $agent; \
                 sleep infinity",
                tok = token.display()
            );
            let log = c.dir.path().join(format!("{name}.log"));
            let out = std::fs::File::create(&log).expect("guest log");
            let mut cmd = Command::new("bash");
            cmd.arg(repo().join("scripts/vm.sh"))
                .args(["run", KERNEL, &script])
                .env("PLUMB_VM_TAP", &tap)
                .env("PLUMB_VM_ADDR", format!("{addr}/24"))
                .env("PLUMB_VM_MEM", "1024")
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log"))
                .stderr(out);
            // SAFETY: prctl(2) only, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            c.guests.push(cmd.spawn().expect("start a guest"));
            c.nodes.push(VmNode {
                api: format!("{addr}:{API_PORT}"),
                name,
                addr,
                marker,
                log,
            });
        }
        let deadline = Instant::now() + plumb_core::testing::patience(Duration::from_secs(180));
        for node in &c.nodes {
            let to = SocketAddr::from((node.addr, API_PORT));
            while TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the agent of {} never answered on {to}; its console:\n{}",
                    node.name,
                    node.console()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        c
    }

    /// The token file every agent of the cluster takes.
    pub fn token(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// SIGKILL the agent of node `i` (the guest goes on).
    pub fn kill_agent(&self, i: usize) {
        let to = SocketAddr::from((self.nodes[i].addr, CONTROL_PORT));
        TcpStream::connect_timeout(&to, Duration::from_secs(10)).expect("the guest's control port");
    }
}

impl VmNode {
    /// The guest's console so far, for failure messages.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for VmCluster {
    fn drop(&mut self) {
        for g in &self.guests {
            // SAFETY: a signal to our own child, not yet reaped.
            unsafe {
                libc::kill(g.id() as i32, libc::SIGTERM);
            }
        }
        for g in &mut self.guests {
            let _ = g.wait();
        }
        for t in &self.taps {
            let _ = ip(&["link", "del", t]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
