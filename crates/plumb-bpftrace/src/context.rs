//! The process or pod a script is about, as the host sees it.
//!
//! `--pid N` names the process directly. `--pod P [-n NS]` is found the
//! way plumb's pod filters find pods: the cgroup v2 tree is walked, each
//! cgroup path is read for the pod UID the kubelet put in it, and the
//! metadata sources (CRI runtime, the agent's pod watcher) name that pod.
//! The pod's main process is then its oldest process that is not the
//! sandbox's `pause`: the first process of its first container, which is
//! what kubectl-trace calls `$container_pid`.

use crate::error::{Error, Result};
use plumb_core::enrich::cgroupfs::CgroupFs;
use plumb_core::enrich::MetadataSource;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a script's context variables stand for (see [`crate::script`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// `$container_pid`: the main process, as the host numbers it.
    pub pid: u32,
    /// `$container_root`: `/proc/PID/root`.
    pub root: PathBuf,
    /// `$container_cgroup`: the id of the main process's cgroup.
    pub cgroup_id: u64,
    /// That cgroup's path below the cgroup v2 root (for messages and logs).
    pub cgroup: String,
    /// (namespace, name) when the context is a pod.
    pub pod: Option<(String, String)>,
}

/// The cgroup v2 path of process `pid` (the `0::` line of /proc/PID/cgroup).
fn cgroup_of(proc_root: &Path, pid: u32) -> Result<String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).map_err(
        |source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::NoProcess(pid),
            _ => Error::ProcessCgroup { pid, source },
        },
    )?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| Error::ProcessCgroup {
            pid,
            source: std::io::Error::other("it is in no cgroup v2 (a v1-only host?)"),
        })
}

impl Context {
    /// The context of process `pid`.
    pub fn of_pid(pid: u32, fs: Option<&CgroupFs>) -> Result<Context> {
        Self::of_pid_in(Path::new("/proc"), pid, fs)
    }

    fn of_pid_in(proc_root: &Path, pid: u32, fs: Option<&CgroupFs>) -> Result<Context> {
        if pid == 0 || !proc_root.join(pid.to_string()).exists() {
            return Err(Error::NoProcess(pid));
        }
        let fs = fs.ok_or(Error::NoCgroup2)?;
        let cgroup = cgroup_of(proc_root, pid)?;
        let dir = fs.root().join(cgroup.trim_start_matches('/'));
        let cgroup_id = std::fs::metadata(&dir)
            .map_err(|source| Error::ProcessCgroup { pid, source })?
            .ino();
        Ok(Context {
            pid,
            root: proc_root.join(pid.to_string()).join("root"),
            cgroup_id,
            cgroup,
            pod: None,
        })
    }

