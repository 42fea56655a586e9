//! Which events the user asked for.
//!
//! A filter is checked twice: the parts the kernel can check cheaply (pid,
//! uid, cgroup subtree; for network gadgets the namespace, the socket's
//! cgroup, ports and addresses) are handed to the BPF programs so unwanted
//! events are never copied out; the whole filter is applied again in user
//! space, so the kernel part is only ever an optimisation.

mod describe;
pub mod flow;
pub mod netns;

pub use flow::Cidr;
pub use netns::NetnsTarget;

use crate::enrich::cgroupfs::CgroupFs;
use crate::enrich::MetadataSource;
use crate::error::{Error, Result};
use crate::event::{Event, Header, Workload};
use crate::raw::{RawFilter, COMM_LEN, MAX_CGROUPS};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Filter values exactly as a user typed them (CLI flags or API fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilterArgs {
    pub pid: Option<String>,
    pub comm: Option<String>,
    pub uid: Option<String>,
    pub cgroup: Vec<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// `--netns NAME|PATH` (repeatable).
    #[serde(default)]
    pub netns: Vec<String>,
    /// `--port N`, either side of a flow (repeatable).
    #[serde(default)]
    pub port: Vec<String>,
    /// `--addr IP|CIDR`, either side of a flow (repeatable).
    #[serde(default)]
    pub addr: Vec<String>,
    /// A pod selection: these pods, as (namespace, name). `kubectl plumb
    /// -l SELECTOR` resolves the selector and sends each agent its node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<(String, String)>,
}

/// A cgroup subtree to keep, as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupTarget {
    /// Path relative to the cgroup v2 root, starting with `/`.
    pub path: String,
    pub id: u64,
    /// Depth below the root (the root is level 0).
    pub level: u32,
}

/// A validated filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub cgroups: Vec<CgroupTarget>,
    pub container: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// Cgroups found to hold the selected workloads: a kernel-side
    /// narrowing only; the user-space check stays on the workload.
    pub kernel_cgroups: Vec<CgroupTarget>,
    /// With `kernel_cgroups`: the newest cgroup id seen when they were
    /// chosen; newer cgroups pass the kernel's check too.
    pub kernel_newer_than: u64,
    /// Network namespaces (`--netns`).
    pub netns: Vec<NetnsTarget>,
    /// Ports, either side (`--port`).
    pub ports: Vec<u16>,
    /// Address prefixes, either side (`--addr`).
    pub addrs: Vec<Cidr>,
    /// A pod selection: namespace → pod names; empty: no selection.
    pub pods: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
}

fn bad(flag: &'static str, reason: impl Into<String>) -> Error {
    Error::BadFilter {
        flag,
        reason: reason.into(),
    }
}

