//! Owner of the always-on kernel counters (`bpf/metrics.bpf.c`).
//!
//! The skeleton is not `Send`, so it lives on its own thread for as long as
//! the agent runs; the map file descriptors are duplicated into
//! [`libbpf_rs::MapHandle`]s that any thread may read at scrape time.
//! Dropping [`NodeCounters`] detaches and unloads everything.
//!
//! The maps are keyed by network namespace or cgroup, and both come and go
//! with pods. [`CounterStore::remove`] takes a key out together with its
//! final value (atomically, so no increment is lost in between); the
//! metrics' ledger folds that value into its user-space totals first.

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use plumb_core::loader;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc;
use std::thread::JoinHandle;

#[allow(clippy::all, dead_code, non_camel_case_types, unused_imports)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/metrics.skel.rs"));
}

/// `enum tcp_what` of `metrics.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpWhat {
    Retransmit,
    ResetSent,
    ResetReceived,
    Connect,
    Accept,
}

impl TcpWhat {
    fn from_raw(v: u32) -> Option<TcpWhat> {
        Some(match v {
            0 => TcpWhat::Retransmit,
            1 => TcpWhat::ResetSent,
            2 => TcpWhat::ResetReceived,
            3 => TcpWhat::Connect,
            4 => TcpWhat::Accept,
            _ => return None,
        })
    }

    fn raw(self) -> u32 {
        match self {
            TcpWhat::Retransmit => 0,
            TcpWhat::ResetSent => 1,
            TcpWhat::ResetReceived => 2,
            TcpWhat::Connect => 3,
            TcpWhat::Accept => 4,
        }
    }
}

/// One slot of one counter map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// (network namespace inode, drop reason value)
    Drop {
        netns: u32,
        reason: u32,
    },
    Tcp {
        netns: u32,
        what: TcpWhat,
    },
    Exec {
        cgroup: u64,
    },
}

/// What a key is counted for: the thing that names its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A network namespace by inode (0: unknown).
    Netns(u32),
    /// A cgroup v2 id.
    Cgroup(u64),
}

impl Key {
    pub fn subject(&self) -> Subject {
        match *self {
            Key::Drop { netns, .. } | Key::Tcp { netns, .. } => Subject::Netns(netns),
            Key::Exec { cgroup } => Subject::Cgroup(cgroup),
        }
    }

    fn map(&self) -> usize {
        match self {
            Key::Drop { .. } => 0,
            Key::Tcp { .. } => 1,
            Key::Exec { .. } => 2,
        }
    }

    /// The kernel map the key lives in.
    pub fn map_name(&self) -> &'static str {
        MAP_NAMES[self.map()]
    }

    fn bytes(&self) -> [u8; 8] {
        let halves = |a: u32, b: u32| {
            let mut k = [0u8; 8];
            k[..4].copy_from_slice(&a.to_ne_bytes());
            k[4..].copy_from_slice(&b.to_ne_bytes());
            k
        };
        match *self {
            Key::Drop { netns, reason } => halves(netns, reason),
            Key::Tcp { netns, what } => halves(netns, what.raw()),
            Key::Exec { cgroup } => cgroup.to_ne_bytes(),
        }
    }

    fn parse(map: usize, k: [u8; 8]) -> Option<Key> {
        let a = u32::from_ne_bytes([k[0], k[1], k[2], k[3]]);
        let b = u32::from_ne_bytes([k[4], k[5], k[6], k[7]]);
        Some(match map {
            0 => Key::Drop {
                netns: a,
                reason: b,
            },
            1 => Key::Tcp {
                netns: a,
                what: TcpWhat::from_raw(b)?,
            },
            2 => Key::Exec {
                cgroup: u64::from_ne_bytes(k),
            },
            _ => return None,
        })
    }
}

/// How full one counter map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: usize,
    pub max_entries: u32,
}

/// Every counter now, summed over CPUs. Values only grow while a key
/// stays in its map.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub values: Vec<(Key, u64)>,
    /// Increments lost because a map was full.
    pub map_full: u64,
    pub maps: Vec<MapFill>,
}

