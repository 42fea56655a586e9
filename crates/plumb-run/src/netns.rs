//! Work done inside a network namespace: a thread made for it enters the
//! namespace (`setns`), does one job and ends, so no other thread of
//! plumb ever changes namespace. Sockets and link fds made there keep
//! their namespace after the thread is gone.

use std::os::fd::AsRawFd;
use std::path::Path;

/// Run `f` in the network namespace at `ns` (a `/proc/PID/ns/net` or a
/// `/run/netns` file); `None` runs it here.
pub fn run_in<T: Send + 'static>(
    ns: Option<&Path>,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let Some(ns) = ns else { return f() };
    let file = std::fs::File::open(ns).map_err(|e| format!("cannot open {}: {e}", ns.display()))?;
    let shown = ns.display().to_string();
    std::thread::spawn(move || {
        // SAFETY: this thread is made for this one job; it ends after it.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot enter {shown}: {}",
                std::io::Error::last_os_error()
            ));
        }
        f()
    })
    .join()
    .map_err(|_| "a namespace thread panicked".to_string())?
}

/// The interfaces of the namespace this thread is in, by (index, name),
/// loopback left out.
pub fn interfaces_here() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry, freed
    // with if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            if name != "lo" {
                out.push(((*p).if_index as i32, name));
            }
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out.sort();
    out
}

/// The index of interface `name` in this thread's namespace.
pub fn ifindex_here(name: &str) -> Result<i32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("bad interface name {name:?}"))?;
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("no interface {name} here")),
        i => Ok(i as i32),
    }
}
