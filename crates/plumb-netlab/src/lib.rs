//! The network lab: a small "node" built from network namespaces, for tests
//! and benchmarks that need real traffic between "pods".
//!
//! A lab has one or more node namespaces, each holding a bridge; every pod
//! is a namespace joined to its node's bridge by a veth pair, with one IPv4
//! and one IPv6 (ULA) address. Nodes are joined by a routed veth link. The
//! addresses exist only inside the lab's namespaces, on subnets that nothing
//! on the host uses, and no lab namespace has a route out of the lab:
//! nothing it sends can leave this machine.
//!
//! Every lab holds an id that is unique on the machine across processes
//! (see [`alloc`]); its namespaces and subnets are named after it, so tests
//! run in parallel. [`Lab`]'s `Drop` deletes every namespace (and with them
//! every veth, bridge and rule inside), every process and cgroup it made,
//! also when the test panics; what a killed test left behind is removed at
//! the next lab start.
//!
//! A pod made with [`Lab::add_k8s_pod`] also holds a long-lived process in
//! a kubepods-style cgroup ([`cgroup`]), so tracers can attribute the
//! namespace to a pod UID and container id as on a real node.
//!
//! Commands run inside a namespace with `nsenter --net=` (not `ip netns
//! exec`, which remounts /sys and would hide tracefs from tracers), and Rust
//! code runs inside one on a thread that `setns`es first ([`Netns::run`]).

pub mod alloc;
pub mod cgroup;
pub mod hostnet;

pub use cgroup::PodIdentity;
use hostnet::{HostPrefixes, Prefix};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output};

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

/// A pod: a namespace with one IPv4 and one IPv6 address, joined to its
/// node's bridge.
#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// A ULA address (fd00::/8) on the node's /64.
    pub ip6: Ipv6Addr,
    pub node: usize,
    /// For pods made with [`Lab::add_k8s_pod`]: the pod UID and container
    /// id its process's cgroup carries.
    pub k8s: Option<PodIdentity>,
}

struct Node {
    ns: Netns,
    /// Index of the node's subnets (see [`subnet_v4`]).
    subnet: u32,
    next_host: u8,
}

/// Nodes per lab: each takes one subnet of the lab's block.
pub const MAX_NODES: u32 = 4;

/// The IPv4 /24 of subnet `s`: 10.32.0.0/24 to 10.95.255.0/24.
pub fn subnet_v4(s: u32) -> Prefix {
    Prefix::new(
        IpAddr::V4(Ipv4Addr::new(10, 32 + (s / 256) as u8, (s % 256) as u8, 0)),
        24,
    )
}

/// The IPv6 /64 of subnet `s`: fd00:706c:6162:S::/64.
pub fn subnet_v6(s: u32) -> Prefix {
    Prefix::new(
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x706c, 0x6162, s as u16, 0, 0, 0, 0)),
        64,
    )
}

/// The IPv6 /64 of the routed link to node subnet `s`.
fn link_v6(s: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x706c, 0x6c6b, s as u16, 0, 0, 0, 0)
}

fn host_v4(s: u32, host: u8) -> Ipv4Addr {
    let IpAddr::V4(a) = subnet_v4(s).addr else {
        unreachable!("subnet_v4 is IPv4")
    };
    let o = a.octets();
    Ipv4Addr::new(o[0], o[1], o[2], host)
}

fn host_v6(net: Ipv6Addr, host: u16) -> Ipv6Addr {
    let mut seg = net.segments();
    seg[7] = host;
    Ipv6Addr::from(seg)
}

fn net_v6(s: u32) -> Ipv6Addr {
    match subnet_v6(s).addr {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!("subnet_v6 is IPv6"),
    }
}

/// Every namespace of lab `id` is named with this prefix.
pub fn netns_prefix(id: u32) -> String {
    format!("pl{id}-")
}

