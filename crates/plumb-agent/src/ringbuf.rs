//! How full a running gadget's ring buffer is, read from the kernel's own
//! positions.
//!
//! A BPF ring buffer map starts with two pages: the consumer position
//! (advanced by libbpf as it reads) and the producer position (advanced by
//! the kernel as programs reserve records). Their difference is the bytes
//! waiting. The pipeline owns the reader, so the agent maps those two pages
//! of the same map once more, read-only, and reads the positions when it
//! likes. The mapping holds a reference on the map: it is unmapped when the
//! session's sink goes, right after the gadget is unloaded.

use libbpf_rs::{MapCore, MapHandle, MapType};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// One ring buffer's position pages, mapped read-only.
struct Positions {
    base: *mut libc::c_void,
    len: usize,
    page: usize,
    /// The data area's size in bytes.
    size: u64,
}

impl Positions {
    fn map(handle: &MapHandle) -> std::io::Result<Positions> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page).map_err(|_| std::io::Error::last_os_error())?;
        let len = 2 * page;
        // SAFETY: a fresh read-only shared mapping of the map's first two
        // pages (the kernel allows read-only mappings of every page); the
        // pointer is only used while the mapping lives (see Drop).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                handle.as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Positions {
            base,
            len,
            page,
            size: u64::from(handle.max_entries()),
        })
    }

    fn waiting(&self) -> u64 {
        // SAFETY: both positions are naturally aligned u64s at the start of
        // their page inside our live mapping; the kernel and libbpf update
        // them with release stores, read here with acquire loads.
        let (cons, prod) = unsafe {
            let c = &*(self.base as *const AtomicU64);
            let p = &*(self.base.cast::<u8>().add(self.page) as *const AtomicU64);
            (c.load(Ordering::Acquire), p.load(Ordering::Acquire))
        };
        prod.saturating_sub(cons).min(self.size)
    }
}

impl Drop for Positions {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// The ring buffers of one gadget run.
#[derive(Default)]
pub struct RingFill(Vec<Positions>);

// SAFETY: the mapping is process-wide memory that is only read (atomically);
// it moves with its owner to the session thread and is unmapped there.
unsafe impl Send for RingFill {}

impl RingFill {
    /// Map the ring buffers among `map_ids`; other maps are skipped.
    pub fn of_maps(map_ids: &[u32]) -> std::io::Result<RingFill> {
        let mut v = Vec::new();
        for id in map_ids {
            let Ok(h) = MapHandle::from_map_id(*id) else {
                continue; // gone already: the run is ending
            };
            if h.map_type() == MapType::RingBuf {
                v.push(Positions::map(&h)?);
            }
        }
        Ok(RingFill(v))
    }

    /// Bytes waiting over size, of the fullest ring (0 without rings).
    pub fn ratio(&self) -> f64 {
        self.0
            .iter()
            .filter(|p| p.size > 0)
            .map(|p| p.waiting() as f64 / p.size as f64)
            .fold(0.0, f64::max)
    }

    /// (bytes waiting, size) of each ring.
    pub fn waiting(&self) -> Vec<(u64, u64)> {
        self.0.iter().map(|p| (p.waiting(), p.size)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
