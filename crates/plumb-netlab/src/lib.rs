//! The network lab: a small "node" built from network namespaces, for tests
//! and benchmarks that need real traffic between "pods".
//!
//! A lab has one or more node namespaces, each holding a bridge; every pod
//! is a namespace joined to its node's bridge by a veth pair. Nodes are
//! joined by a routed veth link. Addresses come from 10.0.0.0/8 but exist
//! only inside the lab's namespaces, and no lab namespace has a route out of
//! the lab: nothing it sends can leave this machine. Names are unique per
//! lab, so tests run in parallel, and [`Lab`]'s `Drop` deletes every
//! namespace (and with them every veth, bridge and rule inside), also when
//! the test panics.
//!
//! Commands run inside a namespace with `nsenter --net=` (not `ip netns
//! exec`, which remounts /sys and would hide tracefs from tracers), and Rust
//! code runs inside one on a thread that `setns`es first ([`Netns::run`]).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A failure while building or using the lab: the command and its stderr.
#[derive(Debug)]
pub struct LabError(pub String);

impl std::fmt::Display for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

pub type Result<T> = std::result::Result<T, LabError>;

/// A named network namespace of the lab.
#[derive(Debug, Clone)]
pub struct Netns {
    pub name: String,
    /// Its inode number: what the kernel (and plumb's `netns` key) calls it.
    pub inode: u32,
}

