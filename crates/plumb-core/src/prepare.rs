//! Getting a run ready, the one way every command does it: `plumb trace`,
//! the agent's sessions and the profiler. What the user typed is checked
//! first (a wrong flag is reported as such, whatever the privileges), then
//! the host (root, BTF, tracefs), then the filter is narrowed in the
//! kernel for the workloads it names.

use crate::enrich::cgroupfs::CgroupFs;
use crate::enrich::MetadataSource;
use crate::error::Result;
use crate::filter::{Filter, FilterArgs};
use crate::gadgets::{self, GadgetDesc, Params};
use crate::runner::RunOptions;
use std::sync::Arc;
use std::time::Duration;

/// A validated filter and the cgroup v2 hierarchy it was resolved in
/// (the enricher reads pods from the same one).
pub struct Prepared {
    pub filter: Filter,
    pub fs: Option<CgroupFs>,
}

/// How long a run may go and how much the kernel may buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub duration: Option<Duration>,
    pub max_events: Option<u64>,
    /// The ring buffer's size in bytes (`--buffer`); None: the default.
    pub ring_bytes: Option<u32>,
}

/// Validate `args` (and, for a gadget, its `params` and what its events
/// can be filtered by), check the host, and narrow the filter in the
/// kernel using `sources` to name pods.
pub fn prepare(
    args: &FilterArgs,
    gadget: Option<(&GadgetDesc, &Params)>,
    sources: &[Arc<dyn MetadataSource>],
) -> Result<Prepared> {
    if let Some((g, params)) = gadget {
        params.check(g)?;
    }
    let fs = CgroupFs::discover();
    let mut filter = Filter::parse(args, fs.as_ref().map(|f| f.root()))?;
    if let Some((g, _)) = gadget {
        gadgets::check_filter(g, &filter)?;
    }
    crate::preflight::check_all()?;
    if let Some(fs) = &fs {
        filter.narrow_in_kernel(fs, sources);
    }
    Ok(Prepared { filter, fs })
}

impl Prepared {
    /// The runner's options for a gadget run with these limits.
    pub fn run_options(&self, params: Params, limits: Limits, node: Arc<str>) -> RunOptions {
        let d = RunOptions::default();
        RunOptions {
            filter: self.filter.clone(),
            params,
            duration: limits.duration,
            max_events: limits.max_events,
            ring_bytes: limits.ring_bytes.unwrap_or(d.ring_bytes),
            // Wake the reader before a small buffer fills.
            wakeup_bytes: d
                .wakeup_bytes
                .min(limits.ring_bytes.unwrap_or(u32::MAX) / 4),
            node,
            ..d
        }
    }
}
