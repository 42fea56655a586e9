//! Monotonic totals per series, fed from the kernel's counter maps.
//!
//! The kernel counts per network namespace or cgroup; series are per pod.
//! Each refresh adds what a key counted since the last refresh to the
//! series its subject belongs to now, so a key whose owner changes (an
//! inode reused by another pod) moves on without taking anything back, and
//! a key deleted from its map (its namespace or cgroup is gone) leaves its
//! final count behind. Every series only grows, until its pod has been gone
//! long enough that the cap lets it go.

use crate::attribution::{Attribution, Owner};
use crate::counters::{CounterStore, Key, MapFill, Subject, TcpWhat};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A counter family and its own labels, without the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Series {
    /// Drops by reason value.
    Drop(u32),
    Tcp(TcpWhat),
    Exec,
}

impl Series {
    fn of(k: &Key) -> Series {
        match *k {
            Key::Drop { reason, .. } => Series::Drop(reason),
            Key::Tcp { what, .. } => Series::Tcp(what),
            Key::Exec { .. } => Series::Exec,
        }
    }
}

/// The totals and what is needed to keep them growing.
pub struct Ledger {
    /// What each key had counted at the last refresh.
    last: HashMap<Key, u64>,
    totals: BTreeMap<(Series, Owner), u64>,
    /// How often keys of vanished subjects are looked for and removed.
    gc_every: Duration,
    gc_at: Option<Instant>,
    pub map_full: u64,
    pub maps: Vec<MapFill>,
    /// Keys removed because their subject was gone.
    pub removed: u64,
}

impl Ledger {
    pub const DEFAULT_GC_EVERY: Duration = Duration::from_secs(30);

    pub fn new(gc_every: Duration) -> Self {
        Ledger {
            last: HashMap::new(),
            totals: BTreeMap::new(),
            gc_every,
            gc_at: None,
            map_full: 0,
            maps: Vec::new(),
            removed: 0,
        }
    }

    fn add(&mut self, key: Key, value: u64, labels: Owner) {
        let last = self.last.entry(key).or_insert(0);
        // Smaller than last time: a new slot (ours were deleted by us, and
        // we forget their state then), counted from zero.
        let delta = value.checked_sub(*last).unwrap_or(value);
        *last = value;
        if delta > 0 {
            *self.totals.entry((Series::of(&key), labels)).or_insert(0) += delta;
        } else {
            self.totals.entry((Series::of(&key), labels)).or_insert(0);
        }
    }

    /// Read the kernel's counters into the totals; every `gc_every`, also
    /// remove the keys of namespaces and cgroups that no longer exist.
    pub fn refresh(&mut self, store: &dyn CounterStore, att: &mut Attribution, now: Instant) {
        let snap = store.snapshot();
        let mut present = BTreeSet::new();
        for (key, v) in &snap.values {
            let labels = att.labels(key.subject(), now);
            self.add(*key, *v, labels);
            present.insert(*key);
        }
        // Keys that left the maps without us: nothing more to expect.
        self.last.retain(|k, _| present.contains(k));
        self.map_full = snap.map_full;
        self.maps = snap.maps;
        if self
            .gc_at
            .is_none_or(|t| now.saturating_duration_since(t) >= self.gc_every)
        {
            self.gc_at = Some(now);
            self.collect(store, att, &present, now);
        }
        for owner in att.expire(now) {
            self.totals.retain(|(_, o), _| *o != owner);
        }
    }

    fn collect(
        &mut self,
        store: &dyn CounterStore,
        att: &mut Attribution,
        present: &BTreeSet<Key>,
        now: Instant,
    ) {
        let subjects: Vec<Subject> = present
            .iter()
            .map(Key::subject)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let alive = att.existing(&subjects);
        for (s, _) in subjects.iter().zip(alive).filter(|(_, a)| !a) {
            let labels = att.labels(*s, now);
            for key in present.iter().filter(|k| k.subject() == *s) {
                if let Some(last_count) = store.remove(*key) {
                    self.add(*key, last_count, labels.clone());
                    self.removed += 1;
                    for m in &mut self.maps {
                        if m.map == key.map_name() {
                            m.entries = m.entries.saturating_sub(1);
                        }
                    }
                }
                self.last.remove(key);
            }
            att.forget(*s);
        }
    }