/// Where the metrics read their counters: the kernel maps, or (unit
/// tests) a table in memory.
pub trait CounterStore: Send + Sync {
    fn snapshot(&self) -> Snapshot;
    /// Delete `key`, returning what it had counted (None: it was not there).
    fn remove(&self, key: Key) -> Option<u64>;
    /// Programs of the counters (empty when nothing is loaded).
    fn prog_ids(&self) -> Vec<u32>;
    /// Are the counters still loaded and attached?
    fn healthy(&self) -> bool;
}

/// The loaded counters.
pub struct NodeCounters {
    /// drop_counts, tcp_counts, exec_counts (the order of `Key::map`).
    maps: [MapHandle; 3],
    full: MapHandle,
    pub prog_ids: Vec<u32>,
    /// Hooks this kernel does not have.
    pub skipped: Vec<String>,
    stop: Option<mpsc::Sender<()>>,
    owner: Option<JoinHandle<()>>,
}

const MAP_NAMES: [&str; 3] = ["drop_counts", "tcp_counts", "exec_counts"];

struct Handles {
    maps: [MapHandle; 4],
    prog_ids: Vec<u32>,
    skipped: Vec<String>,
}

/// Every program of the object; of the two kfree_skb programs only the
/// one that fits the kernel is loaded ([`drop_program_left_out`]).
const PROGS: &[&str] = &[
    "metrics_kfree_skb",
    "metrics_kfree_skb_noreason",
    "metrics_retransmit",
    "metrics_send_reset",
    "metrics_receive_reset",
    "metrics_sock_state",
    "metrics_exec",
];

/// A handle on a skeleton map that outlives the skeleton's borrow.
fn dup<T: std::fmt::Debug>(map: &libbpf_rs::MapImpl<'_, T>) -> plumb_core::Result<MapHandle> {
    MapHandle::try_from(map).map_err(|source| plumb_core::Error::Open {
        gadget: "agent-metrics",
        source,
    })
}

/// The kfree_skb program that does not fit the running kernel: the one
/// with a reason before Linux 5.17, the one without after (as the drop
/// gadget decides; a kernel drop cannot run on keeps the reason one, whose
/// attach then fails as an optional hook).
fn drop_program_left_out() -> &'static str {
    use plumb_core::gadgets::drop::{support, Variant};
    match plumb_core::kernel::with_vmlinux(support) {
        Some(Ok(s)) if s.variant == Variant::NoReason => "metrics_kfree_skb",
        _ => "metrics_kfree_skb_noreason",
    }
}

/// Open the object with the kfree_skb program of the other variant left out.
fn open_for_this_kernel(open: &mut skel::OpenMetricsSkel<'static>) -> plumb_core::Result<()> {
    use libbpf_rs::skel::OpenSkel;
    let leave_out = drop_program_left_out();
    for mut p in open.open_object_mut().progs_mut() {
        if p.name() == leave_out {
            p.set_autoload(false);
        }
    }
    Ok(())
}

fn load() -> plumb_core::Result<(loader::Loaded<skel::MetricsSkel<'static>>, Handles)> {
    let mut loaded = loader::load(
        "agent-metrics",
        skel::MetricsSkelBuilder::default(),
        open_for_this_kernel,
    )?;
    // Every hook is optional: a kernel without one still gets the others.
    loaded.attach("agent-metrics", PROGS)?;
    let m = &loaded.skel().maps;
    let maps = [
        dup(&m.drop_counts)?,
        dup(&m.tcp_counts)?,
        dup(&m.exec_counts)?,
        dup(&m.map_full)?,
    ];
    let handles = Handles {
        maps,
        prog_ids: loaded.prog_ids(),
        skipped: loaded.skipped.clone(),
    };
    Ok((loaded, handles))
}