impl Filter {
    /// Validate what the user typed. Cgroup paths are resolved against the
    /// cgroup v2 hierarchy mounted at `cgroup_root`.
    pub fn parse(args: &FilterArgs, cgroup_root: Option<&Path>) -> Result<Filter> {
        let pid = match &args.pid {
            None => None,
            Some(s) => match s.trim().parse::<u32>() {
                Ok(0) => return Err(bad("pid", "0 is not a process id")),
                Ok(p) => Some(p),
                Err(_) => return Err(bad("pid", format!("'{s}' is not a process id"))),
            },
        };
        let uid = match &args.uid {
            None => None,
            Some(s) => Some(
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| bad("uid", format!("'{s}' is not a numeric user id")))?,
            ),
        };
        let comm = match &args.comm {
            None => None,
            Some(c) if c.is_empty() => return Err(bad("comm", "empty name")),
            Some(c) if c.len() > 15 => {
                return Err(bad(
                    "comm",
                    format!(
                        "'{c}' is longer than the 15 characters the kernel keeps of a command name"
                    ),
                ))
            }
            Some(c) => Some(c.clone()),
        };
        let container = match &args.container {
            None => None,
            Some(c) => {
                let c = c.trim().to_ascii_lowercase();
                let c = c.split("://").last().unwrap_or_default().to_string();
                if c.is_empty() || !c.chars().all(|ch| ch.is_ascii_hexdigit()) {
                    return Err(bad(
                        "container",
                        format!("'{c}' is not a container id (hexadecimal, a prefix is enough)"),
                    ));
                }
                Some(c)
            }
        };
        for (flag, v) in [("pod", &args.pod), ("namespace", &args.namespace)] {
            if let Some(v) = v {
                if v.is_empty()
                    || v.len() > 253
                    || v.contains('/')
                    || v.contains(char::is_whitespace)
                {
                    return Err(bad(flag, format!("'{v}' is not a Kubernetes object name")));
                }
            }
        }
        if args.cgroup.len() > MAX_CGROUPS {
            return Err(bad("cgroup", format!("at most {MAX_CGROUPS} cgroups")));
        }
        let mut cgroups = Vec::new();
        for c in &args.cgroup {
            let root =
                cgroup_root.ok_or_else(|| bad("cgroup", "no cgroup v2 hierarchy is mounted"))?;
            cgroups.push(resolve_cgroup(root, c)?);
        }
        let (ports, addrs) = flow::parse(&args.port, &args.addr)?;
        let netns = args
            .netns
            .iter()
            .map(|n| netns::resolve(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(Filter {
            pid,
            comm,
            uid,
            cgroups,
            container,
            pod: args.pod.clone(),
            namespace: args.namespace.clone(),
            kernel_cgroups: Vec::new(),
            kernel_newer_than: 0,
            netns,
            ports,
            addrs,
            pods: args
                .pods
                .iter()
                .fold(Default::default(), |mut m, (ns, pod)| {
                    m.entry(ns.clone())
                        .or_insert_with(std::collections::BTreeSet::new)
                        .insert(pod.clone());
                    m
                }),
        })
    }

    /// With `--container`, `--pod` or `--namespace` and no explicit cgroup,
    /// find the cgroups that hold the selected workloads now, so the kernel
    /// drops other tasks' events early. Cgroups created later (a pod that
    /// starts during the run) still reach user space: the kernel also passes
    /// every cgroup newer than the newest one seen here.
    ///
    /// Pods whose names no source could give are kept too (they might be
    /// the ones asked for). Nothing changes when more cgroups would be kept
    /// than the kernel filter holds.
    pub fn narrow_in_kernel(&mut self, fs: &CgroupFs, sources: &[Arc<dyn MetadataSource>]) {
        if !self.cgroups.is_empty() || !self.needs_workload() {
            return;
        }
        let names_needed = self.names_pods();
        let mut found = Vec::new();
        // The root's own id counts: on a host with no sub-cgroups yet, every
        // cgroup made later is newer than it.
        let mut newest = std::fs::metadata(fs.root()).map_or(0, |m| m.ino());
        let mut stack = vec![fs.root().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let path = e.path();
                if let Ok(m) = e.metadata() {
                    newest = newest.max(m.ino());
                }
                let rel = format!(
                    "/{}",
                    path.strip_prefix(fs.root()).unwrap_or(&path).display()
                );
                let mut w = crate::enrich::cgroup::parse(&rel);
                if w.is_empty() {
                    stack.push(path);
                    continue;
                }
                if names_needed {
                    for s in sources {
                        s.fill(&mut w);
                    }
                }
                // A pod no source could name might be the one asked for: the
                // kernel keeps it, user space decides.
                let unnamed = names_needed && w.pod_uid.is_some() && w.pod.is_none();
                if unnamed || self.matches_workload(&w) {
                    if let Ok(t) = resolve_cgroup(fs.root(), &rel) {
                        found.push(t);
                    }
                    // Its sub-cgroups are covered by the ancestor check.
                    continue;
                }
                if w.container_id.is_none() {
                    // A pod cgroup: its containers may match one by one.
                    stack.push(path);
                }
            }
        }
        if found.len() <= MAX_CGROUPS && newest > 0 {
            self.kernel_cgroups = found;
            self.kernel_newer_than = newest;
        }
    }

    /// [`Filter::narrow_in_kernel`] without metadata sources: narrows
    /// container filters only.
    pub fn narrow_to_containers(&mut self, fs: &CgroupFs) {
        if !self.names_pods() {
            self.narrow_in_kernel(fs, &[]);
        }
    }

