//! Attaching the user's programs: where libbpf knows from the section name
//! (tracepoints, raw and BTF tracepoints, fentry, kprobes, uprobes with a
//! path), libbpf does it; the rest get their place from the selection or
//! from `--attach SECTION=TARGET`:
//!
//! | program type | target | default |
//! |---|---|---|
//! | socket filter | a netns name or path | the selection's netns, else this host's |
//! | XDP, TC (`tc/egress` for egress) | interface names, comma-separated | every interface of the selection's netns |
//! | cgroup programs | a cgroup directory | the selection's cgroup |
//! | uprobe, uretprobe | `PATH:FUNCTION` (inside the pod's root for a pod) | the section's own |
//! | kprobe, kretprobe | a kernel function | the section's own |
//! | tracepoint | `CATEGORY:NAME` | the section's own |
//! | perf_event | a frequency in Hz, on the software CPU clock of every CPU | 99 |
//!
//! [`Attachments`] owns everything made; dropping it detaches all of it,
//! including TC filters and the clsact qdiscs it created.

use crate::error::{Error, Result};
use crate::netns;
use crate::target::Target;
use libbpf_rs::{Link, Object, ProgramMut, ProgramType, UprobeOpts};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// A TC filter put on an interface, to take off again.
struct TcFilter {
    netns: Option<PathBuf>,
    ifindex: i32,
    egress: bool,
    prog_fd: RawFd,
    created_qdisc: bool,
}

/// TC filter handle and priority plumb run uses (`tc filter show` shows them).
const TC_HANDLE: u32 = 0x706c;
const TC_PRIORITY: u32 = 0x7001;

/// Everything attached; dropped, all of it is detached.
#[derive(Default)]
pub struct Attachments {
    links: Vec<Link>,
    fds: Vec<OwnedFd>,
    tc: Vec<TcFilter>,
    /// One line per attachment, for the user.
    pub lines: Vec<String>,
}

impl Drop for Attachments {
    fn drop(&mut self) {
        for f in self.tc.drain(..) {
            let shown = f.ifindex;
            if let Err(e) = netns::run_in(f.netns.clone().as_deref(), move || tc_remove(&f)) {
                eprintln!("plumb: warning: removing the TC filter on interface {shown}: {e}");
            }
        }
        self.links.clear();
        self.fds.clear();
    }
}

fn tc_hook(fd: RawFd, ifindex: i32, egress: bool) -> libbpf_rs::TcHook {
    // SAFETY: the program's fd outlives the hook (the object is dropped
    // after the attachments).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut b = libbpf_rs::TcHookBuilder::new(fd);
    b.ifindex(ifindex)
        .replace(true)
        .handle(TC_HANDLE)
        .priority(TC_PRIORITY);
    b.hook(if egress {
        libbpf_rs::TC_EGRESS
    } else {
        libbpf_rs::TC_INGRESS
    })
}

fn tc_remove(f: &TcFilter) -> std::result::Result<(), String> {
    let mut hook = tc_hook(f.prog_fd, f.ifindex, f.egress);
    let detached = hook.detach().map_err(|e| e.to_string());
    if f.created_qdisc {
        hook.attach_point(libbpf_rs::TC_INGRESS | libbpf_rs::TC_EGRESS);
        hook.destroy().map_err(|e| format!("clsact qdisc: {e}"))?;
    }
    detached
}

/// Where `--attach` sends a program, if it names it (by section or name).
fn override_for<'a>(p: &ProgramMut<'_>, overrides: &'a [(String, String)]) -> Option<&'a str> {
    let name = p.name().to_string_lossy();
    let section = p.section().to_string_lossy();
    overrides
        .iter()
        .find(|(k, _)| *k == section || *k == name)
        .map(|(_, v)| v.as_str())
}

