//! One capture socket: an AF_PACKET socket bound to one interface of the
//! namespace it was made in, its filter attached before it is bound (so no
//! unfiltered packet is ever queued), reading the kernel's memory-mapped
//! TPACKET_V3 ring. The kernel fills whole blocks of packets and hands a
//! block over when it is full or its retire timeout passes; user space
//! reads the block in place and gives it back. Packets that find no free
//! block are dropped by the kernel and counted there (PACKET_STATISTICS).

use crate::error::{Error, Result};
use crate::filter::Filter;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, Ordering};

const TPACKET_V3: libc::c_int = 2;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_VERSION: libc::c_int = 10;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const PACKET_OUTGOING: u8 = 4;
/// sizeof(struct tpacket3_hdr), already TPACKET_ALIGNed: where the
/// sockaddr_ll that follows each packet header starts.
const TPACKET3_HDRLEN: usize = 48;

/// How big the ring is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSize {
    /// Bytes per block: a power-of-two multiple of the page size.
    pub block: u32,
    pub blocks: u32,
    /// How long the kernel keeps a block that is not full before handing
    /// it over, in milliseconds.
    pub retire_ms: u32,
}

impl RingSize {
    /// A ring of about `bytes` (at least two pages), in blocks of at most
    /// 1 MiB.
    pub fn of_bytes(bytes: usize) -> RingSize {
        let page = page_size();
        let bytes = bytes.max(2 * page);
        let mut block = page;
        while block < (1 << 20) && block * 8 < bytes {
            block *= 2;
        }
        let blocks = bytes.div_ceil(block).max(2);
        RingSize {
            block: block as u32,
            blocks: blocks as u32,
            retire_ms: 20,
        }
    }

    pub fn bytes(&self) -> usize {
        self.block as usize * self.blocks as usize
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// One packet, as the ring holds it.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// CLOCK_REALTIME, in nanoseconds.
    pub ts_ns: u64,
    /// The length on the wire.
    pub len: u32,
    /// What was kept (at most the snap length).
    pub data: &'a [u8],
    /// Sent by this host (PACKET_OUTGOING), else received.
    pub outgoing: bool,
}

/// The kernel's counts for one socket since it was bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets that passed the filter, delivered or not.
    pub received: u64,
    /// Of those, dropped because the ring had no free block.
    pub dropped: u64,
}

pub struct Ring {
    fd: OwnedFd,
    map: *mut u8,
    size: RingSize,
    /// The next block to look at.
    next: u32,
    counts: Counts,
}

// SAFETY: the mapping belongs to this Ring alone; it is read through &mut self.
unsafe impl Send for Ring {}

