//! Can bpftrace run here? The binary (given, or the first `bpftrace` on
//! PATH) and the kernel's BTF, which is all bpftrace needs to know kernel
//! types: plumb never asks for kernel headers.

use crate::error::{Error, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the running kernel describes its types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The bpftrace to run: `given`, or `bpftrace` found on `path` (a PATH
/// value).
pub fn find_binary_in(given: Option<&Path>, path: Option<&std::ffi::OsStr>) -> Result<PathBuf> {
    if let Some(g) = given {
        return if executable(g) {
            Ok(g.to_path_buf())
        } else {
            Err(Error::NoBinary(format!(
                "{} is not an executable file",
                g.display()
            )))
        };
    }
    path.into_iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("bpftrace"))
        .find(|p| executable(p))
        .ok_or_else(|| {
            Error::NoBinary(
                "bpftrace is not on PATH (install it, e.g. Debian's bpftrace package, or give --bpftrace PATH)"
                    .into(),
            )
        })
}

/// [`find_binary_in`] this process's PATH.
pub fn find_binary(given: Option<&Path>) -> Result<PathBuf> {
    find_binary_in(given, std::env::var_os("PATH").as_deref())
}

/// The kernel has BTF.
pub fn check_btf() -> Result<()> {
    check_btf_at(Path::new(VMLINUX_BTF))
}

fn check_btf_at(p: &Path) -> Result<()> {
    if p.exists() {
        Ok(())
    } else {
        Err(Error::NoBtf(p.to_path_buf()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_found_on_path_or_refused_in_one_line() {
        let dir = std::env::temp_dir().join(format!("plumb-bt-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("bpftrace");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        let empty = std::ffi::OsString::from("/nonexistent-dir");
        assert_eq!(
            find_binary_in(None, Some(&empty)).unwrap_err().to_string(),
            "no bpftrace binary: bpftrace is not on PATH (install it, e.g. Debian's bpftrace \
             package, or give --bpftrace PATH)"
        );
        // Not executable yet: skipped.
        let path = std::env::join_paths(["/nonexistent-dir", dir.to_str().unwrap()]).unwrap();
        assert!(find_binary_in(None, Some(&path)).is_err());
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_binary_in(None, Some(&path)).unwrap(), bin);
        assert_eq!(find_binary_in(Some(&bin), None).unwrap(), bin);
        let e = find_binary_in(Some(Path::new("/nonexistent/bpftrace")), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no bpftrace binary: /nonexistent/bpftrace is not an executable file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_btf_is_said_in_one_line() {
        let e = check_btf_at(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this kernel has no BTF (/nonexistent/vmlinux is missing): bpftrace needs it (plumb \
             never uses kernel headers)"
        );
    }
}