/// Check every `--attach` names a program of the object.
pub fn check_overrides(
    programs: &[(String, String)],
    overrides: &[(String, String)],
) -> Result<()> {
    for (k, _) in overrides {
        if !programs.iter().any(|(n, s)| n == k || s == k) {
            return Err(Error::NoSuchSection(k.clone()));
        }
    }
    Ok(())
}

/// Attach every program of `obj`.
pub fn attach_all(
    obj: &Object,
    target: &Target,
    overrides: &[(String, String)],
) -> Result<Attachments> {
    let mut a = Attachments::default();
    for p in obj.progs_mut() {
        attach_one(&p, target, override_for(&p, overrides), &mut a)?;
    }
    Ok(a)
}

fn names(p: &ProgramMut<'_>) -> (String, String) {
    (
        p.name().to_string_lossy().into_owned(),
        p.section().to_string_lossy().into_owned(),
    )
}

fn attach_err(p: &ProgramMut<'_>, reason: String) -> Error {
    let (program, section) = names(p);
    let why = if (section.starts_with("kprobe")
        || section.starts_with("kretprobe")
        || section.starts_with("ksyscall"))
        && !Path::new("/sys/kernel/tracing/kprobe_events").exists()
        && !Path::new("/sys/kernel/debug/tracing/kprobe_events").exists()
    {
        format!("this kernel has no kprobes ({reason})")
    } else if section.starts_with("fentry") || section.starts_with("fexit") {
        format!("{reason} (this kernel may refuse fentry/fexit programs)")
    } else {
        reason
    };
    Error::Attach {
        program,
        section,
        reason: why,
    }
}

fn needs(p: &ProgramMut<'_>, what: &'static str) -> Error {
    let (program, section) = names(p);
    Error::NeedsTarget {
        program,
        section,
        what,
    }
}

fn ns_path(arg: &str) -> PathBuf {
    if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        Path::new(plumb_core::filter::netns::RUN_NETNS).join(arg)
    }
}

