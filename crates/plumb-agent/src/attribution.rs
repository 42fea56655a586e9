//! Who a kernel counter belongs to: network namespaces and cgroups turned
//! into `namespace`/`pod`/`pod_uid` labels, with the cardinality cap.
//!
//! Pods come and go, and the kernel reuses network namespace inode numbers,
//! so no answer is kept for good: an answer is asked again after a TTL, and
//! at once when the pod watcher stops naming the pod (it was deleted). Pods
//! that no counter has mentioned for `retention` leave the cap's admitted
//! set, which makes room for new ones. The system calls sit behind
//! [`Lookup`], so all of this is unit-tested without root.

use crate::counters::Subject;
use plumb_core::enrich::cgroupfs::CgroupFs;
use plumb_core::enrich::{cgroup, MetadataSource};
use plumb_core::event::Workload;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The pod labels of a series. All empty: node level (not attributable to
/// a pod). Without the pod watcher only `pod_uid` is known (from the
/// cgroup path).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
}

impl Owner {
    pub fn other() -> Owner {
        Owner {
            namespace: "other".into(),
            pod: "other".into(),
            pod_uid: "other".into(),
        }
    }

    pub fn is_node(&self) -> bool {
        self.pod.is_empty() && self.pod_uid.is_empty()
    }

    /// Named by a metadata source (not just a uid from a cgroup path).
    fn named(&self) -> bool {
        !self.pod.is_empty() && !self.pod_uid.is_empty()
    }

    fn of(w: &Workload) -> Owner {
        if w.pod_uid.is_none() && w.pod.is_none() {
            return Owner::default();
        }
        Owner {
            namespace: w.namespace.clone().unwrap_or_default(),
            pod: w.pod.clone().unwrap_or_default(),
            pod_uid: w.pod_uid.clone().unwrap_or_default(),
        }
    }
}

/// The host side of attribution.
pub trait Lookup: Send {
    /// Who owns `s` now (no cached answer older than a few seconds).
    fn owner(&mut self, s: Subject) -> Owner;
    /// Do the metadata sources still name pod `uid`?
    fn names_pod(&self, uid: &str) -> bool;
    /// Which of `subjects` still exist, in order.
    fn existing(&mut self, subjects: &[Subject]) -> Vec<bool>;
    /// Entries in the lookup's own caches, by cache name.
    fn cache_entries(&self) -> Vec<(&'static str, usize)>;
}

/// Limits and lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct AttributionConfig {
    /// Distinct pods in labels before new ones fold into `other`.
    pub max_pods: usize,
    /// An answer naming a pod is asked again after this long.
    pub ttl: Duration,
    /// A pod no counter mentioned for this long leaves the cap's set (and
    /// its series leave the exposition).
    pub retention: Duration,
}

impl AttributionConfig {
    pub const DEFAULT_MAX_PODS: usize = 500;
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            max_pods: Self::DEFAULT_MAX_PODS,
            ttl: Duration::from_secs(60),
            retention: Duration::from_secs(600),
        }
    }
}

/// Unknown owners are asked again soon: a pod's namespace may not hold
/// its first process yet, and its metadata may arrive late.
const UNKNOWN_TTL: Duration = Duration::from_secs(2);

struct Cached {
    /// What the lookup answered.
    resolved: Owner,
    /// What the series carry (after the cap).
    labels: Owner,
    /// Names kept after the pod watcher forgot the pod (its namespace or
    /// cgroup was still running down): only the TTL applies then.
    orphaned: bool,
    at: Instant,
    used: Instant,
}

/// Subjects → labels, with the cap.
pub struct Attribution {
    lookup: Box<dyn Lookup>,
    cfg: AttributionConfig,
    subjects: HashMap<Subject, Cached>,
    /// Pods with their own series → the last time a counter counted for them.
    admitted: HashMap<Owner, Instant>,
    /// Pods folded into `other` lately (each counted once while it lasts).
    folded_now: HashMap<Owner, Instant>,
    folded: u64,
}