/// A lab. Everything in it is deleted when it is dropped.
pub struct Lab {
    id: u32,
    prefix: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    all: Vec<String>,
    procs: Vec<Child>,
    cgroups: Vec<PathBuf>,
    // Released last, once everything named after the id is gone.
    claim: Option<alloc::Claim>,
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

impl Lab {
    /// A lab with one node. `tag` names it (in namespace names).
    pub fn new(tag: &str) -> Result<Lab> {
        let host = HostPrefixes::read()?;
        let claim = alloc::claim(|id| {
            (0..MAX_NODES).all(|k| {
                let s = id * MAX_NODES + k;
                !host.overlaps(&subnet_v4(s)) && !host.overlaps(&subnet_v6(s))
            })
        })?;
        let id = claim.id;
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let mut lab = Lab {
            id,
            prefix: format!("{}{tag}-", netns_prefix(id)),
            nodes: Vec::new(),
            pods: Vec::new(),
            all: Vec::new(),
            procs: Vec::new(),
            cgroups: Vec::new(),
            claim: Some(claim),
        };
        lab.add_node()?;
        Ok(lab)
    }

    /// The lab's machine-wide id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn add_netns(&mut self, name: &str) -> Result<Netns> {
        // `ip netns add` creates the file with O_EXCL: a name that exists
        // (never ours: the id is held) fails instead of being shared.
        run(&["ip", "netns", "add", name])?;
        self.all.push(name.to_string());
        let inode = std::fs::metadata(PathBuf::from("/run/netns").join(name))
            .map_err(|e| LabError(format!("netns {name}: {e}")))?
            .ino() as u32;
        let ns = Netns {
            name: name.to_string(),
            inode,
        };
        // No duplicate address detection: addresses are usable at once.
        ns.sh(
            "ip link set lo up && sysctl -qw net.ipv6.conf.all.accept_dad=0 \
             net.ipv6.conf.default.accept_dad=0",
        )?;
        Ok(ns)
    }