fn attach_one(
    p: &ProgramMut<'_>,
    target: &Target,
    over: Option<&str>,
    a: &mut Attachments,
) -> Result<()> {
    let (name, section) = names(p);
    let fd = p.as_fd().as_raw_fd();
    let here = |ns: &Option<PathBuf>| match ns {
        Some(n) => n.display().to_string(),
        None => "this host's network namespace".to_string(),
    };
    match p.prog_type() {
        ProgramType::SocketFilter => {
            let ns = over.map(ns_path).or_else(|| target.netns.clone());
            let sock = netns::run_in(ns.as_deref(), move || packet_socket(fd))
                .map_err(|e| attach_err(p, e))?;
            a.fds.push(sock);
            a.lines.push(format!(
                "{name}: socket filter on a packet socket in {}",
                here(&ns)
            ));
        }
        ProgramType::Xdp | ProgramType::SchedCls | ProgramType::SchedAct => {
            let xdp = p.prog_type() == ProgramType::Xdp;
            let wanted: Option<Vec<String>> =
                over.map(|o| o.split(',').map(|s| s.trim().to_string()).collect());
            if wanted.is_none() && target.netns.is_none() {
                return Err(needs(p, "interfaces: --attach SECTION=IFNAME[,IFNAME] or --pod/--netns, whose interfaces it goes on"));
            }
            let ns = target.netns.clone();
            let egress = section.contains("egress");
            let made = netns::run_in(ns.as_deref(), move || {
                let ifaces = match wanted {
                    Some(w) => w
                        .iter()
                        .map(|n| netns::ifindex_here(n).map(|i| (i, n.clone())))
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                    None => netns::interfaces_here(),
                };
                if ifaces.is_empty() {
                    return Err("the namespace has no interface but lo".to_string());
                }
                let mut out = Vec::new();
                for (i, n) in ifaces {
                    let r = if xdp {
                        xdp_link(fd, i).map(|f| (Some(f), false))
                    } else {
                        tc_add(fd, i, egress).map(|c| (None, c))
                    };
                    match r {
                        Ok((f, created)) => out.push((i, n, f, created)),
                        Err(e) => {
                            // Take off what this call put on before failing.
                            for (i, _, f, created) in out {
                                drop(f);
                                if !xdp {
                                    let _ = tc_remove(&TcFilter {
                                        netns: None,
                                        ifindex: i,
                                        egress,
                                        prog_fd: fd,
                                        created_qdisc: created,
                                    });
                                }
                            }
                            return Err(format!("{n}: {e}"));
                        }
                    }
                }
                Ok(out)
            })
            .map_err(|e| attach_err(p, e))?;
            for (i, n, f, created) in made {
                match f {
                    Some(f) => {
                        a.fds.push(f);
                        a.lines.push(format!("{name}: XDP on {n} in {}", here(&ns)));
                    }
                    None => {
                        a.tc.push(TcFilter {
                            netns: ns.clone(),
                            ifindex: i,
                            egress,
                            prog_fd: fd,
                            created_qdisc: created,
                        });
                        a.lines.push(format!(
                            "{name}: TC {} on {n} in {}",
                            if egress { "egress" } else { "ingress" },
                            here(&ns)
                        ));
                    }
                }
            }
        }
        ProgramType::CgroupSkb
        | ProgramType::CgroupSock
        | ProgramType::CgroupSockAddr
        | ProgramType::CgroupSockopt
        | ProgramType::CgroupSysctl
        | ProgramType::CgroupDevice
        | ProgramType::SockOps => {
            let dir = over
                .map(PathBuf::from)
                .or_else(|| target.cgroup.clone())
                .ok_or_else(|| {
                    needs(
                        p,
                        "a cgroup: --attach SECTION=/sys/fs/cgroup/PATH, or --pod/--pid/--cgroup",
                    )
                })?;
            let f = std::fs::File::open(&dir)
                .map_err(|e| attach_err(p, format!("{}: {e}", dir.display())))?;
            let link = p
                .attach_cgroup(f.as_raw_fd())
                .map_err(|e| attach_err(p, e.to_string()))?;
            a.links.push(link);
            a.lines.push(format!("{name}: cgroup {}", dir.display()));
        }
        ProgramType::PerfEvent => {
            let hz: u64 = match over {
                Some(o) => o
                    .trim_end_matches("hz")
                    .trim_end_matches("Hz")
                    .parse()
                    .map_err(|_| attach_err(p, format!("'{o}' is not a frequency in Hz")))?,
                None => 99,
            };
            let cpus = libbpf_rs::num_possible_cpus().map_err(|e| attach_err(p, e.to_string()))?;
            let mut n = 0;
            for cpu in 0..cpus {
                // An offline CPU has no clock to open: it is skipped.
                let Ok(pfd) = plumb_core::perf::open_cpu_clock(cpu as u32, hz) else {
                    continue;
                };
                let pfd = pfd.into_raw_fd();
                let link = p.attach_perf_event(pfd).map_err(|e| {
                    // SAFETY: pfd is ours and was not taken by libbpf.
                    drop(unsafe { OwnedFd::from_raw_fd(pfd) });
                    attach_err(p, e.to_string())
                })?;
                a.links.push(link);
                n += 1;
            }
            if n == 0 {
                return Err(attach_err(
                    p,
                    "no CPU's software clock could be opened".into(),
                ));
            }
            a.lines.push(format!(
                "{name}: perf event, CPU clock at {hz} Hz on {n} CPUs"
            ));
        }
        _ => {
            let link = auto_or_given(p, target, over)?;
            a.links.push(link);
            a.lines
                .push(format!("{name}: {}", over.unwrap_or(&section)));
        }
    }
    Ok(())
}

