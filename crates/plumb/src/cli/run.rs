//! `plumb run PROG.bpf.o`: the user's own CO-RE object, loaded, attached
//! to the selected pod, namespace, process or cgroup, its maps printed
//! decoded. The selection is resolved here (pods through the runtime, as
//! `plumb bpftrace` does); the rest is plumb-run's.

use super::bpftrace::Usage;
use super::common;
use clap::Args;
use plumb_bpftrace::Context;
use plumb_core::enrich::cgroupfs::CgroupFs;
use plumb_run::{Format, Options, Target};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const LONG_ABOUT: &str = "\
Load your own CO-RE BPF object (clang -target bpf -g -O2), attach its programs, and print its \
maps decoded by their BTF: every --interval and once at the end (--duration or Ctrl-C).

Programs attach by their section name as libbpf does (tracepoint/, raw_tp/, tp_btf/, fentry/, \
kprobe/, uprobe/PATH:FUNC, perf_event at 99 Hz on every CPU). Programs that need a place get it \
from the selection: a socket filter goes on a packet socket in the selected network namespace \
(else this host's), XDP and TC programs (tc/ingress, tc/egress) on the namespace's interfaces, \
cgroup programs on the selected cgroup. --attach SECTION=TARGET (a section or program name) \
overrides it: a netns, IFNAME[,IFNAME], a cgroup directory, PATH:FUNC (inside the pod for a \
pod), a kernel function, CATEGORY:NAME, or a frequency in Hz.

Read-only globals (const volatile) are set with --set NAME=VALUE (integers, bools, enum names, \
char arrays). Where the object declares them, the selection sets:
  plumb_target_pid        the selected process (--pid, or the pod's main process)
  plumb_target_cgroup_id  the id of the selected cgroup (--cgroup, the pod's, the process's)
  plumb_target_netns      the inode of the selected network namespace

Maps: struct keys and values become fields (Prometheus labels), integers numbers, char arrays \
strings, per-CPU values are summed, array entries that are all zero are left out. A key of type \
plumb_log2 (typedef __u32 plumb_log2;), or a key struct with a member of that type, makes a \
log2 histogram (bucket b counts 2^b <= v < 2^(b+1)). A ring buffer or perf buffer MAP is \
printed record by record, decoded as the type of a global named MAP_record (or what it points \
to); lost perf records are counted. Other map types are named in a warning.

Examples:
  plumb run proto.bpf.o --netns lab-a -o prometheus --duration 10s
  plumb run lat.bpf.o --pod web-1 -n shop --interval 5s
  plumb run xdp.bpf.o --attach xdp=eth0 --netns lab-a";

#[derive(Debug, Clone, Args)]
pub struct RunCmd {
    /// The BPF object (an ELF built with clang -target bpf -g).
    #[arg(value_name = "PROG.bpf.o")]
    pub object: PathBuf,
    /// The pod to attach to (on this node; with -n, in that namespace).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["pid", "netns", "cgroup"])]
    pub pod: Option<String>,
    /// The pod's Kubernetes namespace.
    #[arg(short = 'n', long, value_name = "NS", requires = "pod")]
    pub namespace: Option<String>,
    /// A network namespace: a name under /run/netns or a path (/proc/PID/ns/net).
    #[arg(long, value_name = "NAME|PATH", conflicts_with_all = ["pid"])]
    pub netns: Option<String>,
    /// A process: its network namespace, cgroup and root.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// A cgroup v2 directory (absolute, or below the cgroup root).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid"])]
    pub cgroup: Option<String>,
    /// Where a section's programs attach, overriding the selection (repeatable, or comma-separated pairs).
    #[arg(long, value_name = "SECTION=TARGET", value_parser = plumb_run::parse_pair)]
    pub attach: Vec<(String, String)>,
    /// Set a read-only global before load (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = plumb_run::parse_pair)]
    pub set: Vec<(String, String)>,
    /// Stop after this long [default: at Ctrl-C].
    #[arg(long, value_name = "TIME", value_parser = common::parse_duration)]
    pub duration: Option<Duration>,
    /// Print the maps this often [default: only at the end].
    #[arg(long, value_name = "TIME", value_parser = common::parse_duration)]
    pub interval: Option<Duration>,
    /// columns, json (a line per map entry or record), or prometheus (text exposition).
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "columns")]
    pub output: Format,
    /// Prometheus: series per map before the rest fold into one labelled 'other'.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_series: usize,
}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

