//! Capture points: the interfaces a capture reads, each with the socket
//! opened on it inside its own network namespace (a thread made for the
//! job enters the namespace; the socket keeps it after the thread ends),
//! and the words that name it in the file.

use crate::error::{Error, Result};
use crate::filter::{self, LinkType};
use crate::links::{self, Link};
use crate::ring::{Ring, RingSize};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where to capture, as the caller resolved it (a pod to its network
/// namespace, a name to its /run/netns file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// The namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`); None:
    /// the caller's own (the node's).
    pub netns: Option<PathBuf>,
    /// The (Kubernetes namespace, pod) it belongs to.
    pub pod: Option<(String, String)>,
    /// Only these interfaces; empty: all but loopback.
    pub interfaces: Vec<String>,
    /// Also the node's end of each captured veth.
    pub node_side: bool,
}

/// One interface being captured, named for the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    pub node: String,
    pub interface: String,
    /// The namespace's /run/netns name, `host`, or `net:[INODE]`.
    pub netns: String,
    pub pod: Option<(String, String)>,
    /// On the node's end of this pod interface's veth.
    pub node_side_of: Option<String>,
    pub link: LinkType,
}

impl Point {
    /// `node n1, netns lab-a, pod shop/web-1` (and `node side of eth0`).
    pub fn description(&self) -> String {
        let mut s = format!("node {}, netns {}", self.node, self.netns);
        if let Some((ns, p)) = &self.pod {
            s.push_str(&format!(", pod {ns}/{p}"));
        }
        if let Some(i) = &self.node_side_of {
            s.push_str(&format!(", node side of the pod's {i}"));
        }
        s
    }

    /// The packet comment: the description and the direction (the
    /// interface's name is the packet's interface block's). Kept short:
    /// every packet carries it, and on small packets it is most of what
    /// is written.
    pub fn comment(&self, outgoing: bool) -> String {
        format!(
            "{}, {}",
            self.description(),
            if outgoing { "out" } else { "in" }
        )
    }
}

/// The inode of a namespace file.
fn inode(path: &Path) -> Option<u64> {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).ok()?).into()
}

/// How a namespace is named: its /run/netns name if it has one, `host`
/// for the caller's own, else `net:[INODE]`.
pub fn netns_name(path: Option<&Path>) -> String {
    let own_path = Path::new("/proc/thread-self/ns/net");
    let own = inode(own_path);
    let path = path.unwrap_or(own_path);
    let Some(ino) = inode(path) else {
        return path.display().to_string();
    };
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            if inode(&e.path()) == Some(ino) {
                return e.file_name().to_string_lossy().into_owned();
            }
        }
    }
    if Some(ino) == own {
        return "host".to_string();
    }
    format!("net:[{ino}]")
}

/// True when `path` is the caller's own network namespace.
pub fn is_own_netns(path: &Path) -> bool {
    inode(path).is_some() && inode(path) == inode(Path::new("/proc/thread-self/ns/net"))
}

/// Run `f` in the network namespace at `ns` (None: here), in a thread
/// made for it.
pub fn in_netns<T: Send + 'static>(
    ns: Option<&Path>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let Some(ns) = ns else { return f() };
    let file = std::fs::File::open(ns).map_err(|source| Error::Netns {
        path: ns.to_path_buf(),
        source,
    })?;
    let path = ns.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: this thread exists for this one job and ends after it.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::Netns {
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| {
        Err(Error::Socket {
            what: "a namespace thread",
            source: std::io::Error::other("it panicked"),
        })
    })
}

/// What a capture needs to open its sockets.
#[derive(Debug, Clone)]
pub struct Spec {
    pub node: String,
    pub expression: String,
    pub snaplen: u32,
    pub ring: RingSize,
}

fn pick(links: &[Link], wanted: &[String], place: &str) -> Result<Vec<Link>> {
    if wanted.is_empty() {
        let all: Vec<Link> = links.iter().filter(|l| !l.loopback).cloned().collect();
        if all.is_empty() {
            return Err(Error::NoInterfaces {
                place: place.to_string(),
            });
        }
        return Ok(all);
    }
    wanted
        .iter()
        .map(|w| {
            links
                .iter()
                .find(|l| l.name == *w)
                .cloned()
                .ok_or_else(|| Error::NoInterface {
                    name: w.clone(),
                    place: place.to_string(),
                })
        })
        .collect()
}

fn open_on(link: &Link, place: &str, spec: &Spec) -> Result<(LinkType, Ring)> {
    let lt = LinkType::of_hardware(link.hatype).ok_or_else(|| Error::LinkType {
        name: link.name.clone(),
        place: place.to_string(),
        hatype: link.hatype,
    })?;
    let f = filter::compile(&spec.expression, lt, spec.snaplen)?;
    Ok((lt, Ring::open(link.index, &f, spec.ring)?))
}

/// Open a socket on every interface of every place.
pub fn open(places: &[Place], spec: &Spec) -> Result<Vec<(Point, Ring)>> {
    let mut out = Vec::new();
    for p in places {
        let netns = netns_name(p.netns.as_deref());
        let shown = match &p.pod {
            Some((ns, name)) => format!("pod {ns}/{name}"),
            None => format!("netns {netns}"),
        };
        let (wanted, s, sh) = (p.interfaces.clone(), spec.clone(), shown.clone());
        let opened = in_netns(p.netns.as_deref(), move || {
            let links = links::here()?;
            pick(&links, &wanted, &sh)?
                .into_iter()
                .map(|l| open_on(&l, &sh, &s).map(|(lt, r)| (l, lt, r)))
                .collect::<Result<Vec<_>>>()
        })?;
        let host = if p.node_side {
            links::here()?
        } else {
            Vec::new()
        };
        for (l, lt, ring) in opened {
            let pod_point = Point {
                node: spec.node.clone(),
                interface: l.name.clone(),
                netns: netns.clone(),
                pod: p.pod.clone(),
                node_side_of: None,
                link: lt,
            };
            out.push((pod_point, ring));
            if p.node_side {
                let peer = l
                    .peer
                    .and_then(|i| {
                        host.iter()
                            .find(|h| h.index == i && h.peer == Some(l.index))
                    })
                    .ok_or_else(|| Error::NoPeer {
                        name: l.name.clone(),
                        place: shown.clone(),
                    })?;
                let (plt, pring) = open_on(peer, "the node", spec)?;
                let node_point = Point {
                    node: spec.node.clone(),
                    interface: peer.name.clone(),
                    netns: netns_name(None),
                    pod: p.pod.clone(),
                    node_side_of: Some(l.name.clone()),
                    link: plt,
                };
                out.push((node_point, pring));
            }
        }
    }
    Ok(out)
}
