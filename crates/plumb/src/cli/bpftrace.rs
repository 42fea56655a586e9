//! `plumb bpftrace`: run a bpftrace script with this host's bpftrace, in a
//! process's or a pod's context, until it exits, `--duration` passes or
//! Ctrl-C, and print what it prints. The same flags, given to `plumb
//! remote ... bpftrace` or `kubectl plumb bpftrace`, run it on the agents
//! ([`super::remote_bpftrace`]); the running itself is plumb-bpftrace's,
//! the same code the agent runs.

use super::common;
use clap::Args;
use plumb_bpftrace::runner::{self, Output, Spec, Stream};
use plumb_bpftrace::{preflight, script, Context};
use plumb_core::enrich::cgroupfs::CgroupFs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

pub const ABOUT: &str = "Run a bpftrace script (the node's bpftrace; BTF only, no kernel headers)";

pub const LONG_ABOUT: &str = "\
Run a bpftrace script with the node's bpftrace (the first `bpftrace` on PATH, \
or --bpftrace PATH). It needs the kernel's BTF (/sys/kernel/btf/vmlinux), never \
kernel headers.

In a context (--pod NAME [-n NS], or pod/NS/NAME; --pid N for a process on a host \
without Kubernetes), plumb replaces these variables in the script's text before \
bpftrace reads it (as whole words, in code and in strings, not in comments):

  $container_pid     the pod's main process as the host numbers it (its oldest \
process that is not the sandbox's pause), or N
  $container_cgroup  the id of that process's cgroup, a number: what bpftrace's \
`cgroup` builtin returns, for predicates like /cgroup == $container_cgroup/
  $container_root    /proc/PID/root, the container's root filesystem as the host \
sees it, for uprobes on its binaries: uprobe:$container_root/usr/bin/app:main

plumb adds no predicate of its own: the script says what it filters on. A script \
that uses one of these without a context is refused. Arguments after -- are \
bpftrace's positional parameters $1, $2, ...

At --duration (and on Ctrl-C, or when the output is closed) bpftrace gets SIGINT, \
prints its maps and exits; if it has not exited 10s later it is killed. Through an \
agent every line carries its node, and the agent needs --allow-bpftrace.

Examples:
  plumb bpftrace --pod web-1 -n shop -e 'tracepoint:syscalls:sys_enter_openat \
/cgroup == $container_cgroup/ { @[comm] = count(); }' --duration 30s
  kubectl plumb bpftrace pod/shop/web-1 -e 'uprobe:$container_root/usr/bin/app:main \
{ printf(\"%d\\n\", pid); }'
  kubectl plumb bpftrace node/worker-2 -f script.bt --duration 1m";

#[derive(Debug, Clone, Args)]
pub struct BpftraceCmd {
    /// The script, on the command line.
    #[arg(short = 'e', value_name = "SCRIPT")]
    pub expr: Option<String>,
    /// The script, from a file.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// pod/NS/NAME or pod/NAME: the pod's context (as --pod and -n);
    /// node/NAME: that node (kubectl plumb only).
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,
    /// The context of this pod (on this node; with -n, in that namespace).
    #[arg(long, value_name = "NAME", conflicts_with = "pid")]
    pub pod: Option<String>,
    /// The pod's Kubernetes namespace.
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// The context of this process ($container_pid is PID).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Stop bpftrace (SIGINT: it prints its maps) after this long.
    #[arg(long, value_name = "TIME", value_parser = common::parse_duration)]
    pub duration: Option<Duration>,
    /// The bpftrace binary to run on this host [default: bpftrace on PATH]
    /// (an agent runs its own: plumb agent --bpftrace).
    #[arg(long, value_name = "PATH")]
    pub bpftrace: Option<PathBuf>,
    /// text: bpftrace's lines (through agents, after a node column);
    /// json: one {"node": ..., "line": ...} object per line.
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
    /// bpftrace's positional parameters $1, $2, ...
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// Where a run's context is, as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Where {
    Nowhere,
    Pid(u32),
    /// (namespace, pod)
    Pod(Option<String>, String),
    /// A whole node (kubectl).
    Node(String),
}

/// A user mistake, in one line (exit code 2, as plumb's other usage errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