    /// The context of pod `pod` (in `namespace`, or in whichever namespace
    /// holds the only pod of that name on this node).
    pub fn of_pod(
        namespace: Option<&str>,
        pod: &str,
        fs: Option<&CgroupFs>,
        sources: &[Arc<dyn MetadataSource>],
    ) -> Result<Context> {
        let fs = fs.ok_or(Error::NoCgroup2)?;
        let shown = match namespace {
            Some(ns) => format!("{ns}/{pod}"),
            None => pod.to_string(),
        };
        let found = find_pods(fs.root(), namespace, pod, sources);
        let (ns, dir) = match found.as_slice() {
            [] => return Err(Error::NoPod(shown)),
            [one] => one.clone(),
            many => {
                let mut names: Vec<&str> = many.iter().map(|(ns, _)| ns.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                if names.len() > 1 {
                    return Err(Error::AmbiguousPod {
                        pod: pod.to_string(),
                        namespaces: names.join(", "),
                    });
                }
                // The same pod under two cgroups (a pod restarted with the
                // same name): the one with the main process is chosen below.
                many[0].clone()
            }
        };
        let dirs: Vec<PathBuf> = found
            .iter()
            .filter(|(n, _)| *n == ns)
            .map(|(_, d)| d.clone())
            .collect();
        let mut pids = Vec::new();
        for d in dirs.iter().chain(std::iter::once(&dir)) {
            procs_below(d, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        let main = main_process(Path::new("/proc"), &pids).ok_or(Error::EmptyPod(shown))?;
        let mut ctx = Self::of_pid(main, Some(fs))?;
        ctx.pod = Some((ns, pod.to_string()));
        Ok(ctx)
    }
}

/// The pod cgroups of pods named `pod` (in `namespace` if given), with
/// the namespace each is in.
fn find_pods(
    root: &Path,
    namespace: Option<&str>,
    pod: &str,
    sources: &[Arc<dyn MetadataSource>],
) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            let rel = format!("/{}", path.strip_prefix(root).unwrap_or(&path).display());
            let mut w = plumb_core::enrich::cgroup::parse(&rel);
            if w.pod_uid.is_none() {
                stack.push(path);
                continue;
            }
            // The pod's own cgroup: its containers are below it.
            for s in sources {
                s.fill(&mut w);
            }
            let ns_ok = namespace.is_none_or(|n| w.namespace.as_deref() == Some(n));
            if w.pod.as_deref() == Some(pod) && ns_ok {
                found.push((w.namespace.unwrap_or_default(), path));
            }
        }
    }
    found
}

/// Every process in the cgroup `dir` and below.
fn procs_below(dir: &Path, pids: &mut Vec<u32>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
}

/// When process `pid` started (clock ticks after boot), and its name.
fn started(proc_root: &Path, pid: u32) -> Option<(u64, String)> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The name is between the first '(' and the last ')'; it may hold both.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat.get(open + 1..close)?.to_string();
    // After ") ": state is field 3; starttime is field 22.
    let start = stat
        .get(close + 2..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some((start, comm))
}

/// The oldest of `pids` that is not a sandbox's `pause` (lowest pid on a
/// tie); a pod of pause alone gives its pause.
fn main_process(proc_root: &Path, pids: &[u32]) -> Option<u32> {
    let mut known: Vec<(bool, u64, u32)> = pids
        .iter()
        .filter_map(|&p| started(proc_root, p).map(|(t, comm)| (comm == "pause", t, p)))
        .collect();
    known.sort_unstable();
    known.first().map(|&(_, _, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(dir: &Path, pid: u32, comm: &str, start: u64, cgroup: &str) {
        let p = dir.join(pid.to_string());
        std::fs::create_dir_all(&p).unwrap();
        // A real stat line's shape, with a name holding ") (".
        std::fs::write(
            p.join("stat"),
            format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 10 18446744073709551615\n"),
        )
        .unwrap();
        std::fs::write(p.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
    }

    #[test]
    fn the_main_process_is_the_oldest_that_is_not_pause() {
        let dir = std::env::temp_dir().join(format!("plumb-bt-proc-{}", std::process::id()));
        fake_proc(&dir, 10, "pause", 100, "/p");
        fake_proc(&dir, 12, "app) (x", 150, "/p/c1");
        fake_proc(&dir, 11, "sidecar", 160, "/p/c2");
        fake_proc(&dir, 13, "app", 150, "/p/c1");
        assert_eq!(started(&dir, 12), Some((150, "app) (x".to_string())));
        assert_eq!(main_process(&dir, &[10, 11, 12, 13]), Some(12));
        assert_eq!(main_process(&dir, &[10]), Some(10));
        assert_eq!(main_process(&dir, &[99]), None);
        assert_eq!(cgroup_of(&dir, 11).unwrap(), "/p/c2");
        assert!(matches!(cgroup_of(&dir, 98), Err(Error::NoProcess(98))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_process_that_does_not_exist_is_named() {
        let fs = CgroupFs::at(PathBuf::from("/sys/fs/cgroup"));
        let e = Context::of_pid(u32::MAX, Some(&fs)).unwrap_err();
        assert_eq!(e.to_string(), format!("no process {}", u32::MAX));
    }
}
