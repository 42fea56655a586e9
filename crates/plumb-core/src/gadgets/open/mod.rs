//! `plumb trace open`: open, openat and openat2 with path, flags and result.

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/openat.skel.rs"));
}

use super::{Attached, Body, Column, Decoded, GadgetDesc, Hook};
use crate::error::{DecodeError, Result};
use crate::event::errno_name;
use crate::loader::{self, Loaded, StartCtx};
use crate::raw::{self, RawHdr};
use bytemuck::{Pod, Zeroable};
use serde::Serialize;

pub const PATH_LEN: usize = 256;

/// `struct open_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RawOpen {
    pub hdr: RawHdr,
    pub ret: i64,
    pub flags: u64,
    pub mode: u32,
    pub syscall: u32,
    pub dirfd: i32,
    pub path_len: u32,
    pub path: [u8; PATH_LEN],
}
const _: () =
    assert!(std::mem::size_of::<skel::types::open_event>() == std::mem::size_of::<RawOpen>());

/// One open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Open {
    pub syscall: &'static str,
    pub path: String,
    /// Symbolic flags, `O_WRONLY|O_CREAT|...`.
    pub flags: String,
    /// Mode (octal) when the call can create the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The new descriptor, on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i64>,
    /// The error name, on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
}

pub static DESC: GadgetDesc = GadgetDesc {
    name: "open",
    summary: "every file open (open/openat/openat2) with flags and the fd or error",
    help:
        "Paths are shown as the caller passed them (relative to its cwd or dirfd), up to 255 bytes.",
    params: &[],
    columns: &[
        Column::new("timestamp", "TIME", 15),
        Column::new("pid", "PID", 7),
        Column::new("comm", "COMM", 16),
        Column::new("fd", "FD", 4),
        Column::new("errno", "ERR", 7),
        Column::new("flags", "FLAGS", 24),
        Column::new("path", "PATH", 0),
    ],
    summary_keys: &["comm", "path", "errno"],
    hooks: &[
        Hook::Tracepoint("syscalls", "sys_enter_openat"),
        Hook::Tracepoint("syscalls", "sys_exit_openat"),
    ],
    start,
};

struct Running {
    loaded: Loaded<skel::OpenatSkel<'static>>,
}

fn start(ctx: &StartCtx<'_>) -> Result<Box<dyn Attached>> {
    let mut loaded = loader::load("open", skel::OpenatSkelBuilder::default(), |open| {
        crate::configure_common!(open, ctx, "open");
        Ok(())
    })?;
    // open(2) does not exist on every architecture; openat2 is 5.6+.
    loaded.attach(
        "open",
        &["open_enter", "open_exit", "openat2_enter", "openat2_exit"],
    )?;
    Ok(Box::new(Running { loaded }))
}

const FLAG_NAMES: &[(u64, &str)] = &[
    (libc::O_CREAT as u64, "O_CREAT"),
    (libc::O_EXCL as u64, "O_EXCL"),
    (libc::O_NOCTTY as u64, "O_NOCTTY"),
    (libc::O_TRUNC as u64, "O_TRUNC"),
    (libc::O_APPEND as u64, "O_APPEND"),
    (libc::O_NONBLOCK as u64, "O_NONBLOCK"),
    (libc::O_DSYNC as u64, "O_DSYNC"),
    (libc::O_ASYNC as u64, "O_ASYNC"),
    (libc::O_DIRECT as u64, "O_DIRECT"),
    (0o100000, "O_LARGEFILE"),
    (libc::O_DIRECTORY as u64, "O_DIRECTORY"),
    (libc::O_NOFOLLOW as u64, "O_NOFOLLOW"),
    (libc::O_NOATIME as u64, "O_NOATIME"),
    (libc::O_CLOEXEC as u64, "O_CLOEXEC"),
    (libc::O_PATH as u64, "O_PATH"),
    (
        libc::O_TMPFILE as u64 & !(libc::O_DIRECTORY as u64),
        "__O_TMPFILE",
    ),
    (libc::O_SYNC as u64 & !(libc::O_DSYNC as u64), "__O_SYNC"),
];

/// `O_WRONLY|O_CREAT|O_TRUNC`, with any unknown bits in hex.
pub fn flags_string(flags: u64) -> String {
    let mut out = vec![match flags & 3 {
        0 => "O_RDONLY".to_string(),
        1 => "O_WRONLY".to_string(),
        2 => "O_RDWR".to_string(),
        _ => "O_ACCMODE".to_string(),
    }];
    let mut rest = flags & !3;
    for (bit, name) in FLAG_NAMES {
        if rest & bit == *bit && *bit != 0 {
            out.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        out.push(format!("{rest:#x}"));
    }
    out.join("|")
}

pub fn decode(data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
    let r: RawOpen = raw::read(data)?;
    if r.hdr.kind != raw::kind::OPEN {
        return Err(DecodeError::Kind(r.hdr.kind));
    }
    let syscall = match r.syscall {
        0 => "open",
        1 => "openat",
        2 => "openat2",
        v => {
            return Err(DecodeError::Range {
                field: "syscall",
                value: v as u64,
            })
        }
    };
    let creates = r.flags & (libc::O_CREAT as u64) != 0
        || r.flags & (libc::O_TMPFILE as u64) == libc::O_TMPFILE as u64;
    Ok(Decoded {
        hdr: r.hdr,
        body: Body::Open(Open {
            syscall,
            path: raw::cstr(&r.path),
            flags: flags_string(r.flags),
            mode: creates.then(|| format!("{:04o}", r.mode)),
            fd: (r.ret >= 0).then_some(r.ret),
            errno: (r.ret < 0).then(|| errno_name((-r.ret) as i32)),
        }),
    })
}

impl Attached for Running {
    crate::impl_attached_common!();

    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
        decode(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names() {
        let f = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC) as u64;
        assert_eq!(flags_string(f), "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC");
        assert_eq!(flags_string(0), "O_RDONLY");
        assert_eq!(flags_string(2 | (1 << 40)), "O_RDWR|0x10000000000");
    }

    #[test]
    fn decodes_fd_and_errno() {
        let mut r = RawOpen::zeroed();
        r.hdr.kind = raw::kind::OPEN;
        r.ret = -2;
        r.syscall = 1;
        r.path[..4].copy_from_slice(b"/nop");
        let d = decode(bytemuck::bytes_of(&r)).unwrap();
        let Body::Open(o) = d.body else { panic!() };
        assert_eq!(
            (o.path.as_str(), o.fd, o.errno.as_deref()),
            ("/nop", None, Some("ENOENT"))
        );
        r.ret = 7;
        r.syscall = 7;
        assert!(matches!(
            decode(bytemuck::bytes_of(&r)),
            Err(DecodeError::Range { .. })
        ));
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short { .. })));
    }
}

#[cfg(test)]
mod root_tests;
