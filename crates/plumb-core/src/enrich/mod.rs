//! Enrichment: from the cgroup id the kernel gave us to container and pod.
//!
//! cgroup id → cgroup path (asked of the kernel by file handle, so a process
//! that exited right after its event is still attributed) → what the path
//! says (`cgroup::parse`) → names from a metadata source (a container
//! runtime's socket, or the agent's Kubernetes pod watcher). Results are kept
//! in a bounded LRU cache and refreshed after a while, because a pod's name
//! can become known after its first event.

pub mod cgroup;
pub mod cgroupfs;
pub mod created;
pub mod netns;
pub mod runtime;

use crate::event::Workload;
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Adds names to a workload that the cgroup path only identifies.
pub trait MetadataSource: Send + Sync {
    /// Short name for logs ("docker", "kubernetes").
    fn name(&self) -> &'static str;
    /// Fill in what this source knows (pod, namespace, container name).
    fn fill(&self, w: &mut Workload);
}

struct Entry {
    path: Option<Arc<str>>,
    workload: Arc<Workload>,
    at: Instant,
}

/// A workload read from `/proc/PID/cgroup` (cgroup v1), and when.
struct ByPid {
    workload: Arc<Workload>,
    at: Instant,
}

/// Cache statistics, exported by the agent.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnrichStats {
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
}

/// Turns cgroup ids into workloads, with a bounded cache.
pub struct Enricher {
    fs: Option<cgroupfs::CgroupFs>,
    sources: Vec<Arc<dyn MetadataSource>>,
    cache: LruCache<u64, Entry>,
    /// cgroup v1 answers, per process: on v1 and hybrid hosts many
    /// processes share one (uninformative) v2 cgroup id, so an answer read
    /// for one process must never be given to another.
    by_pid: LruCache<u32, ByPid>,
    /// Are cgroup v1 hierarchies mounted (v1-only or hybrid host)?
    v1: bool,
    /// Where `PID/cgroup` files are read (`/proc`; a fixture in tests).
    proc_root: std::path::PathBuf,
    ttl_known: Duration,
    ttl_unknown: Duration,
    empty: Arc<Workload>,
    stats: EnrichStats,
    /// Built on first use: only network gadgets need it.
    net: Option<netns::NetResolver>,
    /// Namespace owners with names filled in, per namespace inode.
    netns_owners: HashMap<u32, (Instant, Option<netns::NetnsInfo>)>,
    /// Paths of cgroups made since the run started, for ids the kernel no
    /// longer knows (see [`Enricher::remember_new_cgroups`]).
    created: Option<created::CreatedCgroups>,
}

impl Enricher {
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// An enricher over this host's cgroup hierarchy and runtime sockets.
    pub fn new(sources: Vec<Arc<dyn MetadataSource>>) -> Self {
        Self::with_fs(
            cgroupfs::CgroupFs::discover(),
            sources,
            Self::DEFAULT_CAPACITY,
        )
    }