    /// The part of the filter the kernel applies.
    pub fn kernel(&self) -> RawFilter {
        let mut f = RawFilter {
            pid: self.pid.unwrap_or(0),
            ..Default::default()
        };
        if let Some(uid) = self.uid {
            f.uid = uid;
            f.has_uid = 1;
        }
        if let Some(comm) = &self.comm {
            // Parsing checked it fits the kernel's 15 characters and a NUL.
            let n = comm.len().min(COMM_LEN - 1);
            f.comm[..n].copy_from_slice(&comm.as_bytes()[..n]);
            f.has_comm = 1;
        }
        let cgroups = if self.cgroups.is_empty() {
            f.cgroups_newer_than = self.kernel_newer_than;
            &self.kernel_cgroups
        } else {
            &self.cgroups
        };
        f.n_cgroups = cgroups.len() as u32;
        for (i, c) in cgroups.iter().enumerate() {
            f.cgroup_ids[i] = c.id;
            f.cgroup_levels[i] = c.level;
        }
        if f.n_cgroups > 0 && !crate::kernel::tracing_has_ancestor_cgroup_helper() {
            f.ancestor_by_task = 1;
        }
        f
    }

    /// What the kernel checks, in words (for `-v`).
    pub fn describe_kernel(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.pid {
            parts.push(format!("pid {p}"));
        }
        if let Some(u) = self.uid {
            parts.push(format!("uid {u}"));
        }
        if let Some(c) = &self.comm {
            parts.push(format!("comm {c}"));
        }
        let (cgroups, newer) = if self.cgroups.is_empty() {
            (&self.kernel_cgroups, self.kernel_newer_than)
        } else {
            (&self.cgroups, 0)
        };
        if !cgroups.is_empty() || newer > 0 {
            let mut c = if cgroups.is_empty() {
                "no cgroup that exists now".to_string()
            } else {
                cgroups
                    .iter()
                    .map(|t| t.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if newer > 0 {
                c.push_str(&format!(" (and cgroups created since, id > {newer})"));
            }
            parts.push(format!("cgroups {c}"));
        }
        if parts.is_empty() {
            "nothing (every event reaches user space)".to_string()
        } else {
            parts.join("; ")
        }
    }

    /// Does the filter select on flows (`--netns`, `--port`, `--addr`)? The
    /// flag of the first such filter, for error messages.
    pub fn flow_flag(&self) -> Option<&'static str> {
        if !self.netns.is_empty() {
            Some("netns")
        } else if !self.ports.is_empty() {
            Some("port")
        } else if !self.addrs.is_empty() {
            Some("addr")
        } else {
            None
        }
    }

    /// The flow part of the check: an event passes when it has endpoints
    /// and its namespace, a port and an address (either side) match.
    pub fn matches_flow(&self, body: &crate::gadgets::Body) -> bool {
        if self.flow_flag().is_none() {
            return true;
        }
        let Some(ep) = body.endpoints() else {
            return false;
        };
        (self.netns.is_empty() || self.netns.iter().any(|n| n.inode == ep.netns))
            && (self.ports.is_empty() || ep.ports.iter().flatten().any(|p| self.ports.contains(p)))
            && (self.addrs.is_empty()
                || ep
                    .addrs
                    .iter()
                    .flatten()
                    .any(|a| self.addrs.iter().any(|c| c.contains(*a))))
    }

    /// Does the filter select on anything that only user space can check?
    pub fn needs_workload(&self) -> bool {
        self.container.is_some() || self.names_pods()
    }

    /// Does the filter select pods by name (`--pod`, `-n`, a pod
    /// selection)? Their names come from the metadata sources.
    pub fn names_pods(&self) -> bool {
        self.pod.is_some() || self.namespace.is_some() || !self.pods.is_empty()
    }

    /// Does the filter select on the process (pid, uid, command name)? The
    /// flag of the first such filter, for error messages.
    pub fn process_flag(&self) -> Option<&'static str> {
        if self.pid.is_some() {
            Some("pid")
        } else if self.uid.is_some() {
            Some("uid")
        } else if self.comm.is_some() {
            Some("comm")
        } else {
            None
        }
    }

    /// The complete check, applied to every decoded, enriched event. An
    /// event without a task never matches a process filter.
    pub fn matches(&self, ev: &Event) -> bool {
        self.matches_process(&ev.header)
            && self.matches_flow(&ev.body)
            && (!self.needs_workload()
                || std::iter::once(&*ev.header.workload)
                    .chain(ev.body.workloads())
                    .any(|w| self.matches_workload(w)))
    }

    /// The check for a sample that has only a header (a CPU profile's
    /// stacks): process filters and the header's own workload.
    pub fn matches_header(&self, h: &Header) -> bool {
        self.matches_process(h) && (!self.needs_workload() || self.matches_workload(&h.workload))
    }