impl NodeCounters {
    pub fn start() -> plumb_core::Result<NodeCounters> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let owner = std::thread::Builder::new()
            .name("plumb-counters".into())
            .spawn(move || match load() {
                Ok((loaded, handles)) => {
                    let _ = ready_tx.send(Ok(handles));
                    // Until the agent stops (or drops the sender).
                    let _ = stop_rx.recv();
                    drop(loaded);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| plumb_core::Error::Output(std::io::Error::other(e)))?;
        let h = match ready_rx.recv() {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let _ = owner.join();
                return Err(e);
            }
            Err(_) => {
                let _ = owner.join();
                return Err(plumb_core::Error::Output(std::io::Error::other(
                    "counter thread ended before loading",
                )));
            }
        };
        let [drops, tcp, execs, full] = h.maps;
        Ok(NodeCounters {
            maps: [drops, tcp, execs],
            full,
            prog_ids: h.prog_ids,
            skipped: h.skipped,
            stop: Some(stop_tx),
            owner: Some(owner),
        })
    }
}

impl CounterStore for NodeCounters {
    fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot {
            map_full: loader::percpu_sum(&self.full),
            ..Snapshot::default()
        };
        for (i, map) in self.maps.iter().enumerate() {
            let mut entries = 0;
            for k in map.keys() {
                entries += 1;
                let Ok(raw) = <[u8; 8]>::try_from(k.as_slice()) else {
                    continue;
                };
                let Some(key) = Key::parse(i, raw) else {
                    continue;
                };
                // Gone between listing and reading: deleted by us, nothing lost.
                if let Ok(Some(v)) = map.lookup_percpu(&k, MapFlags::ANY) {
                    snap.values.push((key, sum_u64(&v)));
                }
            }
            snap.maps.push(MapFill {
                map: MAP_NAMES[i],
                entries,
                max_entries: map.max_entries(),
            });
        }
        snap
    }

    fn remove(&self, key: Key) -> Option<u64> {
        lookup_and_delete_percpu(&self.maps[key.map()], &key.bytes())
    }

    fn prog_ids(&self) -> Vec<u32> {
        self.prog_ids.clone()
    }

    fn healthy(&self) -> bool {
        self.owner.as_ref().is_some_and(|t| !t.is_finished())
            && self.prog_ids.iter().all(|id| loader::prog_exists(*id))
    }
}

/// Take a key out of a per-CPU hash map with its value summed over CPUs,
/// in one system call (BPF_MAP_LOOKUP_AND_DELETE_ELEM, kernel 5.14+), so
/// an increment made meanwhile is either in the value or in a new slot.
/// On older kernels, read then delete (a concurrent increment can be lost).
fn lookup_and_delete_percpu(map: &MapHandle, key: &[u8; 8]) -> Option<u64> {
    let cpus = libbpf_rs::num_possible_cpus().ok()?;
    let slot = (map.value_size() as usize).div_ceil(8) * 8;
    // The kernel writes one 8-byte-aligned value per possible CPU; libbpf-rs's
    // own lookup_and_delete sizes its buffer for a single value.
    let mut buf = vec![0u8; slot * cpus];
    // SAFETY: `key` has the map's key size (8, checked by the map's
    // definition in metrics.bpf.c) and `buf` holds a value for every CPU.
    let r = unsafe {
        libbpf_rs::libbpf_sys::bpf_map_lookup_and_delete_elem(
            map.as_fd().as_raw_fd(),
            key.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
        )
    };
    if r == 0 {
        let per_cpu: Vec<Vec<u8>> = buf.chunks_exact(slot).map(<[u8]>::to_vec).collect();
        return Some(sum_u64(&per_cpu));
    }
    let v = map.lookup_percpu(key, MapFlags::ANY).ok()??;
    let _ = map.delete(key);
    Some(sum_u64(&v))
}

/// Sum the per-CPU u64 values of one slot.
fn sum_u64(per_cpu: &[Vec<u8>]) -> u64 {
    per_cpu
        .iter()
        .filter_map(|v| v.get(..8)?.try_into().ok().map(u64::from_ne_bytes))
        .fold(0u64, u64::wrapping_add)
}