impl Attribution {
    pub fn new(lookup: Box<dyn Lookup>, cfg: AttributionConfig) -> Self {
        Attribution {
            lookup,
            cfg,
            subjects: HashMap::new(),
            admitted: HashMap::new(),
            folded_now: HashMap::new(),
            folded: 0,
        }
    }

    /// How many pods the cap has folded into `other` so far.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// Pods that have series of their own.
    pub fn admitted(&self) -> usize {
        self.admitted.len()
    }

    fn fresh(&self, c: &Cached, now: Instant) -> bool {
        let ttl = if c.resolved.is_node() {
            self.cfg.ttl.min(UNKNOWN_TTL)
        } else {
            self.cfg.ttl
        };
        if now.saturating_duration_since(c.at) >= ttl {
            return false;
        }
        // The pod watcher forgot the pod: deleted. Its namespace inode or
        // cgroup may now belong to someone else.
        c.orphaned || !c.resolved.named() || self.lookup.names_pod(&c.resolved.pod_uid)
    }

    /// The labels for what `s` counts now.
    pub fn labels(&mut self, s: Subject, now: Instant) -> Owner {
        if let Some(c) = self.subjects.get(&s) {
            if self.fresh(c, now) {
                let (resolved, labels) = (c.resolved.clone(), c.labels.clone());
                self.touch(&resolved, &labels, now);
                if let Some(c) = self.subjects.get_mut(&s) {
                    c.used = now;
                }
                return labels;
            }
        }
        let mut owner = self.lookup.owner(s);
        let mut orphaned = false;
        if let Some(old) = self.subjects.get(&s) {
            // Deleted from the API but still running down (same uid, no
            // names any more): it is still that pod.
            if !owner.pod_uid.is_empty() && owner.pod_uid == old.resolved.pod_uid && !owner.named()
            {
                owner = old.resolved.clone();
                orphaned = owner.named();
            }
        }
        let labels = self.cap(&owner, now);
        self.subjects.insert(
            s,
            Cached {
                resolved: owner,
                labels: labels.clone(),
                orphaned,
                at: now,
                used: now,
            },
        );
        labels
    }

    /// Apply the cap. Node-level series are never folded.
    pub fn cap(&mut self, owner: &Owner, now: Instant) -> Owner {
        if owner.is_node() {
            return owner.clone();
        }
        if let Some(t) = self.admitted.get_mut(owner) {
            *t = now;
            return owner.clone();
        }
        if self.admitted.len() < self.cfg.max_pods {
            self.admitted.insert(owner.clone(), now);
            self.folded_now.remove(owner);
            return owner.clone();
        }
        if self.folded_now.insert(owner.clone(), now).is_none() {
            self.folded += 1;
        }
        Owner::other()
    }

    fn touch(&mut self, resolved: &Owner, labels: &Owner, now: Instant) {
        if let Some(t) = self.admitted.get_mut(labels) {
            *t = now;
        } else if let Some(t) = self.folded_now.get_mut(resolved) {
            *t = now;
        }
    }

    /// `s` no longer exists: its next appearance is someone new.
    pub fn forget(&mut self, s: Subject) {
        self.subjects.remove(&s);
    }

    /// Which subjects still exist.
    pub fn existing(&mut self, subjects: &[Subject]) -> Vec<bool> {
        self.lookup.existing(subjects)
    }

    /// Drop pods no counter mentioned for `retention`; they are returned so
    /// their series can go too.
    pub fn expire(&mut self, now: Instant) -> Vec<Owner> {
        let keep = self.cfg.retention;
        let live = |t: &Instant| now.saturating_duration_since(*t) <= keep;
        let gone: Vec<Owner> = self
            .admitted
            .iter()
            .filter(|(_, t)| !live(t))
            .map(|(o, _)| o.clone())
            .collect();
        for o in &gone {
            self.admitted.remove(o);
        }
        self.folded_now.retain(|_, t| live(t));
        self.subjects.retain(|_, c| live(&c.used));
        gone
    }

