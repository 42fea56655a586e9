//! Owner of the always-on kernel counters (`bpf/metrics.bpf.c`).
//!
//! The skeleton is not `Send`, so it lives on its own thread for as long as
//! the agent runs; the map file descriptors are duplicated into
//! [`libbpf_rs::MapHandle`]s that any thread may read at scrape time.
//! Dropping [`NodeCounters`] detaches and unloads everything.

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use plumb_core::loader;
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
}

/// Totals since the agent started, summed over CPUs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// (network namespace inode, drop reason value, packets)
    pub drops: Vec<(u32, u32, u64)>,
    /// (network namespace inode, what, count)
    pub tcp: Vec<(u32, TcpWhat, u64)>,
    /// (cgroup id, execs)
    pub execs: Vec<(u64, u64)>,
    /// Increments lost because a map was full.
    pub map_full: u64,
}

/// The loaded counters.
pub struct NodeCounters {
    drops: MapHandle,
    tcp: MapHandle,
    execs: MapHandle,
    full: MapHandle,
    pub prog_ids: Vec<u32>,
    /// Hooks this kernel does not have.
    pub skipped: Vec<String>,
    stop: Option<mpsc::Sender<()>>,
    owner: Option<JoinHandle<()>>,
}

struct Handles {
    maps: [MapHandle; 4],
    prog_ids: Vec<u32>,
    skipped: Vec<String>,
}

const PROGS: &[&str] = &[
    "metrics_kfree_skb",
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

fn load() -> plumb_core::Result<(loader::Loaded<skel::MetricsSkel<'static>>, Handles)> {
    let mut loaded = loader::load("agent-metrics", skel::MetricsSkelBuilder::default(), |_| {
        Ok(())
    })?;
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
            drops,
            tcp,
            execs,
            full,
            prog_ids: h.prog_ids,
            skipped: h.skipped,
            stop: Some(stop_tx),
            owner: Some(owner),
        })
    }

    /// Read every counter now.
    pub fn snapshot(&self) -> Snapshot {
        let pairs = |map: &MapHandle| -> Vec<([u8; 8], u64)> {
            map.keys()
                .filter_map(|k| {
                    let key: [u8; 8] = k.as_slice().try_into().ok()?;
                    let v = map.lookup_percpu(&k, MapFlags::ANY).ok()??;
                    Some((key, sum_u64(&v)))
                })
                .collect()
        };
        let halves = |k: &[u8; 8]| {
            (
                u32::from_ne_bytes([k[0], k[1], k[2], k[3]]),
                u32::from_ne_bytes([k[4], k[5], k[6], k[7]]),
            )
        };
        Snapshot {
            drops: pairs(&self.drops)
                .iter()
                .map(|(k, n)| {
                    let (ns, r) = halves(k);
                    (ns, r, *n)
                })
                .collect(),
            tcp: pairs(&self.tcp)
                .iter()
                .filter_map(|(k, n)| {
                    let (ns, w) = halves(k);
                    Some((ns, TcpWhat::from_raw(w)?, *n))
                })
                .collect(),
            execs: pairs(&self.execs)
                .iter()
                .map(|(k, n)| (u64::from_ne_bytes(*k), *n))
                .collect(),
            map_full: loader::percpu_sum(&self.full),
        }
    }
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
    #[test]
    fn per_cpu_slots_are_summed() {
        let v = vec![
            3u64.to_ne_bytes().to_vec(),
            0u64.to_ne_bytes().to_vec(),
            40u64.to_ne_bytes().to_vec(),
        ];
        assert_eq!(super::sum_u64(&v), 43);
    }
}