fn os(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Socket { what, source }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v points to a T of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Ring {
    /// A capture socket on interface `ifindex` of the calling thread's
    /// network namespace, `filter` attached, with a ring of `size`.
    pub fn open(ifindex: i32, filter: &Filter, size: RingSize) -> Result<Ring> {
        // Protocol 0: no packet is queued until the bind below, after the
        // filter is in place.
        // SAFETY: plain socket call; the fd is owned at once.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EPERM) {
                Error::NotPermitted
            } else {
                Error::Socket {
                    what: "opening a packet socket",
                    source: e,
                }
            });
        }
        // SAFETY: raw is a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let prog = libc::sock_fprog {
            len: filter.insns.len() as u16,
            filter: filter.insns.as_ptr() as *mut libc::sock_filter,
        };
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog,
        )
        .map_err(os("attaching the filter"))?;
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_VERSION,
            &TPACKET_V3,
        )
        .map_err(os("asking for TPACKET_V3"))?;
        // struct tpacket_req3.
        let frame = 2048u32;
        let req: [u32; 7] = [
            size.block,
            size.blocks,
            frame,
            size.block / frame * size.blocks,
            size.retire_ms,
            0,
            0,
        ];
        setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, PACKET_RX_RING, &req)
            .map_err(os("setting up the packet ring"))?;
        // SAFETY: maps the ring the kernel just made for this fd.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size.bytes(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED,
                fd.as_raw_fd(),
                0,
            )
        };
        let map = if map == libc::MAP_FAILED {
            // MAP_LOCKED fails past RLIMIT_MEMLOCK; the ring works unlocked.
            // SAFETY: as above.
            let m = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size.bytes(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if m == libc::MAP_FAILED {
                return Err(Error::Socket {
                    what: "mapping the packet ring",
                    source: io::Error::last_os_error(),
                });
            }
            m
        } else {
            map
        };
        let ring = Ring {
            fd,
            map: map.cast(),
            size,
            next: 0,
            counts: Counts::default(),
        };
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: sll is a sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                ring.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(Error::Socket {
                what: "binding to the interface",
                source: io::Error::last_os_error(),
            });
        }
        Ok(ring)
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn block(&self, i: u32) -> *mut u8 {
        // SAFETY: i < blocks, so the offset is inside the mapping.
        unsafe { self.map.add(i as usize * self.size.block as usize) }
    }

    fn status(&self, i: u32) -> u32 {
        // block_status: u32 at offset 8 of the block descriptor, written
        // by the kernel.
        // SAFETY: aligned read inside the mapping.
        let s = unsafe { std::ptr::read_volatile(self.block(i).add(8).cast::<u32>()) };
        fence(Ordering::Acquire);
        s
    }

    /// True when the next block is ready to be read.
    pub fn ready(&self) -> bool {
        self.status(self.next) & TP_STATUS_USER != 0
    }

    /// Hand each packet of the next ready block to `f`, give the block
    /// back, and say how many packets it held; 0 when no block is ready.
    /// `f` returning false stops the walk (the block is still given back).
    pub fn next_block(&mut self, mut f: impl FnMut(Packet<'_>) -> bool) -> usize {
        let i = self.next;
        if self.status(i) & TP_STATUS_USER == 0 {
            return 0;
        }
        let b = self.block(i);
        let len = self.size.block as usize;
        // SAFETY: the block is ours (TP_STATUS_USER) until given back
        // below; every offset read is checked against the block's length.
        let n = unsafe {
            let rd = |off: usize| -> u32 {
                if off + 4 > len {
                    0
                } else {
                    std::ptr::read_unaligned(b.add(off).cast::<u32>())
                }
            };
            let num = rd(12) as usize;
            let mut off = rd(16) as usize;
            let mut seen = 0;
            while seen < num && off + TPACKET3_HDRLEN + 12 <= len {
                let next = rd(off) as usize;
                let sec = rd(off + 4) as u64;
                let nsec = rd(off + 8) as u64;
                let snap = rd(off + 12) as usize;
                let wire = rd(off + 16);
                let mac = std::ptr::read_unaligned(b.add(off + 24).cast::<u16>()) as usize;
                let pkttype = *b.add(off + TPACKET3_HDRLEN + 10);
                seen += 1;
                if off + mac + snap <= len {
                    let data = std::slice::from_raw_parts(b.add(off + mac), snap);
                    let go_on = f(Packet {
                        ts_ns: sec * 1_000_000_000 + nsec,
                        len: wire,
                        data,
                        outgoing: pkttype == PACKET_OUTGOING,
                    });
                    if !go_on {
                        break;
                    }
                }
                if next == 0 {
                    break;
                }
                off += next;
            }
            num
        };
        fence(Ordering::Release);
        // SAFETY: gives the block back to the kernel.
        unsafe { std::ptr::write_volatile(b.add(8).cast::<u32>(), TP_STATUS_KERNEL) };
        self.next = (i + 1) % self.size.blocks;
        n
    }

    /// The kernel's counts so far (reading them resets the kernel's, so
    /// they are summed here).
    pub fn counts(&mut self) -> Counts {
        // struct tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt.
        let mut st = [0u32; 3];
        let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
        // SAFETY: st has room for len bytes.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                st.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r == 0 {
            self.counts.received += u64::from(st[0]);
            self.counts.dropped += u64::from(st[1]);
        }
        self.counts
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps what open mapped; the fd closes after.
        unsafe { libc::munmap(self.map.cast(), self.size.bytes()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_whole_page_blocks_of_at_most_a_mebibyte() {
        let r = RingSize::of_bytes(4 << 20);
        assert_eq!((r.block, r.blocks), (512 << 10, 8));
        let big = RingSize::of_bytes(64 << 20);
        assert_eq!((big.block, big.blocks), (1 << 20, 64));
        let tiny = RingSize::of_bytes(1);
        assert_eq!(tiny.blocks, 2);
        assert_eq!(tiny.block as usize, page_size());
    }
}
