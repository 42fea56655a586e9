//! `plumb trace exec`: every execve/execveat, successful or failed, with
//! the full argument list (bounded; `args_truncated` says when it was cut).

mod skel {
    #![allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
    include!(concat!(env!("OUT_DIR"), "/exec.skel.rs"));
}

use super::{Attached, Body, Column, Decoded, GadgetDesc, Hook};
use crate::error::{DecodeError, Result};
use crate::event::errno_name;
use crate::loader::{self, Loaded, StartCtx};
use crate::raw::{self, RawHdr};
use bytemuck::{Pod, Zeroable};
use serde::Serialize;

pub const FILENAME_LEN: usize = 256;

/// `struct exec_event` without its variable-length `args` tail.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RawExec {
    pub hdr: RawHdr,
    pub start_ns: u64,
    pub ppid: u32,
    pub retval: i32,
    pub args_size: u32,
    pub args_truncated: u32,
    pub filename: [u8; FILENAME_LEN],
}

/// The C struct is this prefix plus the argument buffer.
pub const ARGS_SIZE: usize = 8192;
// Compile-time checks against the layout clang gave the C structs.
const _: () = assert!(
    std::mem::size_of::<skel::types::exec_event>() == std::mem::size_of::<RawExec>() + ARGS_SIZE
);
const _: () =
    assert!(std::mem::size_of::<skel::types::plumb_hdr>() == std::mem::size_of::<RawHdr>());

/// One exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exec {
    pub ppid: u32,
    pub filename: String,
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// 0, or the negative errno of a failed exec.
    pub retval: i32,
    /// The errno name of a failed exec.
    pub error: Option<String>,
}

pub static DESC: GadgetDesc = GadgetDesc {
    name: "exec",
    summary: "every process exec (execve/execveat), with arguments, including failed ones",
    help: "Arguments are kept up to 4 KiB; `args_truncated` marks a longer list. \
           A failed exec carries its errno in `retval`/`error`.",
    params: &[],
    columns: &[
        Column::new("timestamp", "TIME", 15),
        Column::new("pid", "PID", 7),
        Column::new("ppid", "PPID", 7),
        Column::new("uid", "UID", 5),
        Column::new("comm", "COMM", 16),
        Column::new("retval", "RET", 4),
        Column::new("args", "ARGS", 0),
    ],
    summary_keys: &["comm", "filename"],
    hooks: &[
        Hook::Tracepoint("syscalls", "sys_enter_execve"),
        Hook::Tracepoint("syscalls", "sys_exit_execve"),
    ],
    start,
};

struct Running {
    loaded: Loaded<skel::ExecSkel<'static>>,
}

fn start(ctx: &StartCtx<'_>) -> Result<Box<dyn Attached>> {
    let mut loaded = loader::load("exec", skel::ExecSkelBuilder::default(), |open| {
        crate::configure_common!(open, ctx, "exec");
        Ok(())
    })?;
    loaded.attach("exec", &["execat_enter", "execat_exit"])?;
    Ok(Box::new(Running { loaded }))
}

/// Split the kernel's NUL-separated argument buffer.
pub fn split_args(buf: &[u8]) -> Vec<String> {
    let buf = buf.strip_suffix(&[0]).unwrap_or(buf);
    if buf.is_empty() {
        return Vec::new();
    }
    buf.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

pub fn decode(data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
    let r: RawExec = raw::read(data)?;
    if r.hdr.kind != raw::kind::EXEC {
        return Err(DecodeError::Kind(r.hdr.kind));
    }
    if r.args_size as usize > ARGS_SIZE {
        return Err(DecodeError::Range {
            field: "args_size",
            value: r.args_size as u64,
        });
    }
    let args = raw::tail::<RawExec>(data, r.args_size as usize)?;
    Ok(Decoded {
        hdr: r.hdr,
        body: Body::Exec(Exec {
            ppid: r.ppid,
            filename: raw::cstr(&r.filename),
            args: split_args(args),
            args_truncated: r.args_truncated != 0,
            retval: r.retval,
            error: (r.retval < 0).then(|| errno_name(-r.retval)),
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

    fn record(args: &[u8], retval: i32) -> Vec<u8> {
        let mut r = RawExec::zeroed();
        r.hdr.kind = raw::kind::EXEC;
        r.hdr.pid = 42;
        r.ppid = 1;
        r.retval = retval;
        r.args_size = args.len() as u32;
        r.filename[..9].copy_from_slice(b"/bin/true");
        let mut v = bytemuck::bytes_of(&r).to_vec();
        v.extend_from_slice(args);
        v
    }

    #[test]
    fn decodes_args_and_errors() {
        let d = decode(&record(b"/bin/true\0--marker\0x y\0", 0)).unwrap();
        let Body::Exec(e) = d.body else { panic!() };
        assert_eq!(e.args, ["/bin/true", "--marker", "x y"]);
        assert_eq!(e.filename, "/bin/true");
        assert_eq!(e.error, None);
        let d = decode(&record(b"nope\0", -2)).unwrap();
        let Body::Exec(e) = d.body else { panic!() };
        assert_eq!(e.error.as_deref(), Some("ENOENT"));
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(matches!(decode(&[0u8; 20]), Err(DecodeError::Short { .. })));
        let mut r = record(b"a\0", 0);
        r.truncate(r.len() - 1); // args_size says 2, one byte present
        assert!(matches!(decode(&r), Err(DecodeError::Short { .. })));
        let mut bad = record(b"", 0);
        bad[28] = 9; // hdr.kind
        assert_eq!(decode(&bad).err(), Some(DecodeError::Kind(9)));
        let mut huge = RawExec::zeroed();
        huge.hdr.kind = raw::kind::EXEC;
        huge.args_size = u32::MAX;
        assert!(matches!(
            decode(bytemuck::bytes_of(&huge)),
            Err(DecodeError::Range { .. })
        ));
    }

    #[test]
    fn truncated_last_argument_is_kept() {
        assert_eq!(split_args(b"a\0bc"), ["a", "bc"]);
        assert!(split_args(b"").is_empty());
    }
}

#[cfg(test)]
mod root_tests;