    /// Add a node (a namespace with a bridge) and route it to the others.
    pub fn add_node(&mut self) -> Result<usize> {
        let idx = self.nodes.len();
        if idx as u32 >= MAX_NODES {
            return Err(LabError(format!("a lab has at most {MAX_NODES} nodes")));
        }
        let subnet = self.id * MAX_NODES + idx as u32;
        let ns = self.add_netns(&format!("{}n{idx}", self.prefix))?;
        ns.sh(&format!(
            "ip link add br0 type bridge && ip addr add {}/24 dev br0 \
             && ip addr add {}/64 dev br0 nodad && ip link set br0 up \
             && sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
            host_v4(subnet, 1),
            host_v6(net_v6(subnet), 1),
        ))?;
        let node = Node {
            ns,
            subnet,
            next_host: 2,
        };
        // Join to the first node with a routed link; every other node and
        // every existing pod learns the new subnets (through node 0).
        if idx > 0 {
            let a = &self.nodes[0];
            let (an, bn) = (format!("l{idx}a"), format!("l{idx}b"));
            let l4 = format!("169.254.{idx}.");
            let l6 = link_v6(subnet);
            let (a6, b6) = (host_v6(l6, 1), host_v6(l6, 2));
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
                "ip addr add {l4}1/30 dev {an} && ip addr add {a6}/64 dev {an} nodad \
                 && ip link set {an} up"
            ))?;
            node.ns.sh(&format!(
                "ip addr add {l4}2/30 dev {bn} && ip addr add {b6}/64 dev {bn} nodad \
                 && ip link set {bn} up"
            ))?;
            let (new4, new6) = (subnet_v4(subnet), subnet_v6(subnet));
            let fmt = |p: Prefix| format!("{}/{}", p.addr, p.len);
            a.ns.sh(&format!(
                "ip route add {} via {l4}2 && ip -6 route add {} via {b6}",
                fmt(new4),
                fmt(new6)
            ))?;
            for (j, other) in self.nodes.iter().enumerate() {
                node.ns.sh(&format!(
                    "ip route add {} via {l4}1 && ip -6 route add {} via {a6}",
                    fmt(subnet_v4(other.subnet)),
                    fmt(subnet_v6(other.subnet))
                ))?;
                if j > 0 {
                    let back6 = host_v6(link_v6(other.subnet), 1);
                    other.ns.sh(&format!(
                        "ip route add {} via 169.254.{j}.1 && ip -6 route add {} via {back6}",
                        fmt(new4),
                        fmt(new6)
                    ))?;
                }
            }
            for pod in &self.pods {
                let s = self.nodes[pod.node].subnet;
                pod.ns.sh(&format!(
                    "ip route add {} via {} && ip -6 route add {} via {}",
                    fmt(new4),
                    host_v4(s, 1),
                    fmt(new6),
                    host_v6(net_v6(s), 1)
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
    /// one IPv4 and one IPv6 address, and routes to the lab's subnets only.
    pub fn add_pod_on(&mut self, node: usize, name: &str) -> Result<Pod> {
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        if self.nodes.get(node).is_none() {
            return Err(LabError(format!("no node {node}")));
        }
        let ns = self.add_netns(&format!("{}{name}", self.prefix))?;
        let n = &mut self.nodes[node];
        let host = n.next_host;
        n.next_host = n
            .next_host
            .checked_add(1)
            .filter(|&h| h < 255)
            .ok_or_else(|| LabError("a node has at most 252 pods".into()))?;
        let ip = host_v4(n.subnet, host);
        let ip6 = host_v6(net_v6(n.subnet), host as u16);
        let veth = format!("v{}", self.pods.len());
        run(&[
            "ip", "link", "add", "eth0", "netns", &ns.name, "type", "veth", "peer", "name", &veth,
            "netns", &n.ns.name,
        ])?;
        n.ns.sh(&format!(
            "ip link set {veth} master br0 && ip link set {veth} up"
        ))?;
        let (gw, gw6) = (host_v4(n.subnet, 1), host_v6(net_v6(n.subnet), 1));
        ns.sh(&format!(
            "ip addr add {ip}/24 dev eth0 && ip addr add {ip6}/64 dev eth0 nodad \
             && ip link set eth0 up"
        ))?;
        // Routes to the other nodes' subnets only: no default route out.
        let own = self.nodes[node].subnet;
        for other in self.nodes.iter().filter(|o| o.subnet != own) {
            let (p4, p6) = (subnet_v4(other.subnet), subnet_v6(other.subnet));
            ns.sh(&format!(
                "ip route add {}/{} via {gw} && ip -6 route add {}/{} via {gw6}",
                p4.addr, p4.len, p6.addr, p6.len
            ))?;
        }
        let pod = Pod {
            ns,
            ip,
            ip6,
            node,
            k8s: None,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Add a pod on node 0 that looks like a Kubernetes pod to a tracer.
    pub fn add_k8s_pod(&mut self, name: &str) -> Result<Pod> {
        self.add_k8s_pod_on(0, name)
    }

    /// Add a pod on node `node` with a long-lived process (`sleep
    /// infinity`) inside its namespace, in a new cgroup
    /// `plumb-lab-<id>.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`.
    pub fn add_k8s_pod_on(&mut self, node: usize, name: &str) -> Result<Pod> {
        let root = cgroup::v2_root().ok_or_else(|| LabError("no cgroup v2 hierarchy".into()))?;
        let mut pod = self.add_pod_on(node, name)?;
        let n = self.pods.len() as u32;
        let pod_uid = cgroup::make_pod_uid(self.id, n);
        let container_id = cgroup::make_container_id(self.id, n);
        let rel = cgroup::pod_cgroup(self.id, &pod_uid, &container_id);
        let dir = root.join(rel.trim_start_matches('/'));
        // Remember every level we create, to remove them deepest first.
        let mut level = root.clone();
        for part in rel.trim_start_matches('/').split('/') {
            level.push(part);
            if !level.exists() {
                self.cgroups.push(level.clone());
            }
        }
        let child = cgroup::spawn_in(&pod.ns.path(), &dir)?;
        let pid = child.id();
        self.procs.push(child);
        pod.k8s = Some(PodIdentity {
            pod_uid,
            container_id,
            cgroup: rel,
            pid,
        });
        if let Some(p) = self.pods.last_mut() {
            *p = pod.clone();
        }
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
        // The lab's own processes, by pid, then their cgroups.
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for dir in self.cgroups.iter().rev() {
            cgroup::remove_tree(dir);
        }
        // Pods first, then nodes: deleting a namespace deletes its links.
        for name in self.all.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
        // Anything named after the id that the lists missed.
        alloc::remove_leftovers(self.id);
        self.claim.take();
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

    fn require_root() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the lab needs root");
    }

    #[test]
    fn subnets_are_distinct_per_lab_and_node() {
        assert_eq!(subnet_v4(0), Prefix::parse("10.32.0.0/24").unwrap());
        assert_eq!(
            subnet_v4(MAX_LABS_SUBNETS - 1),
            Prefix::parse("10.95.255.0/24").unwrap()
        );
        assert_eq!(
            subnet_v6(0x1a3),
            Prefix::parse("fd00:706c:6162:1a3::/64").unwrap()
        );
        for s in [0, 1, 255, 256, 9000] {
            assert!(!subnet_v4(s).overlaps(&subnet_v4(s + 1)));
            assert!(!subnet_v6(s).overlaps(&subnet_v6(s + 1)));
        }
    }

    const MAX_LABS_SUBNETS: u32 = alloc::MAX_LABS * MAX_NODES;

    #[test]
    fn pods_talk_inside_the_lab_and_nowhere_else() {
        require_root();
        let names;
        {
            let mut lab = Lab::new("self").unwrap();
            let a = lab.add_pod("a").unwrap();
            let b = lab.add_pod("b").unwrap();
            let n1 = lab.add_node().unwrap();
            let c = lab.add_pod_on(n1, "c").unwrap();
            a.ns.sh(&format!("ping -c1 -W2 {}", b.ip)).unwrap();
            a.ns.sh(&format!("ping -c1 -W2 {}", c.ip)).unwrap();
            a.ns.sh(&format!("ping -6 -c1 -W2 {}", b.ip6)).unwrap();
            a.ns.sh(&format!("ping -6 -c1 -W2 {}", c.ip6)).unwrap();
            for p in [&a, &c] {
                let routes = p.ns.sh("ip route; ip -6 route").unwrap();
                assert!(!routes.contains("default"), "no route out: {routes}");
            }
            assert_ne!(a.ns.inode, b.ns.inode);
            let host = HostPrefixes::read().unwrap();
            for p in [&a, &b, &c] {
                assert!(!host.overlaps(&Prefix::new(p.ip.into(), 32)), "{}", p.ip);
                assert!(!host.overlaps(&Prefix::new(p.ip6.into(), 128)), "{}", p.ip6);
            }
            names = lab.all.clone();
        }
        for n in names {
            assert!(
                !PathBuf::from("/run/netns").join(&n).exists(),
                "{n} left behind"
            );
        }
    }

    #[test]
    fn parallel_labs_get_different_ids_and_subnets() {
        require_root();
        let labs: Vec<Lab> = (0..3).map(|_| Lab::new("par").unwrap()).collect();
        let mut ids: Vec<u32> = labs.iter().map(|l| l.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3, "ids {ids:?}");
        // Another process cannot take a held id: its lock is busy.
        for l in &labs {
            let path = PathBuf::from(alloc::STATE_DIR).join(format!("{}.lab", l.id()));
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            assert_eq!(rc, -1, "lab {} lock is held", l.id());
        }
    }

    #[test]
    fn k8s_pods_hold_a_process_in_a_kubepods_cgroup() {
        require_root();
        let root = cgroup::v2_root().expect("cgroup v2");
        let (pid, dir, lab_slice);
        {
            let mut lab = Lab::new("k8s").unwrap();
            let p = lab.add_k8s_pod("web").unwrap();
            let k = p.k8s.clone().unwrap();
            pid = k.pid;
            dir = root.join(k.cgroup.trim_start_matches('/'));
            lab_slice = root.join(cgroup::lab_slice(lab.id()));
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(cg.lines().any(|l| l == format!("0::{}", k.cgroup)), "{cg}");
            assert!(k.cgroup.contains(&format!(
                "kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
                k.pod_uid.replace('-', "_"),
                k.container_id
            )));
            let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
            assert_eq!(
                link.to_string_lossy(),
                format!("net:[{}]", p.ns.inode),
                "the process holds the pod's namespace"
            );
        }
        assert!(
            !PathBuf::from(format!("/proc/{pid}")).exists(),
            "process stopped"
        );
        assert!(!dir.exists() && !lab_slice.exists(), "cgroups removed");
    }
}
