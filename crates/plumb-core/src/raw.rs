//! Rust mirrors of the records defined in C (`bpf/include/plumb.h` and each
//! gadget's header), and the one bounds-checked way to read them.
//!
//! Every mirror derives `bytemuck::Pod`, which refuses to compile if the
//! struct has implicit padding; its size is checked against the BPF object's
//! own BTF at compile time (each gadget asserts it against the types its
//! generated skeleton carries).

use crate::error::DecodeError;
use bytemuck::{Pod, Zeroable};

pub const COMM_LEN: usize = 16;
pub const MAX_CGROUPS: usize = 8;
pub const MAX_PORTS: usize = 8;
pub const MAX_CIDRS: usize = 16;

/// `enum plumb_kind`; each gadget checks it against the enum in its BPF
/// object's BTF with [`assert_kinds_match!`](crate::assert_kinds_match).
pub mod kind {
    pub const EXEC: u16 = 1;
    pub const OPEN: u16 = 2;
    pub const TCP: u16 = 3;
    pub const DROP: u16 = 4;
    pub const RETRANS: u16 = 5;
    pub const RESET: u16 = 6;
}

/// Check every member of `enum plumb_kind` as a skeleton's BTF has it
/// (`$t` is the skeleton's generated `types::plumb_kind`) against
/// [`kind`], at compile time: a renumbering on either side fails the build.
#[macro_export]
macro_rules! assert_kinds_match {
    ($t:ty) => {
        const _: () = {
            use $crate::raw::kind;
            assert!(<$t>::PLUMB_KIND_EXEC.0 == kind::EXEC as u32);
            assert!(<$t>::PLUMB_KIND_OPEN.0 == kind::OPEN as u32);
            assert!(<$t>::PLUMB_KIND_TCP.0 == kind::TCP as u32);
            assert!(<$t>::PLUMB_KIND_DROP.0 == kind::DROP as u32);
            assert!(<$t>::PLUMB_KIND_RETRANS.0 == kind::RETRANS as u32);
            assert!(<$t>::PLUMB_KIND_RESET.0 == kind::RESET as u32);
        };
    };
}

/// `struct plumb_hdr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RawHdr {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub kind: u16,
    pub flags: u16,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(std::mem::size_of::<RawHdr>() == 48);

/// `struct plumb_filter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RawFilter {
    pub pid: u32,
    pub uid: u32,
    pub has_uid: u32,
    pub n_cgroups: u32,
    pub cgroup_ids: [u64; MAX_CGROUPS],
    pub cgroup_levels: [u32; MAX_CGROUPS],
    pub cgroups_newer_than: u64,
    pub has_comm: u32,
    pub comm: [u8; COMM_LEN],
    /// 1: read cgroup ancestors from the task (no
    /// bpf_get_current_ancestor_cgroup_id for tracing programs here).
    pub ancestor_by_task: u32,
}
const _: () = assert!(std::mem::size_of::<RawFilter>() == 144);

/// `struct plumb_cidr` (plumb_net_filter.h): `(addr & mask) == addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RawCidr {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
    pub family: u32,
}

/// `struct plumb_net_filter`: the network gadgets' in-kernel filter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RawNetFilter {
    pub netns: u32,
    pub owner: u32,
    pub sk_cgroup: u32,
    pub n_ports: u32,
    pub ports: [u16; MAX_PORTS],
    pub n_cidrs: u32,
    pub cidrs: [RawCidr; MAX_CIDRS],
}
const _: () = assert!(std::mem::size_of::<RawNetFilter>() == 36 + 36 * MAX_CIDRS);

/// Values of `plumb_netns` (bits) and `plumb_net_filter.owner`.
pub mod netns_bits {
    pub const ASKED: u32 = 1;
    pub const OWNER: u32 = 2;
    pub const OWNER_CGROUPS: u32 = 1;
    pub const OWNER_ANY_SOCKET: u32 = 2;
}

/// `plumb_hdr.flags`: the record was raised where no task is meaningful.
pub const HDR_NO_TASK: u16 = 1;

/// Read a `T` from the front of `data`, or say how short the record was.
pub fn read<T: Pod>(data: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    data.get(..need)
        .map(bytemuck::pod_read_unaligned)
        .ok_or(DecodeError::Short {
            need,
            got: data.len(),
        })
}

/// The bytes after a fixed-size prefix `T`, limited to `len` (a length the
/// kernel wrote, never trusted beyond the record's real size).
pub fn tail<T>(data: &[u8], len: usize) -> Result<&[u8], DecodeError> {
    let start = std::mem::size_of::<T>();
    data.get(start..start.saturating_add(len))
        .ok_or(DecodeError::Short {
            need: start.saturating_add(len),
            got: data.len(),
        })
}

/// A C string in a fixed buffer: up to the first NUL, lossily decoded.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_record_is_an_error_not_a_panic() {
        let err = read::<RawHdr>(&[0u8; 10]).unwrap_err();
        assert_eq!(err, DecodeError::Short { need: 48, got: 10 });
    }

    #[test]
    fn tail_never_reads_past_the_record() {
        let data = [1u8; 52];
        assert_eq!(tail::<RawHdr>(&data, 4).unwrap(), &[1, 1, 1, 1]);
        assert!(tail::<RawHdr>(&data, 5).is_err());
        assert!(tail::<RawHdr>(&data, usize::MAX).is_err());
    }

    #[test]
    fn cstr_stops_at_nul_and_survives_garbage() {
        assert_eq!(cstr(b"bash\0\0junk"), "bash");
        assert_eq!(cstr(b"full"), "full");
        assert_eq!(cstr(&[0xff, 0x41, 0]), "\u{fffd}A");
    }
}
