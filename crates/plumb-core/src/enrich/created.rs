//! Paths of the cgroups made while plumb runs, so that the events of a
//! container that has already ended are still named.
//!
//! A cgroup id turns into a path by asking the kernel (`cgroupfs`), which
//! only works while the cgroup exists. runc removes a container's cgroup
//! as soon as the container ends, often before user space has read the
//! container's last events: a job's exec, a client's connect and close.
//! A small program on the `cgroup_mkdir` tracepoint remembers each new
//! cgroup's path in a bounded LRU map by id (`bpf/cgroup_created.bpf.c`);
//! the enricher asks it only when the kernel no longer knows the id.

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/cgroup_created.skel.rs"));
}

use crate::error::Result;
use crate::loader::{self, Loaded};
use libbpf_rs::{MapCore, MapFlags};

const NAME: &str = "cgroup-created";

/// The `cgroup_mkdir` watcher, attached; dropping it detaches it.
pub struct CreatedCgroups {
    loaded: Loaded<skel::CgroupCreatedSkel<'static>>,
}

impl CreatedCgroups {
    /// Load and attach the watcher: cgroups made from now on are kept.
    pub fn start() -> Result<Self> {
        let mut loaded = loader::load(NAME, skel::CgroupCreatedSkelBuilder::default(), |_| Ok(()))?;
        loaded.attach(NAME, &[])?;
        Ok(CreatedCgroups { loaded })
    }

    /// The path (from the v2 root, starting with `/`) of cgroup `id`, if it
    /// was made since [`CreatedCgroups::start`] and is still remembered.
    pub fn path_of(&self, id: u64) -> Option<String> {
        let map = &self.loaded.skel().maps.paths;
        let bytes = map.lookup(&id.to_ne_bytes(), MapFlags::ANY).ok()??;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let path = std::str::from_utf8(&bytes[..end]).ok()?;
        path.starts_with('/').then(|| path.to_string())
    }

    /// Kernel ids of the watcher's programs (to check teardown).
    pub fn prog_ids(&self) -> Vec<u32> {
        self.loaded.prog_ids()
    }
}

#[cfg(test)]
mod root_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A cgroup made and removed again is still known by its id, with the
    /// path it had; one made before the watcher started is not.
    #[test]
    fn a_removed_cgroup_keeps_its_path() {
        crate::testing::require_root();
        let Some(fs) = crate::enrich::cgroupfs::CgroupFs::discover() else {
            panic!("no cgroup2 mount");
        };
        let name = crate::testing::marker("cg-created");
        let before = fs.root().join(format!("{name}-before"));
        std::fs::create_dir(&before).expect("mkdir");
        let before_id = std::fs::metadata(&before).expect("stat").ino();
        let watch = CreatedCgroups::start().expect("the watcher loads");
        let dir = fs.root().join(&name);
        std::fs::create_dir(&dir).expect("mkdir");
        let child = dir.join("job");
        std::fs::create_dir(&child).expect("mkdir");
        let id = std::fs::metadata(&child).expect("stat").ino();
        std::fs::remove_dir(&child).expect("rmdir");
        std::fs::remove_dir(&dir).expect("rmdir");
        std::fs::remove_dir(&before).expect("rmdir");
        assert_eq!(fs.path_of(id), None, "the kernel no longer knows it");
        assert_eq!(watch.path_of(id), Some(format!("/{name}/job")));
        assert_eq!(watch.path_of(before_id), None);
        let ids = watch.prog_ids();
        assert_eq!(ids.len(), 1);
        drop(watch);
        crate::testing::assert_no_programs_left(&ids);
    }
}
