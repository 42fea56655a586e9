//! Lab ids that are unique on this machine, across processes, and the
//! clean-up of labs whose owner died.
//!
//! A lab owns id N while it holds an exclusive `flock` on
//! `/run/plumb-netlab/N.lab`. The kernel drops the lock when the owner exits,
//! however it exits, so a lab left behind by a SIGKILLed test is recognised
//! by the next lab start: its lock file can be locked again. Everything a lab
//! creates is named after its id (namespaces `pl<N>-*`, the cgroup
//! `plumb-lab-<N>.slice`), so the leftovers of a dead owner can be found and
//! removed without a list.

use crate::{LabError, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the lock files live (a tmpfs: it starts empty at boot).
pub const STATE_DIR: &str = "/run/plumb-netlab";
/// How many labs can exist at once on one machine.
pub const MAX_LABS: u32 = 4096;

/// An id held by this process; dropping it releases the id.
#[derive(Debug)]
pub struct Claim {
    pub id: u32,
    path: PathBuf,
    /// Holds the lock; closed (unlocked) after the path is unlinked.
    _file: File,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Unlink while still holding the lock: whoever locks the old inode
        // afterwards sees that the path no longer names it and retries.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock_path(id: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{id}.lab"))
}

/// Lock `path` without waiting. `Ok(None)`: someone else holds it, or the
/// file was replaced while we were locking it.
fn try_lock(path: &Path) -> Result<Option<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| LabError(format!("{}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(LabError(format!("flock {}: {e}", path.display())));
    }
    let same = match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    };
    Ok(same.then_some(file))
}

/// Claim a free id for which `usable` is true (its subnets are free), after
/// cleaning up every lab whose owner is gone.
pub fn claim(usable: impl Fn(u32) -> bool) -> Result<Claim> {
    std::fs::create_dir_all(STATE_DIR).map_err(|e| LabError(format!("{STATE_DIR}: {e}")))?;
    clean_stale();
    // Start at a different place in every process so parallel test
    // binaries rarely race for the same id (a race only costs a retry).
    let first = (std::process::id().wrapping_mul(2_654_435_761)) % MAX_LABS;
    for k in 0..MAX_LABS {
        let id = (first + k) % MAX_LABS;
        if !usable(id) {
            continue;
        }
        let path = lock_path(id);
        let Some(file) = try_lock(&path)? else {
            continue;
        };
        // Ours now; anything still named after this id is a dead owner's.
        remove_leftovers(id);
        use std::io::Write;
        let mut f = &file;
        let _ = writeln!(f, "{}", std::process::id());
        return Ok(Claim {
            id,
            path,
            _file: file,
        });
    }
    Err(LabError(format!(
        "no free lab id among {MAX_LABS} (all taken, or their subnets are used on this host)"
    )))
}

/// Remove the leftovers of every lab whose owner has died.
pub fn clean_stale() {
    let Ok(rd) = std::fs::read_dir(STATE_DIR) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".lab"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(Some(file)) = try_lock(&e.path()) {
            remove_leftovers(id);
            drop(Claim {
                id,
                path: e.path(),
                _file: file,
            });
        }
    }
}

/// Delete every namespace and cgroup named after lab `id`, stopping the
/// processes inside its cgroups first (the lab started them).
pub fn remove_leftovers(id: u32) {
    if let Some(root) = crate::cgroup::v2_root() {
        crate::cgroup::remove_tree(&root.join(crate::cgroup::lab_slice(id)));
    }
    let prefix = crate::netns_prefix(id);
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &name])
                    .output();
            }
        }
    }
}
