//! `plumb remote --agents ... bpftrace` and `kubectl plumb bpftrace`: one
//! script on many nodes, their lines merged as they come, each after its
//! node (and pod, when kubectl gave each node its pods), or as
//! `{"node": ..., "line": ...}` objects. bpftrace's stderr (its warnings,
//! a rejected script's error) goes to stderr, each line naming its node.
//! The exit code says whether every node ran the script to a clean end.
//!
//! The agent stops bpftrace when this client goes away, so Ctrl-C here
//! ends the runs without their maps; `--duration` ends them with them.

use super::bpftrace::{failure, BpftraceCmd, Where};
use super::remote::{others, SomeFailed};
use plumb_agent::client::bpftrace::{fan_out, BtItem};
use plumb_agent::client::{ClientAuth, Deadlines, Target};
use plumb_agent::proto::{BpftraceRequest, PodRef};
use std::io::{self, BufWriter, Write};

/// Run `cmd` on `targets`. With `per_pod`, each target is one pod's run
/// (its `pods` holds that pod: kubectl's selection).
pub async fn run(
    targets: &[Target],
    auth: &ClientAuth,
    d: Deadlines,
    cmd: BpftraceCmd,
    verbose: bool,
    per_pod: bool,
) -> anyhow::Result<()> {
    let script = cmd.script()?;
    let mut req = BpftraceRequest {
        script,
        args: cmd.args.clone(),
        duration_ms: cmd.duration.map_or(0, |d| d.as_millis() as u64),
        pid: 0,
        pod: None,
    };
    if cmd.bpftrace.is_some() {
        anyhow::bail!(
            "--bpftrace names this host's binary; each agent runs its own (plumb agent --bpftrace)"
        );
    }
    match cmd.place()? {
        Where::Nowhere | Where::Node(_) => {}
        Where::Pid(p) => req.pid = p,
        Where::Pod(ns, name) if !per_pod => {
            req.pod = Some(PodRef {
                namespace: ns.unwrap_or_default(),
                name,
            })
        }
        Where::Pod(..) => {}
    }
    let pod_of = move |t: &Target| {
        if per_pod {
            t.pods.first().cloned()
        } else {
            None
        }
    };
    let label = |t: &Target| match (per_pod, t.pods.first()) {
        (true, Some(p)) => Some(format!("{}/{}", p.namespace, p.name)),
        _ => None,
    };
    let labels: Vec<Option<String>> = targets.iter().map(label).collect();
    let mut rx = fan_out(targets, auth, req, pod_of, d);
    let json = cmd.json();
    let mut out = BufWriter::new(io::stdout());
    let (mut failed, mut lines) = (0usize, 0u64);
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let mut interrupted = false;
    loop {
        let item = tokio::select! {
            i = rx.recv() => i,
            _ = int.recv() => { interrupted = true; None }
            _ = term.recv() => { interrupted = true; None }
        };
        let Some(item) = item else { break };
        let written = match item {
            BtItem::Started {
                target,
                node,
                pid,
                container_pid,
                container_cgroup,
            } => {
                if verbose {
                    let ctx = if container_pid > 0 {
                        format!(", $container_pid {container_pid} (cgroup {container_cgroup})")
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "plumb: node {node} ({}): bpftrace started, pid {pid}{ctx}",
                        targets[target].via
                    );
                }
                Ok(())
            }
            BtItem::Line {
                target,
                node,
                text,
                stderr: true,
            } => {
                let _ = out.flush();
                match &labels[target] {
                    Some(p) => eprintln!("plumb: node {node} pod {p}: {text}"),
                    None => eprintln!("plumb: node {node}: {text}"),
                }
                Ok(())
            }
            BtItem::Line {
                target,
                node,
                text,
                stderr: false,
            } => {
                lines += 1;
                let r = if json {
                    let mut v = serde_json::json!({"node": node, "line": text});
                    if let Some(p) = &labels[target] {
                        v["pod"] = serde_json::Value::from(p.as_str());
                    }
                    serde_json::to_writer(&mut out, &v)
                        .map_err(io::Error::from)
                        .and_then(|()| out.write_all(b"\n"))
                } else {
                    match &labels[target] {
                        Some(p) => writeln!(out, "{node:<12} {p:<24} {text}"),
                        None => writeln!(out, "{node:<12} {text}"),
                    }
                };
                // Shown as they come, batched while they queue up.
                r.and_then(|()| if rx.is_empty() { out.flush() } else { Ok(()) })
            }
            BtItem::Done {
                target,
                node,
                exit_code,
                signal,
                ended,
                killed,
                dropped,
            } => {
                let _ = out.flush();
                if dropped > 0 {
                    eprintln!(
                        "plumb: node {node}: {dropped} lines lost: this client read too slowly"
                    );
                }
                if let Some(why) = failure(exit_code, signal, killed) {
                    failed += 1;
                    eprintln!("plumb: node {node}: bpftrace {why}{}", others(targets));
                } else if verbose {
                    eprintln!(
                        "plumb: node {node} ({}): bpftrace ended ({ended})",
                        targets[target].via
                    );
                }
                Ok(())
            }
            BtItem::Failed { error, .. } => {
                failed += 1;
                let _ = out.flush();
                eprintln!("plumb: {error}{}", others(targets));
                Ok(())
            }
        };
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e.into()),
        }
    }
    // Dropping the receiver cancels the calls still running: each agent
    // stops its bpftrace.
    drop(rx);
    let _ = out.flush();
    if verbose || interrupted {
        let why = if interrupted {
            " (interrupted: the nodes stopped bpftrace without sending its maps; use --duration to get them)"
        } else {
            ""
        };
        eprintln!(
            "plumb: {lines} lines from {} of {} runs{why}",
            targets.len() - failed,
            targets.len()
        );
    }
    SomeFailed::check(failed, targets.len())
}
