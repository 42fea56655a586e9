//! The sampling clock: one software CPU-clock perf event per online CPU,
//! and what to tell the user when the kernel will not open them.

use crate::{Error, Result};
use std::os::fd::OwnedFd;

/// The CPUs the kernel has online (`0-3,5`).
pub fn online_cpus() -> Vec<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = parse_cpu_list(&text);
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        cpus.extend(0..n);
    }
    cpus
}

fn parse_cpu_list(text: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<u32>().ok()),
        }
    }
    cpus
}

/// A software CPU-clock sampling event on one CPU, for every task.
fn open_cpu_clock(cpu: u32, frequency: u32) -> std::io::Result<OwnedFd> {
    plumb_core::perf::open_cpu_clock(cpu, u64::from(frequency))
}

/// One clock event per online CPU. A CPU that answers ENODEV (it went
/// offline since the list was read) is skipped; when every CPU does, there
/// is nothing to sample with and that is an error, not an empty profile.
pub fn open_all(frequency: u32) -> Result<Vec<(u32, OwnedFd)>> {
    open_each(&online_cpus(), |cpu| open_cpu_clock(cpu, frequency))
}

fn open_each(
    cpus: &[u32],
    mut open: impl FnMut(u32) -> std::io::Result<OwnedFd>,
) -> Result<Vec<(u32, OwnedFd)>> {
    let mut events = Vec::with_capacity(cpus.len());
    let mut no_device = None;
    for &cpu in cpus {
        match open(cpu) {
            Ok(fd) => events.push((cpu, fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => no_device = Some(e),
            Err(e) => return Err(open_error(cpu, e, paranoid())),
        }
    }
    match (events.is_empty(), no_device) {
        (true, Some(source)) => Err(Error::NoCpuClock {
            cpus: cpus.len(),
            source,
        }),
        _ => Ok(events),
    }
}

/// `kernel.perf_event_paranoid`, when readable.
fn paranoid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The error for a CPU whose event could not be opened: lack of rights
/// gets the two ways out (a capability, or the sysctl); anything else is
/// the kernel's refusal as it is.
fn open_error(cpu: u32, source: std::io::Error, paranoid: Option<i32>) -> Error {
    match source.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            let now = paranoid.map_or(String::new(), |p| format!(" (it is {p})"));
            Error::PerfEventDenied {
                cpu,
                hint: format!(
                    "sampling every task needs CAP_PERFMON (or CAP_SYS_ADMIN), or \
                     kernel.perf_event_paranoid at most 0{now}; in a container, a seccomp \
                     profile or LSM can refuse perf_event_open too"
                ),
                source,
            }
        }
        _ => Error::PerfEvent { cpu, source },
    }
}

/// `kernel.perf_event_max_sample_rate`: the highest frequency allowed.
pub fn max_sample_rate() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Frames the kernel records per stack: the stack map's size, or less when
/// `kernel.perf_event_max_stack` says so. A stack of exactly this many
/// frames was (most likely) cut.
pub fn stack_depth_limit(map_depth: usize) -> usize {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_stack")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map_or(map_depth, |sys| sys.min(map_depth))
}

/// `_IO('$', 1)`: PERF_EVENT_IOC_DISABLE.
pub fn ioc_disable() -> libc::c_ulong {
    ((b'$' as libc::c_ulong) << 8) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,5\n"), [0, 1, 2, 3, 5]);
        assert_eq!(parse_cpu_list("0\n"), [0]);
        assert_eq!(parse_cpu_list(""), Vec::<u32>::new());
    }

    #[test]
    fn lack_of_rights_names_the_capability_and_the_sysctl() {
        for errno in [libc::EACCES, libc::EPERM] {
            let e = open_error(1, std::io::Error::from_raw_os_error(errno), Some(2));
            let msg = e.to_string();
            assert!(msg.starts_with("not allowed to sample CPU 1 ("), "{msg}");
            assert!(msg.contains("CAP_PERFMON"), "{msg}");
            assert!(
                msg.contains("kernel.perf_event_paranoid at most 0 (it is 2)"),
                "{msg}"
            );
            assert_eq!(e.exit_code(), 3);
        }
        let e = open_error(0, std::io::Error::from_raw_os_error(libc::EINVAL), None);
        assert_eq!(
            e.to_string(),
            format!(
                "cannot open the CPU clock perf event on CPU 0: {}",
                std::io::Error::from_raw_os_error(libc::EINVAL)
            )
        );
        assert_eq!(e.exit_code(), 4);
    }

    #[test]
    fn enodev_skips_a_cpu_but_on_every_cpu_is_an_error() {
        let enodev = || std::io::Error::from_raw_os_error(libc::ENODEV);
        let some_fd = || std::fs::File::open("/dev/null").map(OwnedFd::from);
        // CPU 1 went offline: the others are sampled.
        let got = open_each(
            &[0, 1, 2],
            |cpu| if cpu == 1 { Err(enodev()) } else { some_fd() },
        )
        .unwrap();
        assert_eq!(got.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [0, 2]);
        // No CPU has the event: an error naming how many were tried.
        let e = open_each(&[0, 1], |_| Err(enodev())).unwrap_err();
        assert!(matches!(e, Error::NoCpuClock { cpus: 2, .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("no CPU clock perf event on any of the 2 online CPUs ("),
            "{e}"
        );
        assert_eq!(e.exit_code(), 3);
        // Refused for lack of rights on CPU 0: that error, at once.
        let e = open_each(&[0, 1], |_| {
            Err(std::io::Error::from_raw_os_error(libc::EACCES))
        })
        .unwrap_err();
        assert!(matches!(e, Error::PerfEventDenied { cpu: 0, .. }), "{e}");
    }
}
