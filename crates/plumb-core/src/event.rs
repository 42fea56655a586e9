//! The typed event every gadget produces, and the header all events share.
//!
//! Events are serde types: JSON lines, the columns table, summaries and the
//! agent's stream are all rendered from this one definition.

use crate::gadgets::Body;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who a cgroup belongs to. Fields that cannot be known stay `None`: they
/// are never guessed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub container_id: Option<String>,
    pub container_runtime: Option<&'static str>,
    pub container: Option<String>,
    pub pod_uid: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// The controller that owns the pod (`ReplicaSet/web-5d9f`), where the
    /// agent's pod watcher knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The pod's labels, where the agent's pod watcher knows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<Arc<BTreeMap<String, String>>>,
}

impl Workload {
    pub fn is_empty(&self) -> bool {
        *self == Workload::default()
    }
}

/// Fields every event carries. The task fields (`pid`, `tid`, `uid`,
/// `comm`) are `None` for events raised where no task is meaningful (packet
/// processing in softirq context): there the running task is unrelated, and
/// naming it would be wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    pub node: Arc<str>,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Arc<str>>,
    #[serde(flatten)]
    pub workload: Arc<Workload>,
}

/// One event: the common header and what the gadget saw.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(flatten)]
    pub body: Body,
    #[serde(flatten)]
    pub header: Header,
}

impl Event {
    /// The event's `type` key (`exec`, `open`, ...).
    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_nanos(*t))
}

/// Converts the kernel's boot-time nanoseconds into wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock time at boot, in nanoseconds since the epoch.
    boot_epoch_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Clock {
            boot_epoch_ns: wall - boot as i128,
        }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        let ns = self.boot_epoch_ns + boot_ns as i128;
        if ns <= 0 {
            return UNIX_EPOCH;
        }
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }

    /// Nanoseconds of CLOCK_BOOTTIME now, the clock BPF timestamps use.
    pub fn boot_now_ns() -> u64 {
        clock_ns(libc::CLOCK_BOOTTIME)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Errno number to its symbolic name (`ENOENT`), for output.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EPIPE => "EPIPE",
        libc::EDQUOT => "EDQUOT",
        libc::ESTALE => "ESTALE",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_maps_boot_time_near_now() {
        let c = Clock::new();
        let wall = c.wall(Clock::boot_now_ns());
        let skew = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(1), "skew {skew:?}");
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(4095), "E4095");
    }
}