fn netns_path(arg: &str) -> anyhow::Result<PathBuf> {
    plumb_core::filter::netns::resolve(arg)?;
    Ok(if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        Path::new(plumb_core::filter::netns::RUN_NETNS).join(arg)
    })
}

fn of_context(c: &Context, fs: &CgroupFs) -> Target {
    Target {
        what: match &c.pod {
            Some((ns, p)) => format!("pod {ns}/{p}"),
            None => format!("process {}", c.pid),
        },
        pid: Some(c.pid),
        root: Some(c.root.clone()),
        netns: Some(PathBuf::from(format!("/proc/{}/ns/net", c.pid))),
        cgroup: Some(fs.root().join(c.cgroup.trim_start_matches('/'))),
    }
}

impl RunCmd {
    fn target(&self) -> anyhow::Result<Target> {
        let fs = CgroupFs::discover();
        if let Some(pod) = &self.pod {
            let c = Context::of_pod(
                self.namespace.as_deref(),
                pod,
                fs.as_ref(),
                &super::trace::local_sources(),
            )?;
            return Ok(of_context(&c, fs.as_ref().expect("a pod was found in it")));
        }
        if let Some(pid) = self.pid {
            if pid == 0 {
                return Err(bad("--pid: 0 is not a process id"));
            }
            let c = Context::of_pid(pid, fs.as_ref())?;
            return Ok(of_context(
                &c,
                fs.as_ref().expect("a cgroup was found in it"),
            ));
        }
        let mut t = Target::default();
        if let Some(n) = &self.netns {
            t.netns = Some(netns_path(n)?);
            t.what = format!("netns {n}");
        }
        if let Some(c) = &self.cgroup {
            let fs = fs.ok_or_else(|| bad("--cgroup: no cgroup v2 hierarchy is mounted"))?;
            let dir = if Path::new(c).is_absolute() && Path::new(c).starts_with(fs.root()) {
                PathBuf::from(c)
            } else {
                fs.root().join(c.trim_start_matches('/'))
            };
            if !dir.is_dir() {
                return Err(bad(format!("--cgroup: no cgroup {}", dir.display())));
            }
            t.cgroup = Some(dir);
        }
        Ok(t)
    }
}

/// A refusal by plumb-run, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunFailed(pub plumb_run::Error);

pub fn run(cmd: RunCmd, verbose: bool) -> anyhow::Result<()> {
    plumb_core::preflight::check_capabilities()?;
    let target = cmd.target()?;
    let opts = Options {
        object: cmd.object.clone(),
        target,
        attach: cmd.attach.clone(),
        set: cmd.set.clone(),
        duration: cmd.duration,
        interval: cmd.interval,
        format: cmd.output,
        max_series: cmd.max_series,
        node: plumb_core::runner::node_name(),
        width: common::terminal_width(),
    };
    let stop = common::stop_on_signals()?;
    let mut stderr = std::io::stderr();
    let mut ready = |s: &plumb_run::Summary| {
        if verbose {
            eprintln!("plumb: programs loaded, ids {:?}", s.prog_ids);
        }
    };
    let out = std::io::stdout();
    match plumb_run::run(&opts, &stop, out.lock(), &mut stderr, &mut ready) {
        Ok(_) => Ok(()),
        Err(plumb_run::Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(RunFailed(e).into()),
    }
}
