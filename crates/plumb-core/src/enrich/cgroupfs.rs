//! The cgroup v2 hierarchy: where it is mounted and how to turn a cgroup id
//! (what `bpf_get_current_cgroup_id()` returns) back into a path.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A mounted cgroup v2 hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    root: PathBuf,
}

/// `FILEID_KERNFS`: the file handle type whose 8 bytes are a kernfs node id.
const FILEID_KERNFS: i32 = 0xfe;

/// Are cgroup v1 hierarchies with controllers mounted here (a v1-only or
/// hybrid host)? Then a task's v2 cgroup may say nothing about it.
pub fn v1_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| v1_in_mountinfo(&info))
}

fn v1_in_mountinfo(info: &str) -> bool {
    info.lines().any(|line| {
        line.split_once(" - ").is_some_and(|(_, post)| {
            let mut f = post.split_whitespace();
            // "cgroup" is v1 ("cgroup2" is v2); systemd's own named
            // hierarchy (name=systemd) holds no controller.
            f.next() == Some("cgroup")
                && f.nth(1)
                    .is_some_and(|opts| !opts.split(',').any(|o| o.starts_with("name=")))
        })
    })
}

impl CgroupFs {
    /// Find the cgroup2 mount in `/proc/self/mountinfo` (`/sys/fs/cgroup` on
    /// unified hosts, `/sys/fs/cgroup/unified` on hybrid ones).
    pub fn discover() -> Option<Self> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::from_mountinfo(&info)
    }

    pub fn from_mountinfo(info: &str) -> Option<Self> {
        info.lines().find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| {
                    pre.split_whitespace()
                        .nth(4)
                        .map(|p| Self::at(PathBuf::from(p)))
                })
                .flatten()
        })
    }

    pub fn at(root: PathBuf) -> Self {
        CgroupFs { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path (relative to the root, starting with `/`) of cgroup `id`.
    pub fn path_of(&self, id: u64) -> Option<String> {
        self.by_handle(id).or_else(|| self.by_walk(id))
    }

    /// Ask the kernel directly: `open_by_handle_at` with a kernfs handle.
    fn by_handle(&self, id: u64) -> Option<String> {
        #[repr(C)]
        struct Handle {
            bytes: u32,
            kind: i32,
            id: u64,
        }
        let root = CString::new(self.root.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: plain syscalls on a NUL-terminated path and a handle struct
        // laid out as `struct file_handle` with 8 bytes of payload; every fd
        // opened here is closed before returning.
        unsafe {
            let mount_fd = libc::open(
                root.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if mount_fd < 0 {
                return None;
            }
            let mut h = Handle {
                bytes: 8,
                kind: FILEID_KERNFS,
                id,
            };
            let fd = libc::syscall(
                libc::SYS_open_by_handle_at,
                mount_fd,
                &mut h as *mut Handle,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            ) as i32;
            libc::close(mount_fd);
            if fd < 0 {
                return None;
            }
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}"));
            libc::close(fd);
            let full = link.ok()?;
            self.relative(&full)
        }
    }

    /// Without CAP_DAC_READ_SEARCH: search the tree for the directory whose
    /// inode number is the id.
    fn by_walk(&self, id: u64) -> Option<String> {
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            if std::fs::metadata(&dir).ok()?.ino() == id {
                return self.relative(&dir);
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
        }
        None
    }

    fn relative(&self, full: &Path) -> Option<String> {
        let rel = full.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", rel.display()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tells_v1_and_hybrid_hosts_from_unified_ones() {
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let hybrid = "30 23 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate\n\
                      31 23 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,xattr,name=systemd\n\
                      35 23 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory\n";
        let named_only = "31 23 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,xattr,name=systemd\n";
        assert!(!v1_in_mountinfo(unified));
        assert!(v1_in_mountinfo(hybrid));
        assert!(!v1_in_mountinfo(named_only));
    }

    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let info = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        let fs = CgroupFs::from_mountinfo(info).unwrap();
        assert_eq!(fs.root(), Path::new("/sys/fs/cgroup/unified"));
        assert!(CgroupFs::from_mountinfo("37 35 0:32 / /x rw - cgroup cgroup rw\n").is_none());
    }
}