impl Netns {
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Run a command inside this namespace; fails on a non-zero exit.
    pub fn sh(&self, cmd: &str) -> Result<String> {
        let out = self.cmd(cmd)?;
        if !out.status.success() {
            return Err(LabError(format!(
                "in {}: `{cmd}` failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run a command inside this namespace, whatever its exit status.
    pub fn cmd(&self, cmd: &str) -> Result<Output> {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(["sh", "-c", cmd])
            .output()
            .map_err(|e| LabError(format!("nsenter: {e}")))
    }

    /// Run `f` on a thread that has entered this namespace (sockets it
    /// creates live in the namespace).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)
                .map_err(|e| LabError(format!("{}: {e}", path.display())))?;
            // SAFETY: setns(2) on this thread only, with a namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(LabError(format!(
                    "setns {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                )));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| LabError("thread inside the namespace panicked".into()))?
    }

    /// A counter of /proc/net/snmp or /proc/net/netstat inside this
    /// namespace, e.g. `("Tcp", "RetransSegs")`.
    pub fn snmp(&self, group: &str, name: &str) -> Result<u64> {
        let text = self.sh("cat /proc/net/snmp /proc/net/netstat")?;
        parse_snmp(&text, group, name).ok_or_else(|| LabError(format!("no counter {group}:{name}")))
    }
}

/// Find `group: name` in the two-line-per-group format of /proc/net/snmp.
pub fn parse_snmp(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    lines.chunks(2).find_map(|pair| {
        let [names, values] = pair else { return None };
        let i = names.split_whitespace().position(|n| n == name)?;
        values.split_whitespace().nth(i)?.parse().ok()
    })
}

/// A pod: a namespace with one address, joined to its node's bridge.
#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub node: usize,
}

struct Node {
    ns: Netns,
    subnet: [u8; 3],
    next_host: u8,
}

/// A lab. Everything in it is deleted when it is dropped.
pub struct Lab {
    prefix: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    all: Vec<String>,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| LabError(format!("{}: {e}", args[0])))?;
    if !out.status.success() {
        return Err(LabError(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn cidr(s: [u8; 3]) -> String {
    format!("{}.{}.{}.0/24", s[0], s[1], s[2])
}

/// A lab number unique on this machine for the life of this process, so
/// parallel labs never share names or addresses.
fn next_id() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    (std::process::id() % 4000) * 16 + n % 16
}

impl Lab {
    /// A lab with one node. `tag` names it (kept short: interface names are
    /// at most 15 characters).
    pub fn new(tag: &str) -> Result<Lab> {
        let id = next_id();
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(6)
            .collect();
        let mut lab = Lab {
            prefix: format!("pl{id}{tag}"),
            nodes: Vec::new(),
            pods: Vec::new(),
            all: Vec::new(),
        };
        lab.add_node()?;
        Ok(lab)
    }

    fn add_netns(&mut self, name: &str) -> Result<Netns> {
        run(&["ip", "netns", "add", name])?;
        self.all.push(name.to_string());
        let inode = std::fs::metadata(PathBuf::from("/run/netns").join(name))
            .map_err(|e| LabError(format!("netns {name}: {e}")))?
            .ino() as u32;
        let ns = Netns {
            name: name.to_string(),
            inode,
        };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    /// Add a node (a namespace with a bridge) and route it to the others.
    pub fn add_node(&mut self) -> Result<usize> {
        let idx = self.nodes.len();
        let id = next_id();
        // 10.a.b.0/24 with a.b unique per lab and node, nowhere else.
        let subnet = [10, 100 + (id / 256 % 150) as u8, (id % 256) as u8];
        let ns = self.add_netns(&format!("{}n{idx}", self.prefix))?;
        ns.sh(&format!(
            "ip link add br0 type bridge && ip addr add {}.{}.{}.1/24 dev br0 && ip link set br0 up \
             && sysctl -qw net.ipv4.ip_forward=1",
            subnet[0], subnet[1], subnet[2]
        ))?;
        let node = Node {
            ns,
            subnet,
            next_host: 2,
        };
        // Join to the first node with a routed link; every other node and
        // every existing pod learns the new subnet (through node 0).
        if idx > 0 {
            let a = &self.nodes[0];
            let (an, bn) = (
                format!("{}l{idx}a", self.prefix),
                format!("{}l{idx}b", self.prefix),
            );
            let link_net = format!("169.254.{idx}.");
            run(&[
                "ip",
                "link",
                "add",
                &an,
                "netns",
                &a.ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &bn,
                "netns",
                &node.ns.name,
            ])?;
            a.ns.sh(&format!(
                "ip addr add {link_net}1/30 dev {an} && ip link set {an} up"
            ))?;
            node.ns.sh(&format!(
                "ip addr add {link_net}2/30 dev {bn} && ip link set {bn} up"
            ))?;
            let new = cidr(node.subnet);
            a.ns.sh(&format!("ip route add {new} via {link_net}2"))?;
            for (j, other) in self.nodes.iter().enumerate() {
                node.ns.sh(&format!(
                    "ip route add {} via {link_net}1",
                    cidr(other.subnet)
                ))?;
                if j > 0 {
                    other
                        .ns
                        .sh(&format!("ip route add {new} via 169.254.{j}.1"))?;
                }
            }
            for pod in &self.pods {
                let s = self.nodes[pod.node].subnet;
                pod.ns.sh(&format!(
                    "ip route add {new} via {}.{}.{}.1",
                    s[0], s[1], s[2]
                ))?;
            }
        }
        self.nodes.push(node);
        Ok(idx)
    }

    /// Add a pod on node 0.
    pub fn add_pod(&mut self, name: &str) -> Result<Pod> {
        self.add_pod_on(0, name)
    }

    /// Add a pod on node `node`: a namespace with one veth to the bridge,
    /// one address, and routes to the lab's subnets only.
    pub fn add_pod_on(&mut self, node: usize, name: &str) -> Result<Pod> {
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(4)
            .collect();
        let ns = self.add_netns(&format!("{}{name}", self.prefix))?;
        let n = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| LabError(format!("no node {node}")))?;
        let host = n.next_host;
        n.next_host += 1;
        let ip = Ipv4Addr::new(n.subnet[0], n.subnet[1], n.subnet[2], host);
        let veth = format!("{}v{}", self.prefix, self.pods.len());
        run(&[
            "ip", "link", "add", "eth0", "netns", &ns.name, "type", "veth", "peer", "name", &veth,
            "netns", &n.ns.name,
        ])?;
        n.ns.sh(&format!(
            "ip link set {veth} master br0 && ip link set {veth} up"
        ))?;
        let gw = Ipv4Addr::new(n.subnet[0], n.subnet[1], n.subnet[2], 1);
        ns.sh(&format!(
            "ip addr add {ip}/24 dev eth0 && ip link set eth0 up"
        ))?;
        // Routes to the other nodes' subnets only: no default route out.
        for other in self
            .nodes
            .iter()
            .filter(|o| o.subnet != self.nodes[node].subnet)
        {
            ns.sh(&format!("ip route add {} via {gw}", cidr(other.subnet)))?;
        }
        let pod = Pod { ns, ip, node };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// The namespace of node `i`.
    pub fn node(&self, i: usize) -> &Netns {
        &self.nodes[i].ns
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Pods first, then nodes: deleting a namespace deletes its links.
        for name in self.all.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_snmp_counters() {
        let text = "Tcp: RtoAlgorithm RtoMin RetransSegs InErrs\nTcp: 1 200 17 0\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(parse_snmp(text, "Tcp", "RetransSegs"), Some(17));
        assert_eq!(parse_snmp(text, "Udp", "InDatagrams"), Some(5));
        assert_eq!(parse_snmp(text, "Tcp", "Nope"), None);
    }

    #[test]
    fn pods_talk_inside_the_lab_and_nowhere_else() {
        assert_eq!(unsafe { libc::geteuid() }, 0, "the lab needs root");
        let names;
        {
            let mut lab = Lab::new("self").unwrap();
            let a = lab.add_pod("a").unwrap();
            let b = lab.add_pod("b").unwrap();
            let n1 = lab.add_node().unwrap();
            let c = lab.add_pod_on(n1, "c").unwrap();
            a.ns.sh(&format!("ping -c1 -W2 {}", b.ip)).unwrap();
            a.ns.sh(&format!("ping -c1 -W2 {}", c.ip)).unwrap();
            let routes = a.ns.sh("ip route").unwrap();
            assert!(!routes.contains("default"), "no route out: {routes}");
            assert_ne!(a.ns.inode, b.ns.inode);
            names = lab.all.clone();
        }
        for n in names {
            assert!(
                !PathBuf::from("/run/netns").join(&n).exists(),
                "{n} left behind"
            );
        }
    }
}
