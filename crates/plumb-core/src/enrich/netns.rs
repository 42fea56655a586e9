//! Network attribution: which network namespace an address lives in, and
//! which pod or container owns a network namespace.
//!
//! Network events fire in softirq context, so the current task says nothing
//! about who they belong to. A packet's namespace (its device's, or its
//! socket's) and its addresses do. This module finds every network namespace
//! of the host (through /proc/PID/ns/net and the names under /run/netns),
//! lists the addresses configured inside each (entering it on a short-lived
//! thread), and names its owner from the cgroup of a process inside it.
//! Loopback and link-local addresses exist in every namespace and are never
//! used to attribute.

use super::cgroup;
use crate::event::Workload;
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What is known of one network namespace.
#[derive(Debug, Clone, Default)]
pub struct NetnsInfo {
    pub inode: u32,
    /// Its name under /run/netns, if it has one (`ip netns add NAME`).
    pub name: Option<String>,
    /// A process inside it, if any.
    pub pid: Option<u32>,
    /// Its owner (pod/container), empty for the host and unknown owners.
    pub workload: Arc<Workload>,
    /// The host's own network namespace.
    pub host: bool,
}

/// Address → namespace → owner, rescanned (at most every `min_rescan`) when
/// something unknown is asked for.
pub struct NetResolver {
    by_ip: HashMap<IpAddr, u32>,
    by_ns: HashMap<u32, NetnsInfo>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
}

impl Default for NetResolver {
    fn default() -> Self {
        Self::new()
    }
}

/// A namespace file to enter: /proc/PID/ns/net or /run/netns/NAME.
struct NsHandle {
    inode: u32,
    path: PathBuf,
}

fn attributable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// Addresses configured in the namespace at `path`, read from inside it.
fn addresses_in(path: &Path) -> Vec<IpAddr> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let Ok(f) = std::fs::File::open(&path) else {
            return Vec::new();
        };
        // SAFETY: setns on this short-lived thread only; getifaddrs' list is
        // walked while valid and freed once.
        unsafe {
            use std::os::fd::AsRawFd;
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Vec::new();
            }
            let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
            if libc::getifaddrs(&mut ifap) != 0 {
                return Vec::new();
            }
            let mut out = Vec::new();
            let mut p = ifap;
            while !p.is_null() {
                let a = (*p).ifa_addr;
                if !a.is_null() {
                    match (*a).sa_family as i32 {
                        libc::AF_INET => {
                            let sin = &*(a as *const libc::sockaddr_in);
                            out.push(IpAddr::from(
                                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                            ));
                        }
                        libc::AF_INET6 => {
                            let sin6 = &*(a as *const libc::sockaddr_in6);
                            out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                        }
                        _ => {}
                    }
                }
                p = (*p).ifa_next;
            }
            libc::freeifaddrs(ifap);
            out
        }
    })
    .join()
    .unwrap_or_default()
}

fn ns_inode(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The workload of a process, from its cgroup file (v2 line first).
fn workload_of_pid(pid: u32) -> Workload {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Workload::default();
    };
    let v2 = s
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(cgroup::parse)
        .unwrap_or_default();
    if !v2.is_empty() {
        return v2;
    }
    cgroup::parse_proc_cgroup(&s).unwrap_or_default()
}

impl NetResolver {
    pub fn new() -> Self {
        NetResolver {
            by_ip: HashMap::new(),
            by_ns: HashMap::new(),
            last_scan: None,
            min_rescan: Duration::from_secs(2),
        }
    }

    /// Rescan now (tests call this after building a lab).
    pub fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let host = std::fs::read_link("/proc/1/ns/net")
            .ok()
            .and_then(|l| ns_inode(&l.to_string_lossy()));
        let mut handles: HashMap<u32, NsHandle> = HashMap::new();
        let mut infos: HashMap<u32, NetnsInfo> = HashMap::new();
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let path = e.path();
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let inode = meta.ino() as u32;
                handles.entry(inode).or_insert(NsHandle {
                    inode,
                    path: path.clone(),
                });
                infos.entry(inode).or_default().name =
                    Some(e.file_name().to_string_lossy().into_owned());
            }
        }
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let path = e.path().join("ns/net");
                let Some(inode) = std::fs::read_link(&path)
                    .ok()
                    .and_then(|l| ns_inode(&l.to_string_lossy()))
                else {
                    continue;
                };
                let info = infos.entry(inode).or_default();
                if info.pid.is_none() {
                    info.pid = Some(pid);
                    handles.entry(inode).or_insert(NsHandle { inode, path });
                }
            }
        }
        let mut by_ip: HashMap<IpAddr, Option<u32>> = HashMap::new();
        for h in handles.values() {
            for ip in addresses_in(&h.path).into_iter().filter(attributable) {
                by_ip
                    .entry(ip)
                    .and_modify(|n| {
                        if *n != Some(h.inode) {
                            *n = None; // the same address in two namespaces: ambiguous
                        }
                    })
                    .or_insert(Some(h.inode));
            }
        }
        for (inode, info) in infos.iter_mut() {
            info.inode = *inode;
            info.host = Some(*inode) == host;
            if !info.host {
                if let Some(pid) = info.pid {
                    info.workload = Arc::new(workload_of_pid(pid));
                }
            }
        }
        self.by_ip = by_ip
            .into_iter()
            .filter_map(|(ip, n)| Some((ip, n?)))
            .collect();
        self.by_ns = infos;
    }

    fn maybe_rescan(&mut self) {
        if self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.min_rescan)
        {
            self.rescan();
        }
    }

    /// Every namespace found by the last scan.
    pub fn all(&self) -> Vec<NetnsInfo> {
        self.by_ns.values().cloned().collect()
    }

    /// The namespace in which `ip` is a local address.
    pub fn netns_of(&mut self, ip: IpAddr) -> Option<u32> {
        if !attributable(&ip) {
            return None;
        }
        if let Some(n) = self.by_ip.get(&ip) {
            return Some(*n);
        }
        self.maybe_rescan();
        self.by_ip.get(&ip).copied()
    }

    /// What is known of namespace `inode`.
    pub fn info(&mut self, inode: u32) -> Option<NetnsInfo> {
        if inode == 0 {
            return None;
        }
        if !self.by_ns.contains_key(&inode) {
            self.maybe_rescan();
        }
        self.by_ns.get(&inode).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespace_links() {
        assert_eq!(ns_inode("net:[4026531840]"), Some(4026531840));
        assert_eq!(ns_inode("mnt:[4026531840]"), None);
        assert_eq!(ns_inode("net:[x]"), None);
    }

    #[test]
    fn shared_addresses_never_attribute() {
        for ip in ["127.0.0.1", "::1", "fe80::1", "0.0.0.0"] {
            assert!(!attributable(&ip.parse().unwrap()), "{ip}");
        }
        assert!(attributable(&"10.244.1.7".parse().unwrap()));
        assert!(attributable(&"fd00::7".parse().unwrap()));
    }
}