    /// The series of one family, by owner.
    pub fn series(&self) -> impl Iterator<Item = (&Series, &Owner, u64)> {
        self.totals.iter().map(|((s, o), v)| (s, o, *v))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attribution::tests::{pod, Fake};
    use crate::attribution::AttributionConfig;
    use std::sync::Mutex;

    /// Counter maps in memory.
    #[derive(Default)]
    pub struct Table(pub Mutex<BTreeMap<Key, u64>>);

    impl Table {
        pub fn bump(&self, k: Key, n: u64) {
            *self.0.lock().unwrap().entry(k).or_insert(0) += n;
        }
    }

    impl CounterStore for Table {
        fn snapshot(&self) -> crate::counters::Snapshot {
            let t = self.0.lock().unwrap();
            crate::counters::Snapshot {
                values: t.iter().map(|(k, v)| (*k, *v)).collect(),
                map_full: 0,
                maps: vec![MapFill {
                    map: "tcp_counts",
                    entries: t.len(),
                    max_entries: 16384,
                }],
            }
        }
        fn remove(&self, key: Key) -> Option<u64> {
            self.0.lock().unwrap().remove(&key)
        }
        fn prog_ids(&self) -> Vec<u32> {
            Vec::new()
        }
        fn healthy(&self) -> bool {
            true
        }
    }

    fn total(l: &Ledger, s: Series, o: &Owner) -> Option<u64> {
        l.series()
            .find(|(ss, oo, _)| **ss == s && *oo == o)
            .map(|(_, _, v)| v)
    }

    #[test]
    fn a_gone_namespace_leaves_its_count_and_its_key_is_deleted() {
        let f = Fake::default();
        let ns = Subject::Netns(4026532200);
        {
            let mut w = f.0.lock().unwrap();
            w.owners.insert(ns, pod("shop", "web", "u-web"));
            w.named.insert("u-web".into());
        }
        let cfg = AttributionConfig {
            max_pods: 1,
            ttl: Duration::from_secs(60),
            retention: Duration::from_secs(300),
        };
        let mut att = Attribution::new(Box::new(f.clone()), cfg);
        let table = Table::default();
        let mut l = Ledger::new(Duration::from_secs(30));
        let key = Key::Tcp {
            netns: 4026532200,
            what: TcpWhat::Connect,
        };
        let web = pod("shop", "web", "u-web");
        let t0 = Instant::now();
        table.bump(key, 5);
        l.refresh(&table, &mut att, t0);
        assert_eq!(total(&l, Series::Tcp(TcpWhat::Connect), &web), Some(5));
        // Counts made before the namespace went still arrive, then the key
        // is removed at the next collection.
        table.bump(key, 2);
        f.0.lock().unwrap().gone.insert(ns);
        l.refresh(&table, &mut att, t0 + Duration::from_secs(10));
        assert_eq!(total(&l, Series::Tcp(TcpWhat::Connect), &web), Some(7));
        assert_eq!(l.removed, 0, "not collected before gc_every");
        table.bump(key, 1);
        l.refresh(&table, &mut att, t0 + Duration::from_secs(31));
        assert_eq!(total(&l, Series::Tcp(TcpWhat::Connect), &web), Some(8));
        assert_eq!(l.removed, 1);
        assert!(table.0.lock().unwrap().is_empty(), "the kernel key is gone");
        assert_eq!(l.maps[0].entries, 0);
        // The inode is reused by another pod: its counts start from zero
        // under the new pod, and web's series does not move.
        let other = pod("shop", "db", "u-db");
        {
            let mut w = f.0.lock().unwrap();
            w.gone.clear();
            w.owners.insert(ns, other.clone());
            w.named.insert("u-db".into());
        }
        table.bump(key, 4);
        l.refresh(&table, &mut att, t0 + Duration::from_secs(40));
        assert_eq!(total(&l, Series::Tcp(TcpWhat::Connect), &web), Some(8));
        // max_pods is 1 and web was seen 30 s ago: db folds into other.
        assert_eq!(
            total(&l, Series::Tcp(TcpWhat::Connect), &Owner::other()),
            Some(4)
        );
        // Once web has been gone for the retention, its series leave the
        // exposition and db gets web's place for its new counts.
        table.bump(key, 1);
        l.refresh(&table, &mut att, t0 + Duration::from_secs(332));
        assert_eq!(total(&l, Series::Tcp(TcpWhat::Connect), &web), None);
        table.bump(key, 3);
        att.forget(ns); // as a TTL expiry would
        l.refresh(&table, &mut att, t0 + Duration::from_secs(333));
        assert_eq!(total(&l, Series::Tcp(TcpWhat::Connect), &other), Some(3));
        assert_eq!(
            total(&l, Series::Tcp(TcpWhat::Connect), &Owner::other()),
            Some(5),
            "other never goes back"
        );
    }
}
