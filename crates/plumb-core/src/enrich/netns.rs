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
//! used to attribute; IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are
//! looked up as the IPv4 address they carry.
//!
//! This runs on the ring-buffer reader's thread, so its cost is bounded:
//! a rescan happens at most every `min_rescan`, enters at most `max_reads`
//! namespaces (new ones first, then those read longest ago), and lookups of
//! unknown addresses in between are answered "unknown" at once and counted
//! ([`NetStats::skipped_lookups`]) instead of waiting for a scan. Cached
//! answers expire: a namespace's addresses are read again once they are
//! older than `addr_ttl`, and a cached answer whose namespace has gone (a
//! pod deleted, its address soon reused) is dropped at the next check.

use super::cgroup;
use crate::event::Workload;
use std::collections::{HashMap, HashSet};
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
    /// A process inside it, if any (one in a container where there is one).
    pub pid: Option<u32>,
    /// Its owner (pod/container), empty for the host and unknown owners.
    pub workload: Arc<Workload>,
    /// The host's own network namespace.
    pub host: bool,
}

/// A namespace as one listing found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    pub inode: u32,
    /// A file to enter it by: /run/netns/NAME or /proc/PID/ns/net.
    pub path: PathBuf,
    pub name: Option<String>,
    /// Processes inside it, in /proc order.
    pub pids: Vec<u32>,
    pub host: bool,
}

/// The system calls behind the resolver, so its policy is tested without
/// root (see the tests below); [`HostScanner`] is the real one.
pub trait Scanner: Send {
    /// Every network namespace now.
    fn list(&mut self) -> Vec<Listed>;
    /// The addresses configured inside each of `paths`.
    fn addresses(&mut self, paths: &[PathBuf]) -> Vec<Vec<IpAddr>>;
    /// The owner of a process, from its cgroup.
    fn workload(&mut self, pid: u32) -> Workload;
    /// Is the namespace still there (cheap: one stat)?
    fn alive(&mut self, path: &Path, inode: u32) -> bool;
}

/// Counters of the resolver's work, for the run's statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Rescans done (each lists the namespaces and reads some).
    pub rescans: u64,
    /// Namespaces entered to read their addresses.
    pub reads: u64,
    /// Lookups of unknown addresses or namespaces answered "unknown"
    /// without a rescan, because the last one was too recent.
    pub skipped_lookups: u64,
}

struct Space {
    info: NetnsInfo,
    path: PathBuf,
    pids: Vec<u32>,
    addrs: Vec<IpAddr>,
    /// When the addresses were read; `None`: not yet.
    read_at: Option<Instant>,
    /// When it was last seen alive.
    checked: Instant,
    /// `info.pid` is in a container (or this is the host): settled.
    owner_found: bool,
}

/// Address → namespace → owner.
pub struct NetResolver {
    scanner: Box<dyn Scanner>,
    spaces: HashMap<u32, Space>,
    by_ip: HashMap<IpAddr, u32>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
    addr_ttl: Duration,
    check_every: Duration,
    max_reads: usize,
    stats: NetStats,
}

impl Default for NetResolver {
    fn default() -> Self {
        Self::new()
    }
}

/// Addresses that can name one namespace (not loopback, unspecified or
/// link-local, which every namespace has).
fn attributable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

