//! What the kernel says about a session's BPF programs once they are
//! loaded: the maps they use (to find the ring buffers) and which of them
//! have no link (optional hooks this kernel lacks, skipped by the loader).
//!
//! The pipeline tells the agent only the program ids when a gadget is
//! attached; the rest is asked of the kernel by id.

use libbpf_rs::query::{LinkInfoIter, ProgInfoIter, ProgInfoQueryOptions};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// The maps and skipped hooks of a set of programs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    pub map_ids: Vec<u32>,
    /// Programs without a link, by their kernel name (at most 15
    /// characters of the function name).
    pub unlinked: Vec<String>,
}

/// Ask the kernel about programs `ids`.
pub fn facts(ids: &[u32]) -> Facts {
    let mine: HashSet<u32> = ids.iter().copied().collect();
    let mut names = BTreeMap::new();
    let mut maps = BTreeSet::new();
    let opts = ProgInfoQueryOptions::default().include_map_ids(true);
    for p in ProgInfoIter::with_query_opts(opts) {
        if mine.contains(&p.id) {
            names.insert(p.id, p.name.to_string_lossy().into_owned());
            maps.extend(p.map_ids.iter().copied());
        }
    }
    let linked: HashSet<u32> = LinkInfoIter::default()
        .map(|l| l.prog_id)
        .filter(|id| mine.contains(id))
        .collect();
    // Kernels before 5.15 attach tracepoints without a link object, so no
    // program shows one: then nothing can be told, and nothing is claimed.
    let unlinked = if linked.is_empty() {
        Vec::new()
    } else {
        names
            .iter()
            .filter(|(id, _)| !linked.contains(id))
            .map(|(_, n)| n.clone())
            .collect()
    };
    Facts {
        map_ids: maps.into_iter().collect(),
        unlinked,
    }
}