    /// Entries of every attribution cache, by name.
    pub fn cache_entries(&self) -> Vec<(&'static str, usize)> {
        let netns = self
            .subjects
            .keys()
            .filter(|s| matches!(s, Subject::Netns(_)))
            .count();
        let mut v = vec![
            ("metrics_netns", netns),
            ("metrics_cgroups", self.subjects.len() - netns),
        ];
        v.extend(self.lookup.cache_entries());
        v
    }
}

/// The real lookup: cgroup paths through the cgroup v2 hierarchy, network
/// namespaces through the processes inside them, names from the metadata
/// sources (the pod watcher, container runtimes).
pub struct HostLookup {
    fs: Option<CgroupFs>,
    scan: Option<NetnsScan>,
    sources: Vec<Arc<dyn MetadataSource>>,
}

/// The host's network namespaces as seen by one walk of /proc.
struct NetnsScan {
    at: Instant,
    host: Option<u32>,
    /// Namespaces holding a process of a pod, with that pod.
    pods: HashMap<u32, Workload>,
    /// Every namespace in use (by a process or a /run/netns mount).
    live: HashSet<u32>,
}

/// One walk of /proc serves every question for this long.
const SCAN_FOR: Duration = Duration::from_secs(2);

fn netns_of_link(p: &std::path::Path) -> Option<u32> {
    let l = std::fs::read_link(p).ok()?;
    let s = l.to_string_lossy();
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The pod of a process, from its cgroup file (v2 line first).
fn pod_of_pid(dir: &std::path::Path) -> Option<Workload> {
    let s = std::fs::read_to_string(dir.join("cgroup")).ok()?;
    let v2 = s
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(cgroup::parse)
        .filter(|w| w.pod_uid.is_some());
    v2.or_else(|| cgroup::parse_proc_cgroup(&s).filter(|w| w.pod_uid.is_some()))
}

impl NetnsScan {
    /// A namespace belongs to a pod when any process inside it does: a
    /// debugger or `nsenter` that joined it (whatever its pid) does not
    /// hide the pod.
    fn now() -> NetnsScan {
        let host = netns_of_link(std::path::Path::new("/proc/1/ns/net"));
        let mut pods = HashMap::new();
        let mut live = HashSet::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let is_pid = e
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok());
                if !is_pid {
                    continue;
                }
                let dir = e.path();
                let Some(inode) = netns_of_link(&dir.join("ns/net")) else {
                    continue;
                };
                live.insert(inode);
                if Some(inode) == host || pods.contains_key(&inode) {
                    continue;
                }
                if let Some(w) = pod_of_pid(&dir) {
                    pods.insert(inode, w);
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                if let Ok(m) = std::fs::metadata(e.path()) {
                    live.insert(m.ino() as u32);
                }
            }
        }
        NetnsScan {
            at: Instant::now(),
            host,
            pods,
            live,
        }
    }
}

impl HostLookup {
    pub fn new(sources: Vec<Arc<dyn MetadataSource>>) -> Self {
        HostLookup {
            fs: CgroupFs::discover(),
            scan: None,
            sources,
        }
    }

    fn fill(&self, w: &mut Workload) {
        for s in &self.sources {
            s.fill(w);
        }
    }

    /// A walk of /proc at most SCAN_FOR old (`fresh`: made now).
    fn scan(&mut self, fresh: bool) -> &NetnsScan {
        let stale = fresh
            || self
                .scan
                .as_ref()
                .is_none_or(|s| s.at.elapsed() >= SCAN_FOR);
        if stale {
            self.scan = Some(NetnsScan::now());
        }
        self.scan.get_or_insert_with(NetnsScan::now)
    }
}

impl Lookup for HostLookup {
    fn owner(&mut self, s: Subject) -> Owner {
        match s {
            Subject::Netns(0) => Owner::default(),
            Subject::Netns(inode) => {
                let scan = self.scan(false);
                if Some(inode) == scan.host {
                    return Owner::default();
                }
                let Some(mut w) = scan.pods.get(&inode).cloned() else {
                    return Owner::default();
                };
                self.fill(&mut w);
                Owner::of(&w)
            }
            Subject::Cgroup(id) => {
                let Some(path) = self.fs.as_ref().and_then(|fs| fs.path_of(id)) else {
                    return Owner::default();
                };
                let mut w = cgroup::parse(&path);
                if !w.is_empty() {
                    self.fill(&mut w);
                }
                Owner::of(&w)
            }
        }
    }