fn ns_inode(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The workload of a process, from its cgroup file (v2 line first).
pub fn workload_of_pid(pid: u32) -> Workload {
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

/// Read the addresses of one namespace from a thread that has entered it.
///
/// # Safety
/// Must run on a thread that may change its network namespace (a thread
/// made for this, never one that goes on to do other work).
unsafe fn addresses_here(path: &Path) -> Vec<IpAddr> {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
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

/// Every network namespace of the host now, with the processes inside
/// each (what [`HostScanner`] lists; no namespace is entered).
pub fn list_namespaces() -> Vec<Listed> {
    HostScanner.list()
}

/// The real scanner: /run/netns, /proc, setns + getifaddrs.
#[derive(Debug, Default)]
pub struct HostScanner;

impl Scanner for HostScanner {
    fn list(&mut self) -> Vec<Listed> {
        // The host's namespace is init's; where /proc/1 cannot be read (a
        // sandbox), plumb's own, since it runs in the host's namespace.
        let host = ["/proc/1/ns/net", "/proc/self/ns/net"]
            .iter()
            .find_map(|p| std::fs::read_link(p).ok())
            .and_then(|l| ns_inode(&l.to_string_lossy()));
        let mut by: HashMap<u32, Listed> = HashMap::new();
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let path = e.path();
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let inode = meta.ino() as u32;
                let l = by.entry(inode).or_insert_with(|| Listed {
                    inode,
                    path: path.clone(),
                    ..Default::default()
                });
                l.name = Some(e.file_name().to_string_lossy().into_owned());
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
                by.entry(inode)
                    .or_insert_with(|| Listed {
                        inode,
                        path,
                        ..Default::default()
                    })
                    .pids
                    .push(pid);
            }
        }
        by.into_values()
            .map(|mut l| {
                l.host = Some(l.inode) == host;
                l
            })
            .collect()
    }

    fn addresses(&mut self, paths: &[PathBuf]) -> Vec<Vec<IpAddr>> {
        let paths = paths.to_vec();
        let n = paths.len();
        // One thread enters each namespace in turn and then ends.
        std::thread::spawn(move || {
            paths
                .iter()
                // SAFETY: this thread exists only to do this.
                .map(|p| unsafe { addresses_here(p) })
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap_or_else(|_| vec![Vec::new(); n])
    }

    fn workload(&mut self, pid: u32) -> Workload {
        workload_of_pid(pid)
    }

    fn alive(&mut self, path: &Path, inode: u32) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.ino() as u32 == inode)
    }
}

impl NetResolver {
    pub fn new() -> Self {
        Self::with_scanner(Box::new(HostScanner))
    }

    pub fn with_scanner(scanner: Box<dyn Scanner>) -> Self {
        NetResolver {
            scanner,
            spaces: HashMap::new(),
            by_ip: HashMap::new(),
            last_scan: None,
            min_rescan: Duration::from_secs(2),
            addr_ttl: Duration::from_secs(30),
            check_every: Duration::from_secs(1),
            max_reads: 64,
            stats: NetStats::default(),
        }
    }

    /// Change the limits: at most one rescan per `min_rescan`, entering at
    /// most `max_reads` namespaces; addresses re-read after `addr_ttl`; a
    /// cached answer's namespace checked for life every `check_every`.
    pub fn with_limits(
        mut self,
        min_rescan: Duration,
        max_reads: usize,
        addr_ttl: Duration,
        check_every: Duration,
    ) -> Self {
        (
            self.min_rescan,
            self.max_reads,
            self.addr_ttl,
            self.check_every,
        ) = (min_rescan, max_reads.max(1), addr_ttl, check_every);
        self
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Rescan everything now, reading every namespace's addresses (tests
    /// after building a lab, the audit's namespace list).
    pub fn rescan(&mut self) {
        self.scan(usize::MAX);
    }

    fn scan(&mut self, max_reads: usize) {
        let now = Instant::now();
        self.last_scan = Some(now);
        self.stats.rescans += 1;
        let listed = self.scanner.list();
        let present: HashSet<u32> = listed.iter().map(|l| l.inode).collect();
        self.spaces.retain(|inode, _| present.contains(inode));
        for l in listed {
            let s = self.spaces.entry(l.inode).or_insert_with(|| Space {
                info: NetnsInfo {
                    inode: l.inode,
                    ..Default::default()
                },
                path: l.path.clone(),
                pids: Vec::new(),
                addrs: Vec::new(),
                read_at: None,
                checked: now,
                owner_found: false,
            });
            s.path = l.path;
            s.checked = now;
            s.info.name = l.name;
            s.info.host = l.host;
            // Keep the owner while the process that named it is still here.
            if s.info.pid.is_some_and(|p| !l.pids.contains(&p)) {
                s.info.pid = None;
                s.info.workload = Arc::default();
                s.owner_found = false;
            }
            s.pids = l.pids;
        }
        self.name_owners();
        self.read_addresses(max_reads, now);
        self.rebuild();
    }

    /// Pick, for each namespace not settled yet, the process that names its
    /// owner: the first in a container, else the first (and look again at
    /// the next scan: a shell that entered the namespace may come first).
    fn name_owners(&mut self) {
        for s in self.spaces.values_mut() {
            if s.owner_found || s.pids.is_empty() {
                continue;
            }
            if s.info.host {
                s.info.pid = s.pids.first().copied();
                s.owner_found = true;
                continue;
            }
            let mut chosen = None;
            for &pid in &s.pids {
                let w = self.scanner.workload(pid);
                if !w.is_empty() {
                    chosen = Some((pid, w));
                    break;
                }
            }
            match chosen {
                Some((pid, w)) => {
                    s.info.pid = Some(pid);
                    s.info.workload = Arc::new(w);
                    s.owner_found = true;
                }
                None => {
                    s.info.pid = s.pids.first().copied();
                    s.info.workload = Arc::default();
                }
            }
        }
    }

    /// Read the addresses of up to `max` namespaces: those never read
    /// first, then those read longest ago, if older than `addr_ttl`.
    fn read_addresses(&mut self, max: usize, now: Instant) {
        let mut due: Vec<(Option<Instant>, u32)> = self
            .spaces
            .iter()
            .filter(|(_, s)| {
                s.read_at
                    .is_none_or(|t| now.duration_since(t) >= self.addr_ttl)
            })
            .map(|(i, s)| (s.read_at, *i))
            .collect();
        due.sort();
        due.truncate(max);
        if due.is_empty() {
            return;
        }
        let paths: Vec<PathBuf> = due
            .iter()
            .filter_map(|(_, i)| self.spaces.get(i).map(|s| s.path.clone()))
            .collect();
        let lists = self.scanner.addresses(&paths);
        self.stats.reads += paths.len() as u64;
        for ((_, inode), addrs) in due.iter().zip(lists) {
            if let Some(s) = self.spaces.get_mut(inode) {
                s.addrs = addrs.into_iter().filter(attributable).collect();
                s.read_at = Some(now);
            }
        }
    }

    /// Address → namespace from every namespace's last read; an address
    /// found in two namespaces names neither.
    fn rebuild(&mut self) {
        let mut by_ip: HashMap<IpAddr, Option<u32>> = HashMap::new();
        for (inode, s) in &self.spaces {
            for ip in &s.addrs {
                by_ip
                    .entry(*ip)
                    .and_modify(|n| {
                        if *n != Some(*inode) {
                            *n = None;
                        }
                    })
                    .or_insert(Some(*inode));
            }
        }
        self.by_ip = by_ip
            .into_iter()
            .filter_map(|(ip, n)| Some((ip, n?)))
            .collect();
    }

    /// Rescan if the last one is old enough; `false` if it was too recent.
    fn try_rescan(&mut self) -> bool {
        if self
            .last_scan
            .is_some_and(|t| t.elapsed() < self.min_rescan)
        {
            return false;
        }
        self.scan(self.max_reads);
        true
    }

    /// Every namespace found by the last scan.
    pub fn all(&self) -> Vec<NetnsInfo> {
        self.spaces.values().map(|s| s.info.clone()).collect()
    }

    /// The namespace in which `ip` is a local address.
    pub fn netns_of(&mut self, ip: IpAddr) -> Option<u32> {
        let ip = ip.to_canonical();
        if !attributable(&ip) {
            return None;
        }
        if let Some(&inode) = self.by_ip.get(&ip) {
            if self.still_valid(inode) {
                return Some(inode);
            }
        } else if !self.try_rescan() {
            self.stats.skipped_lookups += 1;
            return None;
        }
        self.by_ip.get(&ip).copied()
    }

    /// Is a cached answer naming `inode` still good? Checks (at most every
    /// `check_every`) that the namespace is alive, and rescans (rate
    /// limited) when it is gone or its addresses are older than `addr_ttl`.
    fn still_valid(&mut self, inode: u32) -> bool {
        let Some(s) = self.spaces.get_mut(&inode) else {
            return false;
        };
        let stale = s.read_at.is_none_or(|t| t.elapsed() >= self.addr_ttl);
        if s.checked.elapsed() >= self.check_every {
            if !self.scanner.alive(&s.path, inode) {
                // Gone: its addresses may belong to someone else by now.
                self.spaces.remove(&inode);
                self.rebuild();
                self.try_rescan();
                return false;
            }
            s.checked = Instant::now();
        }
        if stale {
            self.try_rescan();
            return self.spaces.contains_key(&inode);
        }
        true
    }

    /// What is known of namespace `inode`.
    pub fn info(&mut self, inode: u32) -> Option<NetnsInfo> {
        if inode == 0 {
            return None;
        }
        if !self.spaces.contains_key(&inode) && !self.try_rescan() {
            self.stats.skipped_lookups += 1;
            return None;
        }
        self.spaces.get(&inode).map(|s| s.info.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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

    /// A host whose namespaces the test changes, counting what is asked.
    #[derive(Default)]
    struct World {
        spaces: Vec<(Listed, Vec<IpAddr>)>,
        lists: u32,
        reads: Vec<PathBuf>,
    }

    #[derive(Clone)]
    struct Fake(Arc<Mutex<World>>);

    impl Scanner for Fake {
        fn list(&mut self) -> Vec<Listed> {
            let mut w = self.0.lock().unwrap();
            w.lists += 1;
            w.spaces.iter().map(|(l, _)| l.clone()).collect()
        }
        fn addresses(&mut self, paths: &[PathBuf]) -> Vec<Vec<IpAddr>> {
            let mut w = self.0.lock().unwrap();
            w.reads.extend(paths.iter().cloned());
            paths
                .iter()
                .map(|p| {
                    w.spaces
                        .iter()
                        .find(|(l, _)| &l.path == p)
                        .map(|(_, a)| a.clone())
                        .unwrap_or_default()
                })
                .collect()
        }
        fn workload(&mut self, pid: u32) -> Workload {
            Workload {
                pod_uid: (pid >= 1000).then(|| format!("uid-of-{pid}")),
                ..Default::default()
            }
        }
        fn alive(&mut self, path: &Path, inode: u32) -> bool {
            let w = self.0.lock().unwrap();
            w.spaces
                .iter()
                .any(|(l, _)| l.inode == inode && l.path == path)
        }
    }

    fn space(inode: u32, pids: &[u32], addrs: &[&str]) -> (Listed, Vec<IpAddr>) {
        (
            Listed {
                inode,
                path: PathBuf::from(format!("/fake/{inode}")),
                name: None,
                pids: pids.to_vec(),
                host: false,
            },
            addrs.iter().map(|a| a.parse().unwrap()).collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolver(w: &Fake, min_rescan: Duration, max_reads: usize) -> NetResolver {
        NetResolver::with_scanner(Box::new(w.clone())).with_limits(
            min_rescan,
            max_reads,
            Duration::from_secs(3600),
            Duration::ZERO,
        )
    }

    #[test]
    fn a_flood_of_unknown_addresses_costs_one_scan_and_is_counted() {
        let w = Fake(Arc::new(Mutex::new(World {
            spaces: vec![space(7, &[1000], &["10.1.0.2"])],
            ..Default::default()
        })));
        let mut r = resolver(&w, Duration::from_secs(3600), 64);
        assert_eq!(r.netns_of(ip("10.1.0.2")), Some(7));
        for i in 0..1000u32 {
            let outside = IpAddr::from((0xc633_6400u32 + i).to_be_bytes());
            assert_eq!(r.netns_of(outside), None);
        }
        assert_eq!(
            w.0.lock().unwrap().lists,
            1,
            "one scan, not one per address"
        );
        assert_eq!(r.stats().skipped_lookups, 1000);
        assert_eq!(r.stats().rescans, 1);
        // Known addresses are still answered from the cache.
        assert_eq!(r.netns_of(ip("10.1.0.2")), Some(7));
    }

    #[test]
    fn an_address_reused_by_a_new_namespace_moves_with_it() {
        let w = Fake(Arc::new(Mutex::new(World {
            spaces: vec![space(7, &[1000], &["10.1.0.2"])],
            ..Default::default()
        })));
        let mut r = resolver(&w, Duration::ZERO, 64);
        assert_eq!(r.netns_of(ip("10.1.0.2")), Some(7));
        assert_eq!(
            r.info(7).unwrap().workload.pod_uid.as_deref(),
            Some("uid-of-1000")
        );
        // The pod goes away; a new one gets its address.
        w.0.lock().unwrap().spaces = vec![space(9, &[1001], &["10.1.0.2"])];
        assert_eq!(r.netns_of(ip("10.1.0.2")), Some(9));
        assert!(r.info(7).is_none());
        assert_eq!(
            r.info(9).unwrap().workload.pod_uid.as_deref(),
            Some("uid-of-1001")
        );
    }

    #[test]
    fn rescans_are_bounded_and_new_namespaces_are_read_first() {
        let spaces: Vec<_> = (0..100u32)
            .map(|i| {
                space(
                    100 + i,
                    &[2000 + i],
                    &[&format!("10.2.{}.{}", i / 200, i % 200 + 2)],
                )
            })
            .collect();
        let w = Fake(Arc::new(Mutex::new(World {
            spaces,
            ..Default::default()
        })));
        let mut r = resolver(&w, Duration::ZERO, 32);
        r.netns_of(ip("10.9.9.9"));
        assert_eq!(w.0.lock().unwrap().reads.len(), 32, "at most 32 entered");
        r.netns_of(ip("10.9.9.9"));
        r.netns_of(ip("10.9.9.9"));
        r.netns_of(ip("10.9.9.9"));
        let reads = w.0.lock().unwrap().reads.clone();
        assert_eq!(reads.len(), 100, "each namespace once, none twice");
        let unique: HashSet<_> = reads.iter().collect();
        assert_eq!(unique.len(), 100);
        assert_eq!(r.netns_of(ip("10.2.0.99")), Some(197));
    }

    #[test]
    fn v4_mapped_addresses_attribute_as_ipv4_and_duplicates_never() {
        let w = Fake(Arc::new(Mutex::new(World {
            spaces: vec![
                space(7, &[1000], &["10.1.0.2", "10.1.0.9"]),
                space(8, &[1001], &["10.1.0.9"]),
            ],
            ..Default::default()
        })));
        let mut r = resolver(&w, Duration::ZERO, 64);
        assert_eq!(r.netns_of(ip("::ffff:10.1.0.2")), Some(7));
        assert_eq!(r.netns_of(ip("10.1.0.9")), None, "in two namespaces");
    }

    #[test]
    fn the_owner_is_a_process_in_a_container_not_a_passer_by() {
        // pid 5 (a shell that entered the namespace) comes first in /proc.
        let w = Fake(Arc::new(Mutex::new(World {
            spaces: vec![space(7, &[5, 1000], &["10.1.0.2"])],
            ..Default::default()
        })));
        let mut r = resolver(&w, Duration::ZERO, 64);
        let info = r.info(7).unwrap();
        assert_eq!(info.pid, Some(1000));
        assert_eq!(info.workload.pod_uid.as_deref(), Some("uid-of-1000"));
    }
}