    fn matches_process(&self, h: &Header) -> bool {
        if let Some(pid) = self.pid {
            if h.pid != Some(pid) {
                return false;
            }
        }
        if let Some(uid) = self.uid {
            if h.uid != Some(uid) {
                return false;
            }
        }
        if let Some(comm) = &self.comm {
            if h.comm.as_ref() != Some(comm) {
                return false;
            }
        }
        if !self.cgroups.is_empty() {
            let inside = self.cgroups.iter().any(|t| {
                h.cgroup_id == t.id
                    || h.cgroup.as_deref().is_some_and(|p| {
                        p == t.path || t.path == "/" || p.starts_with(&format!("{}/", t.path))
                    })
            });
            if !inside {
                return false;
            }
        }
        true
    }

    pub(crate) fn matches_workload(&self, w: &Workload) -> bool {
        if let Some(c) = &self.container {
            if !w
                .container_id
                .as_deref()
                .is_some_and(|id| id.starts_with(c.as_str()))
            {
                return false;
            }
        }
        if let Some(p) = &self.pod {
            if w.pod.as_deref() != Some(p.as_str()) {
                return false;
            }
        }
        if let Some(n) = &self.namespace {
            if w.namespace.as_deref() != Some(n.as_str()) {
                return false;
            }
        }
        if !self.pods.is_empty() {
            let (Some(ns), Some(pod)) = (&w.namespace, &w.pod) else {
                return false;
            };
            if !self
                .pods
                .get(ns.as_str())
                .is_some_and(|names| names.contains(pod.as_str()))
            {
                return false;
            }
        }
        true
    }
}

