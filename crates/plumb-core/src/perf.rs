//! The software CPU clock as a perf event: what a perf_event program
//! samples on. Shared by the profiler and `plumb run`'s perf_event
//! programs, so both open it the one way.

use std::os::fd::{FromRawFd, OwnedFd};

/// A software CPU-clock sampling event on `cpu`, for every task, at `hz`.
pub fn open_cpu_clock(cpu: u32, hz: u64) -> std::io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is plain data; all-zero is its default.
    let mut attr: libbpf_sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = libbpf_sys::PERF_TYPE_SOFTWARE;
    attr.size = std::mem::size_of::<libbpf_sys::perf_event_attr>() as u32;
    attr.config = libbpf_sys::PERF_COUNT_SW_CPU_CLOCK as u64;
    attr.__bindgen_anon_1.sample_freq = hz;
    attr.set_freq(1);
    // SAFETY: a valid attr; pid -1 with a cpu means every task on that CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const libbpf_sys::perf_event_attr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            libbpf_sys::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