/// Tracing programs: libbpf's attach from the section, or where `--attach` says.
fn auto_or_given(p: &ProgramMut<'_>, target: &Target, over: Option<&str>) -> Result<Link> {
    let (_, section) = names(p);
    let kind = section.split('/').next().unwrap_or("");
    let r = match (kind, over) {
        ("uprobe" | "uretprobe", given) => {
            // The section's own PATH:FUNC (uprobe//bin/x:f) or the given one.
            let spec = given
                .map(str::to_string)
                .or_else(|| section.split_once('/').map(|(_, s)| s.to_string()));
            let Some((path, func)) = spec.as_deref().and_then(|s| s.rsplit_once(':')) else {
                return Err(needs(
                    p,
                    "a binary and function: --attach SECTION=PATH:FUNCTION",
                ));
            };
            let path = match &target.root {
                Some(root) if path.starts_with('/') => root.join(path.trim_start_matches('/')),
                _ => PathBuf::from(path),
            };
            let opts = UprobeOpts {
                retprobe: kind == "uretprobe",
                func_name: Some(func.to_string()),
                ..Default::default()
            };
            p.attach_uprobe_with_opts(target.pid.map_or(-1, |p| p as i32), &path, 0, opts)
        }
        ("kprobe" | "kretprobe", Some(func)) => p.attach_kprobe(kind == "kretprobe", func),
        ("tracepoint" | "tp", Some(tp)) => match tp.split_once(':') {
            Some((cat, name)) => {
                p.attach_tracepoint(libbpf_rs::TracepointCategory::Custom(cat.to_string()), name)
            }
            None => return Err(attach_err(p, format!("'{tp}' is not CATEGORY:NAME"))),
        },
        ("raw_tracepoint" | "raw_tp", Some(tp)) => p.attach_raw_tracepoint(tp),
        _ => p.attach(),
    };
    r.map_err(|e| {
        let log = plumb_core::loader::take_libbpf_log();
        let why = log.iter().rev().find(|l| !l.trim().is_empty()).cloned();
        attach_err(
            p,
            why.map(|w| w.trim().to_string())
                .unwrap_or_else(|| e.to_string()),
        )
    })
}

/// A packet socket seeing every packet of this namespace, with the
/// program as its filter.
fn packet_socket(prog_fd: RawFd) -> std::result::Result<OwnedFd, String> {
    // SAFETY: plain socket calls; the fd is owned at once.
    unsafe {
        let s = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        );
        if s < 0 {
            return Err(format!(
                "packet socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let s = OwnedFd::from_raw_fd(s);
        let rc = libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_BPF,
            &prog_fd as *const RawFd as *const libc::c_void,
            std::mem::size_of::<RawFd>() as u32,
        );
        if rc != 0 {
            return Err(format!(
                "SO_ATTACH_BPF: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(s)
    }
}

/// An XDP link on `ifindex` (in this thread's namespace); closing it detaches.
fn xdp_link(prog_fd: RawFd, ifindex: i32) -> std::result::Result<OwnedFd, String> {
    // SAFETY: a link fd is owned at once.
    let fd = unsafe {
        libbpf_rs::libbpf_sys::bpf_link_create(
            prog_fd,
            ifindex,
            libbpf_rs::libbpf_sys::BPF_XDP,
            std::ptr::null(),
        )
    };
    if fd < 0 {
        return Err(format!(
            "XDP link: {}",
            std::io::Error::from_raw_os_error(-fd)
        ));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A TC filter on `ifindex`; whether the clsact qdisc was made for it.
fn tc_add(prog_fd: RawFd, ifindex: i32, egress: bool) -> std::result::Result<bool, String> {
    let mut hook = tc_hook(prog_fd, ifindex, egress);
    let created = match hook.create() {
        Ok(_) => true,
        Err(e) if e.kind() == libbpf_rs::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(format!("clsact qdisc: {e}")),
    };
    if let Err(e) = hook.attach() {
        if created {
            hook.attach_point(libbpf_rs::TC_INGRESS | libbpf_rs::TC_EGRESS);
            let _ = hook.destroy();
        }
        return Err(format!("TC filter: {e}"));
    }
    Ok(created)
}
