//! "Can this run here?", asked before anything is loaded, so the user gets
//! one clear line instead of a libbpf error.

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::OnceLock;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process (bit n = capability n).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The capability that is missing for tracing, if any.
pub fn missing_capability(caps: u64) -> Option<&'static str> {
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return None;
    }
    if !has(CAP_BPF) {
        return Some("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        return Some("CAP_PERFMON");
    }
    None
}

/// Root or CAP_BPF + CAP_PERFMON.
pub fn check_capabilities() -> Result<()> {
    match missing_capability(effective_caps()) {
        None => Ok(()),
        Some(cap) => Err(Error::MissingCapability { cap }),
    }
}

pub fn check_btf() -> Result<()> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok(())
    } else {
        Err(Error::NoBtf)
    }
}

/// Make sure tracefs is reachable, mounting it if needed.
pub fn ensure_tracefs() -> Result<()> {
    let root = Path::new("/sys/kernel/tracing");
    if root.join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    let src = c"tracefs";
    let dst = c"/sys/kernel/tracing";
    // SAFETY: mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Tracefs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Everything a tracing command needs, in the order a user would fix it.
pub fn check_all() -> Result<()> {
    check_capabilities()?;
    check_btf()?;
    ensure_tracefs()
}

/// Does the running kernel's BTF define a type with this name?
pub fn vmlinux_has_type(name: &str) -> bool {
    static NAMES: OnceLock<Option<std::collections::HashSet<String>>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            let btf = libbpf_rs::btf::Btf::from_vmlinux().ok()?;
            let mut set = std::collections::HashSet::new();
            for id in 1..=btf.len() as u32 {
                if let Some(t) = btf.type_by_id::<libbpf_rs::btf::BtfType<'_>>(id.into()) {
                    if let Some(n) = t.name() {
                        if let Some(n) = n.to_str() {
                            if n.starts_with("btf_trace_") {
                                set.insert(n.to_string());
                            }
                        }
                    }
                }
            }
            Some(set)
        })
        .as_ref()
        .is_some_and(|s| s.contains(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_capability() {
        assert_eq!(missing_capability(0), Some("CAP_BPF"));
        assert_eq!(missing_capability(1 << CAP_BPF), Some("CAP_PERFMON"));
        assert_eq!(
            missing_capability((1 << CAP_BPF) | (1 << CAP_PERFMON)),
            None
        );
        assert_eq!(missing_capability(1 << CAP_SYS_ADMIN), None);
    }
}