fn bad(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

impl BpftraceCmd {
    /// The script's text, from -e or -f.
    pub fn script(&self) -> anyhow::Result<String> {
        match (&self.expr, &self.file) {
            (Some(_), Some(_)) => Err(bad("give the script with -e or with -f, not both")),
            (None, None) => Err(bad("no script: give -e 'SCRIPT' or -f FILE")),
            (Some(e), None) => Ok(e.clone()),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| bad(format!("cannot read the script {}: {e}", f.display()))),
        }
    }

    /// The context asked for: the TARGET word, or --pod/-n/--pid.
    pub fn place(&self) -> anyhow::Result<Where> {
        let given = match self.target.as_deref() {
            None => None,
            Some(t) => Some(match t.split('/').collect::<Vec<_>>().as_slice() {
                ["pod", ns, name] if !ns.is_empty() && !name.is_empty() => {
                    Where::Pod(Some(ns.to_string()), name.to_string())
                }
                ["pod", name] if !name.is_empty() => {
                    Where::Pod(self.namespace.clone(), name.to_string())
                }
                ["node", name] if !name.is_empty() => Where::Node(name.to_string()),
                _ => {
                    return Err(bad(format!(
                        "'{t}' is not a target: pod/NS/NAME, pod/NAME or node/NAME"
                    )))
                }
            }),
        };
        let flags = match (&self.pod, self.pid) {
            (Some(p), _) => Some(Where::Pod(self.namespace.clone(), p.clone())),
            (None, Some(0)) => return Err(bad("--pid: 0 is not a process id")),
            (None, Some(pid)) => Some(Where::Pid(pid)),
            (None, None) => None,
        };
        match (given, flags) {
            (Some(_), Some(_)) => Err(bad(
                "give the context once: a TARGET (pod/NS/NAME) or --pod/--pid",
            )),
            (Some(w), None) | (None, Some(w)) => Ok(w),
            (None, None) => Ok(Where::Nowhere),
        }
    }

    pub fn json(&self) -> bool {
        self.output == "json"
    }
}

/// Lines to this terminal: bpftrace's stdout to stdout (flushed per line:
/// bpftrace's output is for reading as it comes), its stderr to stderr.
struct Local {
    json: bool,
    node: String,
}

impl Output for Local {
    fn line(&mut self, stream: Stream, line: &str) -> io::Result<()> {
        match stream {
            Stream::Stderr => {
                eprintln!("{line}");
                Ok(())
            }
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                if self.json {
                    let v = serde_json::json!({"node": self.node, "line": line});
                    serde_json::to_writer(&mut out, &v)?;
                    out.write_all(b"\n")?;
                } else {
                    writeln!(out, "{line}")?;
                }
                out.flush()
            }
        }
    }
}

/// bpftrace ended badly (its own message was printed above).
#[derive(Debug, thiserror::Error)]
#[error("bpftrace {0}")]
pub struct BpftraceFailed(pub String);

/// How bpftrace ended, in words, when that was a failure.
pub fn failure(exit_code: i32, signal: i32, killed: bool) -> Option<String> {
    match (exit_code, signal) {
        (0, _) => None,
        (-1, s) if killed => Some(format!(
            "did not exit after SIGINT within the grace period and was killed (signal {s})"
        )),
        (-1, s) => Some(format!("was ended by signal {s}")),
        (c, _) => Some(format!("exited with status {c}")),
    }
}