    fn names_pod(&self, uid: &str) -> bool {
        let mut w = Workload {
            pod_uid: Some(uid.to_string()),
            ..Workload::default()
        };
        self.fill(&mut w);
        w.pod.is_some()
    }

    fn existing(&mut self, subjects: &[Subject]) -> Vec<bool> {
        let any_netns = subjects
            .iter()
            .any(|s| matches!(s, Subject::Netns(i) if *i != 0));
        let live = if any_netns {
            self.scan(true).live.clone()
        } else {
            HashSet::new()
        };
        subjects
            .iter()
            .map(|s| match *s {
                // Not a namespace: packets without a device or socket.
                Subject::Netns(0) => true,
                Subject::Netns(i) => live.contains(&i),
                // Without a hierarchy nothing can be told: keep.
                Subject::Cgroup(id) => self
                    .fs
                    .as_ref()
                    .is_none_or(|fs| id <= 1 || fs.path_of(id).is_some()),
            })
            .collect()
    }

    fn cache_entries(&self) -> Vec<(&'static str, usize)> {
        vec![("netns_pods", self.scan.as_ref().map_or(0, |s| s.pods.len()))]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A host made of tables the test edits.
    #[derive(Default)]
    pub struct World {
        pub owners: HashMap<Subject, Owner>,
        /// Pod uids the "pod watcher" names.
        pub named: HashSet<String>,
        pub gone: HashSet<Subject>,
        pub asked: u32,
    }

    #[derive(Clone, Default)]
    pub struct Fake(pub Arc<Mutex<World>>);

    impl Lookup for Fake {
        fn owner(&mut self, s: Subject) -> Owner {
            let mut w = self.0.lock().unwrap();
            w.asked += 1;
            let mut o = w.owners.get(&s).cloned().unwrap_or_default();
            if !w.named.contains(&o.pod_uid) {
                o.pod.clear();
                o.namespace.clear();
            }
            o
        }
        fn names_pod(&self, uid: &str) -> bool {
            self.0.lock().unwrap().named.contains(uid)
        }
        fn existing(&mut self, subjects: &[Subject]) -> Vec<bool> {
            let w = self.0.lock().unwrap();
            subjects.iter().map(|s| !w.gone.contains(s)).collect()
        }
        fn cache_entries(&self) -> Vec<(&'static str, usize)> {
            vec![]
        }
    }

    pub fn pod(ns: &str, name: &str, uid: &str) -> Owner {
        Owner {
            namespace: ns.into(),
            pod: name.into(),
            pod_uid: uid.into(),
        }
    }

    fn cfg(max_pods: usize) -> AttributionConfig {
        AttributionConfig {
            max_pods,
            ttl: Duration::from_secs(60),
            retention: Duration::from_secs(300),
        }
    }

    #[test]
    fn the_cap_folds_the_excess_counts_each_pod_once_and_admits_after_retention() {
        let mut a = Attribution::new(Box::new(Fake::default()), cfg(2));
        let t0 = Instant::now();
        let (pa, pb, pc) = (
            pod("shop", "a", "u-a"),
            pod("shop", "b", "u-b"),
            pod("shop", "c", "u-c"),
        );
        assert_eq!(a.cap(&pa, t0), pa);
        assert_eq!(a.cap(&pb, t0), pb);
        assert_eq!(a.cap(&pc, t0), Owner::other());
        // Asked again, c is still folded but counted once; a stays itself.
        assert_eq!(a.cap(&pc, t0 + Duration::from_secs(1)), Owner::other());
        assert_eq!(a.cap(&pa, t0 + Duration::from_secs(1)), pa);
        assert_eq!(a.folded(), 1);
        // Node-level series are never folded.
        assert_eq!(a.cap(&Owner::default(), t0), Owner::default());
        // b is not mentioned again; a is (at t0+200s). After retention b
        // goes, and c gets its place.
        assert_eq!(a.cap(&pa, t0 + Duration::from_secs(200)), pa);
        assert_eq!(a.cap(&pc, t0 + Duration::from_secs(200)), Owner::other());
        assert!(a.expire(t0 + Duration::from_secs(299)).is_empty());
        assert_eq!(a.expire(t0 + Duration::from_secs(301)), vec![pb.clone()]);
        assert_eq!(a.cap(&pc, t0 + Duration::from_secs(302)), pc);
        assert_eq!(a.admitted(), 2);
        // A newcomer now folds again, and is counted.
        assert_eq!(a.cap(&pb, t0 + Duration::from_secs(303)), Owner::other());
        assert_eq!(a.folded(), 2);
    }

    #[test]
    fn answers_expire_after_the_ttl_so_a_reused_inode_gets_its_new_pod() {
        let f = Fake::default();
        let s = Subject::Netns(4026532100);
        {
            let mut w = f.0.lock().unwrap();
            w.owners.insert(s, pod("shop", "old", "u-old"));
            w.named.insert("u-old".into());
        }
        let mut a = Attribution::new(Box::new(f.clone()), cfg(10));
        let t0 = Instant::now();
        assert_eq!(a.labels(s, t0), pod("shop", "old", "u-old"));
        // The kernel reused the inode for another pod; within the TTL the
        // cached answer stands (the key's GC usually notices first).
        {
            let mut w = f.0.lock().unwrap();
            w.owners.insert(s, pod("shop", "new", "u-new"));
            w.named.insert("u-new".into());
        }
        assert_eq!(
            a.labels(s, t0 + Duration::from_secs(30)),
            pod("shop", "old", "u-old")
        );
        assert_eq!(f.0.lock().unwrap().asked, 1);
        assert_eq!(
            a.labels(s, t0 + Duration::from_secs(61)),
            pod("shop", "new", "u-new")
        );
    }

    #[test]
    fn a_pod_the_watcher_deleted_is_asked_again_at_once() {
        let f = Fake::default();
        let s = Subject::Cgroup(4242);
        {
            let mut w = f.0.lock().unwrap();
            w.owners.insert(s, pod("shop", "web-1", "u-1"));
            w.named.insert("u-1".into());
        }
        let mut a = Attribution::new(Box::new(f.clone()), cfg(10));
        let t0 = Instant::now();
        assert_eq!(a.labels(s, t0), pod("shop", "web-1", "u-1"));
        // Deleted from the API while its cgroup runs down: asked again,
        // and still that pod (same uid) with its names.
        f.0.lock().unwrap().named.clear();
        assert_eq!(
            a.labels(s, t0 + Duration::from_secs(1)),
            pod("shop", "web-1", "u-1")
        );
        assert_eq!(
            a.labels(s, t0 + Duration::from_secs(2)),
            pod("shop", "web-1", "u-1")
        );
        assert_eq!(
            f.0.lock().unwrap().asked,
            2,
            "asked once more, not at every scrape"
        );
        // Once its cgroup is gone (the key's GC forgets it), the id's next
        // counts are someone else's.
        a.forget(s);
        {
            let mut w = f.0.lock().unwrap();
            w.owners.insert(s, pod("shop", "web-2", "u-2"));
            w.named.insert("u-2".into());
        }
        assert_eq!(
            a.labels(s, t0 + Duration::from_secs(3)),
            pod("shop", "web-2", "u-2")
        );
    }

    #[test]
    fn without_the_watcher_the_labels_carry_the_pod_uid() {
        let f = Fake::default();
        let s = Subject::Netns(7);
        f.0.lock()
            .unwrap()
            .owners
            .insert(s, pod("shop", "web-1", "u-1"));
        let mut a = Attribution::new(Box::new(f), cfg(10));
        assert_eq!(a.labels(s, Instant::now()), pod("", "", "u-1"));
        assert_eq!(
            a.labels(Subject::Netns(8), Instant::now()),
            Owner::default()
        );
    }
}