    pub fn with_fs(
        fs: Option<cgroupfs::CgroupFs>,
        sources: Vec<Arc<dyn MetadataSource>>,
        capacity: usize,
    ) -> Self {
        Enricher {
            fs,
            sources,
            cache: LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN)),
            by_pid: LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN)),
            v1: cgroupfs::v1_mounted(),
            proc_root: "/proc".into(),
            ttl_known: Duration::from_secs(300),
            ttl_unknown: Duration::from_secs(10),
            empty: Arc::new(Workload::default()),
            stats: EnrichStats::default(),
            net: None,
            netns_owners: HashMap::new(),
            created: None,
        }
    }

    /// From now on, remember the path of each cgroup made, so that the
    /// events of a container that ends before they are read are still
    /// named. An error (no permission for BPF) changes nothing else:
    /// callers may go on without it.
    pub fn remember_new_cgroups(&mut self) -> crate::error::Result<()> {
        if self.created.is_none() && self.fs.is_some() {
            self.created = Some(created::CreatedCgroups::start()?);
        }
        Ok(())
    }

    /// Read cgroup v1 paths from `PID/cgroup` files below `root` (tests).
    pub fn with_v1_proc_root(mut self, root: std::path::PathBuf) -> Self {
        self.v1 = true;
        self.proc_root = root;
        self
    }

    /// The cgroup v2 hierarchy in use, if any.
    pub fn cgroupfs(&self) -> Option<&cgroupfs::CgroupFs> {
        self.fs.as_ref()
    }

    /// The network resolver's counters, if network attribution was used.
    pub fn net_stats(&self) -> Option<netns::NetStats> {
        self.net.as_ref().map(|n| n.stats())
    }

    /// Network attribution (address → namespace → owner).
    pub fn net(&mut self) -> &mut netns::NetResolver {
        self.net.get_or_insert_with(netns::NetResolver::new)
    }

    /// Namespace `inode` with its owner's names filled in (cached).
    pub fn netns(&mut self, inode: u32) -> Option<netns::NetnsInfo> {
        if let Some((at, info)) = self.netns_owners.get(&inode) {
            if at.elapsed() < self.ttl_unknown
                || info.as_ref().is_some_and(|i| i.workload.pod.is_some())
            {
                return info.clone();
            }
        }
        let mut info = self.net().info(inode);
        if let Some(i) = info.as_mut() {
            if !i.workload.is_empty() {
                let mut w = (*i.workload).clone();
                self.fill_names(&mut w);
                i.workload = Arc::new(w);
            }
        }
        if self.netns_owners.len() > 4096 {
            self.netns_owners.clear();
        }
        self.netns_owners
            .insert(inode, (Instant::now(), info.clone()));
        info
    }

    /// The namespace holding address `ip`, with its owner.
    pub fn netns_of_ip(&mut self, ip: std::net::IpAddr) -> Option<netns::NetnsInfo> {
        let inode = self.net().netns_of(ip)?;
        self.netns(inode)
    }

    /// Fill a workload's names from the metadata sources.
    pub fn fill_names(&self, w: &mut Workload) {
        for s in &self.sources {
            s.fill(w);
        }
    }

    pub fn add_source(&mut self, s: Arc<dyn MetadataSource>) {
        self.sources.push(s);
        self.cache.clear();
    }

    pub fn stats(&self) -> EnrichStats {
        EnrichStats {
            entries: self.cache.len(),
            ..self.stats
        }
    }

    /// Path and workload of cgroup `id`; `pid` is used only where the
    /// cgroup v2 path says nothing (v1 hierarchies), and then the answer is
    /// kept for that process alone.
    pub fn resolve(&mut self, id: u64, pid: u32) -> (Option<Arc<str>>, Arc<Workload>) {
        if id == 0 {
            return (None, self.empty.clone());
        }
        let (path, w) = self.resolve_v2(id);
        if !w.is_empty() || pid == 0 || !self.v1 {
            return (path, w);
        }
        (path, self.resolve_v1(pid))
    }

    /// What the cgroup v2 path of `id` says, cached per id.
    fn resolve_v2(&mut self, id: u64) -> (Option<Arc<str>>, Arc<Workload>) {
        if let Some(e) = self.cache.get(&id) {
            let ttl = if e.workload.pod.is_some()
                || e.workload.container_id.is_none() && e.workload.pod_uid.is_none()
            {
                self.ttl_known
            } else {
                self.ttl_unknown
            };
            if e.at.elapsed() < ttl {
                self.stats.hits += 1;
                return (e.path.clone(), e.workload.clone());
            }
        }
        self.stats.misses += 1;
        let path = self.fs.as_ref().and_then(|fs| fs.path_of(id)).or_else(|| {
            // Gone already (a container that ended): the path it was made with.
            self.created.as_ref().and_then(|c| c.path_of(id))
        });
        let mut w = path.as_deref().map(cgroup::parse).unwrap_or_default();
        if !w.is_empty() {
            self.fill_names(&mut w);
        }
        let workload = if w.is_empty() {
            self.empty.clone()
        } else {
            Arc::new(w)
        };
        let path: Option<Arc<str>> = path.map(Arc::from);
        self.cache.put(
            id,
            Entry {
                path: path.clone(),
                workload: workload.clone(),
                at: Instant::now(),
            },
        );
        (path, workload)
    }

    /// What the v1 hierarchies say about process `pid` (`/proc/PID/cgroup`),
    /// cached for that process only and briefly, since pids are reused. A
    /// process that has already exited cannot be asked: it stays empty.
    fn resolve_v1(&mut self, pid: u32) -> Arc<Workload> {
        if let Some(e) = self.by_pid.get(&pid) {
            if e.at.elapsed() < self.ttl_unknown {
                self.stats.hits += 1;
                return e.workload.clone();
            }
        }
        self.stats.misses += 1;
        let mut w = std::fs::read_to_string(self.proc_root.join(format!("{pid}/cgroup")))
            .ok()
            .and_then(|s| cgroup::parse_proc_cgroup(&s))
            .unwrap_or_default();
        if !w.is_empty() {
            self.fill_names(&mut w);
        }
        let workload = if w.is_empty() {
            self.empty.clone()
        } else {
            Arc::new(w)
        };
        self.by_pid.put(
            pid,
            ByPid {
                workload: workload.clone(),
                at: Instant::now(),
            },
        );
        workload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Names;
    impl MetadataSource for Names {
        fn name(&self) -> &'static str {
            "test"
        }
        fn fill(&self, w: &mut Workload) {
            if w.pod_uid.as_deref() == Some("0b9a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d") {
                w.pod = Some("checkout-1".into());
                w.namespace = Some("shop".into());
            }
        }
    }

    #[test]
    fn resolves_through_a_fake_hierarchy_and_caches() {
        let dir = std::env::temp_dir().join(format!("plumb-enrich-{}", std::process::id()));
        let leaf = dir.join("kubepods/burstable/pod0b9a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d");
        std::fs::create_dir_all(&leaf).unwrap();
        let fs = cgroupfs::CgroupFs::at(dir.clone());
        let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&leaf).unwrap());
        let mut e = Enricher::with_fs(Some(fs), vec![Arc::new(Names)], 2);
        let (path, w) = e.resolve(id, 0);
        assert_eq!(
            path.as_deref(),
            Some("/kubepods/burstable/pod0b9a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d")
        );
        assert_eq!(w.pod.as_deref(), Some("checkout-1"));
        assert_eq!(w.namespace.as_deref(), Some("shop"));
        let _ = e.resolve(id, 0);
        assert_eq!(e.stats().hits, 1);
        assert_eq!(e.stats().entries, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn v1_answers_belong_to_their_process_only() {
        const ID: &str = "7c3ad5e8c1f4d1b8b5e9f0e3c2a1b4d6e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3";
        let dir = std::env::temp_dir().join(format!("plumb-v1-{}", std::process::id()));
        let root = dir.join("cgroup2");
        std::fs::create_dir_all(&root).unwrap();
        for (pid, contents) in [
            ("100", format!("12:memory:/docker/{ID}\n0::/\n")),
            ("200", "12:memory:/user.slice\n0::/\n".to_string()),
        ] {
            std::fs::create_dir_all(dir.join(pid)).unwrap();
            std::fs::write(dir.join(pid).join("cgroup"), contents).unwrap();
        }
        // Both processes sit in the v2 root: one id, two different answers.
        let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&root).unwrap());
        let mut e = Enricher::with_fs(Some(cgroupfs::CgroupFs::at(root)), vec![], 8)
            .with_v1_proc_root(dir.clone());
        assert_eq!(e.resolve(id, 100).1.container_id.as_deref(), Some(ID));
        assert!(e.resolve(id, 200).1.is_empty());
        assert_eq!(e.resolve(id, 100).1.container_id.as_deref(), Some(ID));
        // A process that is gone is not attributed.
        assert!(e.resolve(id, 300).1.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_ids_are_empty_not_guessed() {
        let mut e = Enricher::with_fs(None, vec![], 8);
        let (path, w) = e.resolve(123_456_789, 0);
        assert!(path.is_none());
        assert!(w.is_empty());
    }
}