pub fn run(cmd: BpftraceCmd, verbose: bool) -> anyhow::Result<()> {
    let text = cmd.script()?;
    let place = cmd.place()?;
    let binary = preflight::find_binary(cmd.bpftrace.as_deref())?;
    preflight::check_btf()?;
    let fs = CgroupFs::discover();
    let ctx = match &place {
        Where::Nowhere => None,
        Where::Pid(pid) => Some(Context::of_pid(*pid, fs.as_ref())?),
        Where::Pod(ns, pod) => Some(Context::of_pod(
            ns.as_deref(),
            pod,
            fs.as_ref(),
            &super::trace::local_sources(),
        )?),
        Where::Node(n) => {
            return Err(bad(format!(
                "node/{n} names a cluster node: use it with kubectl plumb bpftrace"
            )))
        }
    };
    let script = script::substitute(&text, ctx.as_ref())?;
    if verbose {
        if let Some(c) = &ctx {
            eprintln!(
                "plumb: $container_pid {} $container_cgroup {} ({}) $container_root {}",
                c.pid,
                c.cgroup_id,
                c.cgroup,
                c.root.display()
            );
        }
    }
    let spec = Spec {
        binary,
        script,
        args: cmd.args.clone(),
        deadline: cmd.duration,
        grace: Spec::DEFAULT_GRACE,
    };
    let mut out = Local {
        json: cmd.json(),
        node: plumb_core::runner::node_name(),
    };
    let stop = common::stop_on_signals()?;
    let mut on_start = |pid: u32| {
        if verbose {
            eprintln!("plumb: bpftrace started, pid {pid}");
        }
    };
    let o = runner::run(&spec, &mut out, &stop, &mut on_start)?;
    if verbose {
        eprintln!("plumb: bpftrace {} ({} lines)", o.ended.as_str(), o.lines);
    }
    match failure(o.code.unwrap_or(-1), o.signal.unwrap_or(0), o.killed) {
        // A closed output (`| head`) is not bpftrace's failure.
        Some(_) if o.ended == runner::Ended::ReaderGone => Ok(()),
        Some(why) => Err(BpftraceFailed(why).into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        cmd: BpftraceCmd,
    }

    fn parse(args: &[&str]) -> BpftraceCmd {
        T::try_parse_from(std::iter::once("bpftrace").chain(args.iter().copied()))
            .map(|t| t.cmd)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn targets_and_flags_name_the_context() {
        let p = |a: &[&str]| parse(a).place().map_err(|e| e.to_string());
        assert_eq!(p(&["-e", "x"]), Ok(Where::Nowhere));
        assert_eq!(
            p(&["pod/shop/web-1", "-e", "x"]),
            Ok(Where::Pod(Some("shop".into()), "web-1".into()))
        );
        assert_eq!(
            p(&["pod/web-1", "-n", "lab", "-e", "x"]),
            Ok(Where::Pod(Some("lab".into()), "web-1".into()))
        );
        assert_eq!(
            p(&["--pod", "web-1", "-e", "x"]),
            Ok(Where::Pod(None, "web-1".into()))
        );
        assert_eq!(
            p(&["node/worker-2", "-e", "x"]),
            Ok(Where::Node("worker-2".into()))
        );
        assert_eq!(p(&["--pid", "42", "-e", "x"]), Ok(Where::Pid(42)));
        assert_eq!(
            p(&["svc/x", "-e", "x"]),
            Err("'svc/x' is not a target: pod/NS/NAME, pod/NAME or node/NAME".into())
        );
        assert_eq!(
            p(&["pod/a/b", "--pod", "c", "-e", "x"]),
            Err("give the context once: a TARGET (pod/NS/NAME) or --pod/--pid".into())
        );
        assert_eq!(
            p(&["--pid", "0", "-e", "x"]),
            Err("--pid: 0 is not a process id".into())
        );
    }

    #[test]
    fn the_script_comes_from_exactly_one_place_and_args_follow_the_dashes() {
        let c = parse(&["-e", "BEGIN { exit(); }", "--", "-1", "x"]);
        assert_eq!(c.script().unwrap(), "BEGIN { exit(); }");
        assert_eq!(c.args, ["-1", "x"]);
        assert_eq!(
            parse(&[]).script().unwrap_err().to_string(),
            "no script: give -e 'SCRIPT' or -f FILE"
        );
        assert_eq!(
            parse(&["-e", "x", "-f", "/y"])
                .script()
                .unwrap_err()
                .to_string(),
            "give the script with -e or with -f, not both"
        );
        let e = parse(&["-f", "/nonexistent/s.bt"]).script().unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read the script /nonexistent/s.bt: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn failures_are_named() {
        assert_eq!(failure(0, 0, false), None);
        assert_eq!(
            failure(1, 0, false).as_deref(),
            Some("exited with status 1")
        );
        assert_eq!(
            failure(-1, 9, false).as_deref(),
            Some("was ended by signal 9")
        );
        assert!(failure(-1, 9, true).is_some_and(|s| s.contains("killed")));
    }
}