impl Drop for NodeCounters {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.owner.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cgroup v2 id of this process (its directory's inode number).
    fn own_cgroup_id() -> u64 {
        use std::os::unix::fs::MetadataExt;
        let fs = plumb_core::enrich::cgroupfs::CgroupFs::discover().expect("cgroup v2");
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 line");
        std::fs::metadata(fs.root().join(rel.trim_start_matches('/')))
            .expect("own cgroup directory")
            .ino()
    }

    #[test]
    fn per_cpu_slots_are_summed() {
        let v = vec![
            3u64.to_ne_bytes().to_vec(),
            0u64.to_ne_bytes().to_vec(),
            40u64.to_ne_bytes().to_vec(),
        ];
        assert_eq!(sum_u64(&v), 43);
    }

    #[test]
    fn keys_round_trip_through_their_map_bytes() {
        for k in [
            Key::Drop {
                netns: 4026531840,
                reason: 77,
            },
            Key::Tcp {
                netns: 7,
                what: TcpWhat::ResetReceived,
            },
            Key::Exec { cgroup: 1 << 40 },
        ] {
            assert_eq!(Key::parse(k.map(), k.bytes()), Some(k));
        }
        assert_eq!(Key::parse(1, Key::Exec { cgroup: 9 << 32 }.bytes()), None);
    }

    /// What the session code asks the kernel about a gadget's programs:
    /// the one left without a link (as the loader leaves a hook this
    /// kernel lacks) and every map the programs use.
    #[test]
    fn the_kernel_tells_unlinked_programs_and_their_maps() {
        plumb_core::testing::require_root();
        let mut loaded = loader::load(
            "agent-metrics",
            skel::MetricsSkelBuilder::default(),
            open_for_this_kernel,
        )
        .expect("load");
        let mut links = Vec::new();
        use libbpf_rs::skel::Skel;
        for prog in loaded.skel_mut().object_mut().progs_mut() {
            if prog.autoload() && prog.name().to_string_lossy() != "metrics_exec" {
                links.push(prog.attach().expect("attach"));
            }
        }
        for l in links {
            loaded.keep_link(l);
        }
        let ids = loaded.prog_ids();
        // One of the two kfree_skb programs is left out on every kernel.
        assert_eq!(ids.len(), PROGS.len() - 1);
        let f = crate::progs::facts(&ids);
        assert_eq!(f.unlinked, vec!["metrics_exec".to_string()]);
        let m = &loaded.skel().maps;
        for map in [&m.drop_counts, &m.tcp_counts, &m.exec_counts, &m.map_full] {
            let id = map.info().expect("map info").info.id;
            assert!(f.map_ids.contains(&id), "{id} in {:?}", f.map_ids);
        }
        drop(loaded);
        plumb_core::testing::assert_no_programs_left(&ids);
    }

    /// The kernel's own bookkeeping: a removed key hands back exactly what
    /// the programs counted, and the map entry is gone.
    #[test]
    fn a_removed_key_returns_its_final_count_and_leaves_the_map() {
        plumb_core::testing::require_root();
        let c = NodeCounters::start().expect("counters load");
        // This test's own exec, counted under its cgroup.
        let cg = own_cgroup_id();
        let before = c
            .snapshot()
            .values
            .iter()
            .find(|(k, _)| *k == Key::Exec { cgroup: cg })
            .map_or(0, |(_, v)| *v);
        for _ in 0..3 {
            std::process::Command::new("/bin/true")
                .status()
                .expect("run /bin/true");
        }
        let key = Key::Exec { cgroup: cg };
        let got = c.remove(key).expect("the key exists");
        assert!(got >= before + 3, "{got} < {before} + 3");
        assert!(c.snapshot().values.iter().all(|(k, _)| *k != key));
        assert!(c.healthy());
        let ids = c.prog_ids();
        drop(c);
        plumb_core::testing::assert_no_programs_left(&ids);
    }
}