/// Resolve a user's cgroup argument: a filesystem path inside the cgroup v2
/// mount, or a path relative to its root.
pub fn resolve_cgroup(root: &Path, arg: &str) -> Result<CgroupTarget> {
    let given = PathBuf::from(arg);
    let full = if given.starts_with(root) {
        given
    } else {
        root.join(arg.trim_start_matches('/'))
    };
    let meta = std::fs::metadata(&full).map_err(|e| {
        bad(
            "cgroup",
            format!(
                "{}: {e} (give a path below {})",
                full.display(),
                root.display()
            ),
        )
    })?;
    if !meta.is_dir() || !full.join("cgroup.procs").exists() {
        return Err(bad(
            "cgroup",
            format!("{} is not a cgroup v2 directory", full.display()),
        ));
    }
    let rel = full.strip_prefix(root).unwrap_or(Path::new(""));
    let path = format!("/{}", rel.display()).replace("//", "/");
    let path = if path.len() > 1 {
        path.trim_end_matches('/').to_string()
    } else {
        path
    };
    let level = rel.components().count() as u32;
    Ok(CgroupTarget {
        path,
        id: meta.ino(),
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> FilterArgs {
        FilterArgs::default()
    }

    fn w(ns: &str, pod: &str) -> Workload {
        Workload {
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            ..Workload::default()
        }
    }

    fn selection(pods: &[(&str, &str)]) -> Filter {
        Filter::parse(
            &FilterArgs {
                pods: pods
                    .iter()
                    .map(|(n, p)| (n.to_string(), p.to_string()))
                    .collect(),
                ..args()
            },
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_pod_selection_keeps_only_the_listed_pods() {
        let f = selection(&[("shop", "web-1"), ("front", "api-0")]);
        assert!(f.needs_workload() && f.names_pods());
        assert!(f.matches_workload(&w("shop", "web-1")));
        assert!(f.matches_workload(&w("front", "api-0")));
        // Same name, other namespace; and a host process.
        assert!(!f.matches_workload(&w("front", "web-1")));
        assert!(!f.matches_workload(&Workload::default()));
        assert!(!selection(&[]).needs_workload());
    }

    /// A drop between a host process and a selected pod: kept for the
    /// destination side alone.
    #[test]
    fn a_network_event_is_kept_when_either_side_is_selected() {
        use crate::gadgets::net::{Flow, RawFlow};
        use crate::gadgets::{drop::Drop, Body};
        use bytemuck::Zeroable;
        let mut flow = Flow::decode(&RawFlow::zeroed()).unwrap();
        flow.sides[1].workload = Some(Arc::new(w("shop", "web-1")));
        let ev = |flow: Flow| Event {
            body: Body::Drop(Drop {
                reason: "NETFILTER_DROP".into(),
                location: "nf_hook_slow".into(),
                flow,
                stack: None,
            }),
            header: Header {
                timestamp: std::time::SystemTime::now(),
                node: Arc::from("n1"),
                pid: None,
                tid: None,
                uid: None,
                comm: None,
                cgroup_id: 0,
                cgroup: None,
                workload: Arc::default(),
            },
        };
        let f = selection(&[("shop", "web-1")]);
        assert!(f.matches(&ev(flow.clone())));
        flow.sides[1].workload = Some(Arc::new(w("shop", "web-2")));
        assert!(!f.matches(&ev(flow)));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Filter::parse(
            &FilterArgs {
                pid: Some("abc".into()),
                ..args()
            },
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad value for --pid: 'abc' is not a process id"
        );
        let e = Filter::parse(
            &FilterArgs {
                uid: Some("root".into()),
                ..args()
            },
            None,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("bad value for --uid"));
        let e = Filter::parse(
            &FilterArgs {
                comm: Some("a-very-long-command-name".into()),
                ..args()
            },
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("15 characters"));
        let e = Filter::parse(
            &FilterArgs {
                container: Some("xyz!".into()),
                ..args()
            },
            None,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("bad value for --container"));
        let e = Filter::parse(
            &FilterArgs {
                cgroup: vec!["/x".into()],
                ..args()
            },
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no cgroup v2"));
    }

    #[test]
    fn kernel_part_carries_pid_uid_and_cgroups() {
        let mut f = Filter::parse(
            &FilterArgs {
                pid: Some("42".into()),
                uid: Some("0".into()),
                ..args()
            },
            None,
        )
        .unwrap();
        f.cgroups.push(CgroupTarget {
            path: "/a/b".into(),
            id: 77,
            level: 2,
        });
        let k = f.kernel();
        assert_eq!((k.pid, k.uid, k.has_uid, k.n_cgroups), (42, 0, 1, 1));
        assert_eq!((k.cgroup_ids[0], k.cgroup_levels[0]), (77, 2));
    }

    #[test]
    fn container_prefix_accepts_runtime_urls() {
        let f = Filter::parse(
            &FilterArgs {
                container: Some("containerd://ABC123".into()),
                ..args()
            },
            None,
        )
        .unwrap();
        assert_eq!(f.container.as_deref(), Some("abc123"));
    }

    #[test]
    fn container_filter_narrows_to_its_cgroup_in_the_kernel() {
        let id = "7c3ad5e8c1f4d1b8b5e9f0e3c2a1b4d6e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3";
        let root = std::env::temp_dir().join(format!("plumb-narrow-{}", std::process::id()));
        let dir = root.join(format!("system.slice/docker-{id}.scope"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        std::fs::create_dir_all(root.join("system.slice/sshd.service")).unwrap();
        let mut f = Filter::parse(
            &FilterArgs {
                container: Some("7c3ad5".into()),
                ..args()
            },
            None,
        )
        .unwrap();
        f.narrow_to_containers(&CgroupFs::at(root.clone()));
        let k = f.kernel();
        assert_eq!(k.n_cgroups, 1);
        assert_eq!(k.cgroup_levels[0], 2);
        assert_eq!(
            k.cgroup_ids[0],
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).unwrap())
        );
        let mut none = Filter::parse(
            &FilterArgs {
                container: Some("ffff".into()),
                ..args()
            },
            None,
        )
        .unwrap();
        none.narrow_to_containers(&CgroupFs::at(root.clone()));
        assert_eq!(none.kernel().n_cgroups, 0);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_empty_hierarchy_still_narrows_to_cgroups_made_later() {
        let root = std::env::temp_dir().join(format!("plumb-narrow-empty-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let mut f = Filter::parse(
            &FilterArgs {
                namespace: Some("batch".into()),
                ..args()
            },
            None,
        )
        .unwrap();
        f.narrow_in_kernel(&CgroupFs::at(root.clone()), &[]);
        let k = f.kernel();
        assert_eq!(k.n_cgroups, 0);
        assert_eq!(
            k.cgroups_newer_than,
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&root).unwrap())
        );
        assert!(f.describe_kernel().contains("no cgroup that exists now"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn resolve_cgroup_rejects_non_cgroup_dirs() {
        let dir = std::env::temp_dir();
        let e = resolve_cgroup(&dir, "/").unwrap_err();
        assert!(e.to_string().contains("not a cgroup v2 directory"), "{e}");
    }
}
