//! `plumb remote --agents ADDR,... trace|profile cpu|gadgets|logs`: run
//! a command on many agents at once and merge their answers, each event
//! carrying its `node`. An agent that cannot be reached, refuses us, hangs
//! or goes away is reported on stderr while the others go on; the exit
//! code says whether every node answered. `kubectl plumb` ([`super::kubectl`])
//! ends here too, with the agents reached through port-forwards.

use super::common;
use super::profile::CpuCmd;
use super::trace::TraceCmd;
use clap::{Args, Subcommand};
use plumb_agent::auth::Token;
use plumb_agent::client::{self, ClientAuth, ClientTls, Deadlines, FanItem, Target};
use plumb_agent::proto::TraceRequest;
use plumb_core::gadgets::{self, GadgetDesc};
use plumb_core::sink::{end_line, output};
use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The agents to ask, comma-separated: HOST:PORT or unix:PATH (as
    /// `plumb agent --listen` was given).
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',', required = true)]
    pub agents: Vec<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub deadlines: DeadlineArgs,
    #[command(subcommand)]
    pub command: RemoteCommand,
}

/// Credentials for the agents.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Send `authorization: Bearer <token>`, the token read from FILE.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// TLS: the CA that signed the agents' certificates (alone: the agent
    /// is verified, no client certificate is shown).
    #[arg(long, value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: this client's certificate (PEM).
    #[arg(long, value_name = "FILE", global = true, requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// Mutual TLS: this client's private key (PEM).
    #[arg(long, value_name = "FILE", global = true, requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// TLS: the name the agents' certificates must carry [default: the
    /// host of each HOST:PORT; required for unix sockets and kubectl].
    #[arg(long, value_name = "NAME", global = true, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl AuthArgs {
    pub fn client_auth(&self) -> anyhow::Result<ClientAuth> {
        Ok(ClientAuth {
            token: self
                .token_file
                .as_deref()
                .map(Token::from_file)
                .transpose()?,
            tls: self.tls_ca.as_ref().map(|ca| ClientTls {
                ca: ca.clone(),
                identity: self.tls_cert.clone().zip(self.tls_key.clone()),
                server_name: self.tls_server_name.clone(),
            }),
        })
    }
}

/// How long a node may take before it is reported as not answering.
#[derive(Debug, Clone, Args)]
pub struct DeadlineArgs {
    /// Opening a connection to an agent (TCP or port-forward, and TLS).
    #[arg(long, value_name = "TIME", default_value = "5s", value_parser = common::parse_duration, global = true)]
    pub connect_timeout: Duration,
    /// A one-shot call (gadgets), a gadget's start, and the margin allowed
    /// on top of a profile's or a timed trace's --duration.
    #[arg(long, value_name = "TIME", default_value = "30s", value_parser = common::parse_duration, global = true)]
    pub call_timeout: Duration,
    /// A connection that stays silent to HTTP/2 pings this long is dead
    /// (a hung node is noticed even while its gadget is quiet).
    #[arg(long, value_name = "TIME", default_value = "20s", value_parser = common::parse_duration, global = true)]
    pub stall_timeout: Duration,
}

impl DeadlineArgs {
    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            connect: self.connect_timeout,
            call: self.call_timeout,
            stall: self.stall_timeout,
        }
    }
}

#[derive(Debug, Subcommand)]
// Parsed once per run; FilterArgs (inside Profile) is a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum RemoteCommand {
    /// Run one gadget on every agent and merge the events (a `node` column).
    Trace(Box<TraceCmd>),
    /// List the gadgets each agent can run.
    Gadgets,
    /// CPU-profile every node at once and merge the profiles (each stack
    /// under its node); every output of `plumb profile cpu`.
    #[command(subcommand)]
    Profile(RemoteProfile),
    /// Follow the agents' own logs, each line with its node, until Ctrl-C,
    /// --duration, or every agent has stopped.
    Logs(RemoteLogsArgs),
    /// Run a bpftrace script on every agent (plumb agent --allow-bpftrace);
    /// each line after its node.
    #[command(long_about = super::bpftrace::LONG_ABOUT)]
    Bpftrace(super::bpftrace::BpftraceCmd),
    /// Capture the selected pods' packets on every node hosting them, into
    /// one pcapng in timestamp order (agents that allow this client to
    /// capture: plumb agent --capture-token-file or --capture-subject).
    Capture(super::remote_capture::RemoteCaptureCmd),
}

#[derive(Debug, Subcommand)]
pub enum RemoteProfile {
    /// Sample kernel and user stacks on every CPU of every node.
    Cpu(CpuCmd),
}

#[derive(Debug, Args)]
pub struct RemoteLogsArgs {
    /// Stop following after this time.
    #[arg(long, value_name = "TIME", value_parser = common::parse_duration)]
    pub duration: Option<Duration>,
    /// Output format.
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
}

/// A node failed; the others' output was still printed.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} agents failed")]
pub struct SomeFailed {
    pub failed: usize,
    pub total: usize,
}

impl SomeFailed {
    /// Ok when nothing failed.
    pub fn check(failed: usize, total: usize) -> anyhow::Result<()> {
        if failed > 0 {
            return Err(SomeFailed { failed, total }.into());
        }
        Ok(())
    }
}

pub fn run(args: RemoteArgs, verbose: bool) -> anyhow::Result<()> {
    let auth = args.auth.client_auth()?;
    let targets = args
        .agents
        .iter()
        .map(|a| Target::parse(a))
        .collect::<Result<Vec<_>, _>>()?;
    client::check_tls_names(&targets, &auth)?;
    runtime()?.block_on(dispatch(
        &targets,
        &auth,
        args.deadlines.deadlines(),
        args.command,
        verbose,
    ))
}

pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Run `command` on `targets`.
pub async fn dispatch(
    targets: &[Target],
    auth: &ClientAuth,
    d: Deadlines,
    command: RemoteCommand,
    verbose: bool,
) -> anyhow::Result<()> {
    match command {
        RemoteCommand::Trace(t) => trace(targets, auth, d, *t, verbose).await,
        RemoteCommand::Gadgets => list(targets, auth, d).await,
        RemoteCommand::Profile(RemoteProfile::Cpu(c)) => {
            super::remote_profile::run(targets, auth, d, c, verbose).await
        }
        RemoteCommand::Logs(l) => logs(targets, auth, d, l, verbose).await,
        RemoteCommand::Bpftrace(b) => {
            super::remote_bpftrace::run(targets, auth, d, b, verbose, false).await
        }
        RemoteCommand::Capture(c) => {
            // Every agent is asked for the pod named.
            let Some(pod) = c.pod.clone() else {
                return Err(super::bpftrace::Usage(
                    "capture names its pod: --pod NAME [-n NS] (agents never capture a whole node)"
                        .to_string(),
                )
                .into());
            };
            let pods = vec![plumb_agent::proto::PodRef {
                namespace: c.namespace.clone().unwrap_or_default(),
                name: pod,
            }];
            super::remote_capture::run(targets, auth, d, c, move |_| pods.clone(), verbose).await
        }
    }
}

/// "; the others go on" when there are others.
pub fn others(targets: &[Target]) -> &'static str {
    if targets.len() > 1 {
        "; the others go on"
    } else {
        ""
    }
}

/// A failure line's node suffix: ` [node N]` when the node was learnt
/// from the agent and its name is not in the message already.
fn node_suffix(t: &Target, learnt: Option<&String>) -> String {
    match (t.node.as_ref(), learnt) {
        (None, Some(n)) => format!(" [node {n}]"),
        _ => String::new(),
    }
}

/// A log timestamp from the agent (Unix seconds with milliseconds) in
/// RFC 3339; left as it is when it is something else.
fn log_time(ts: &str) -> String {
    let parsed = ts.split_once('.').and_then(|(s, ms)| {
        let t = Duration::from_secs(s.parse().ok()?) + Duration::from_millis(ms.parse().ok()?);
        Some(std::time::UNIX_EPOCH + t)
    });
    match parsed {
        Some(t) => humantime::format_rfc3339_millis(t).to_string(),
        None => ts.to_string(),
    }
}

async fn logs(
    targets: &[Target],
    auth: &ClientAuth,
    d: Deadlines,
    a: RemoteLogsArgs,
    verbose: bool,
) -> anyhow::Result<()> {
    use client::LogItem;
    use tokio::signal::unix::{signal, SignalKind};
    let json = a.output == "json";
    let mut rx = client::follow_logs(targets, auth, d);
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let until = async {
        match a.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    let mut out = BufWriter::new(io::stdout());
    let (mut lines, mut failed, mut ended) = (0u64, 0usize, 0usize);
    let mut nodes: HashMap<usize, String> = HashMap::new();
    let mut why = "";
    loop {
        let item = tokio::select! {
            i = rx.recv() => i,
            _ = int.recv() => { why = " (interrupted)"; None }
            _ = term.recv() => { why = " (interrupted)"; None }
            _ = &mut until => None,
        };
        // Every agent has ended or failed: the senders are gone.
        let Some(item) = item else { break };
        let written = match item {
            LogItem::Following { target, node } => {
                if verbose {
                    eprintln!(
                        "plumb: node {node} ({}): following its log",
                        targets[target].via
                    );
                }
                nodes.insert(target, node);
                Ok(())
            }
            LogItem::Line { node, line } => {
                lines += 1;
                let r = if json {
                    let v = serde_json::json!({
                        "node": node,
                        "timestamp": log_time(&line.timestamp),
                        "level": line.level,
                        "target": line.target,
                        "message": line.message,
                    });
                    serde_json::to_writer(&mut out, &v)
                        .map_err(io::Error::from)
                        .and_then(|()| out.write_all(b"\n"))
                } else {
                    writeln!(
                        out,
                        "{node:<12} {} {:<5} {}: {}",
                        log_time(&line.timestamp),
                        line.level,
                        line.target,
                        line.message
                    )
                };
                // Lines are rare: show each at once.
                r.and_then(|()| out.flush())
            }
            LogItem::Ended { target, node } => {
                ended += 1;
                eprintln!(
                    "plumb: node {node} ({}): the agent ended its log stream",
                    targets[target].via
                );
                Ok(())
            }
            LogItem::Failed { target, error } => {
                failed += 1;
                let t = &targets[target];
                eprintln!(
                    "plumb: {error}{}{}",
                    node_suffix(t, nodes.get(&target)),
                    others(targets)
                );
                Ok(())
            }
        };
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e.into()),
        }
    }
    // Dropping the receiver cancels the calls still running.
    drop(rx);
    eprintln!(
        "plumb: {lines} log lines from {} of {} agents, {ended} ended{why}",
        targets.len() - failed,
        targets.len()
    );
    SomeFailed::check(failed, targets.len())
}

async fn list(targets: &[Target], auth: &ClientAuth, d: Deadlines) -> anyhow::Result<()> {
    // Every node at once; the table is printed in the order given.
    let tasks: Vec<_> = targets
        .iter()
        .map(|t| {
            let (t, auth) = (t.clone(), auth.clone());
            tokio::spawn(async move { client::list_gadgets(&t, &auth, d).await })
        })
        .collect();
    let mut out = format!(
        "{:<16} {:<10} {:<10} {}\n",
        "NODE", "GADGET", "AVAILABLE", "DESCRIPTION"
    );
    let mut failed = 0;
    for (t, task) in targets.iter().zip(tasks) {
        match task.await {
            Ok(Ok(resp)) => {
                for g in resp.gadgets {
                    let avail = if g.available { "yes" } else { "no" };
                    let mut line = format!(
                        "{:<16} {:<10} {:<10} {}",
                        resp.node, g.name, avail, g.summary
                    );
                    if !g.available {
                        line.push_str(&format!(" [{}]", g.unavailable_reason));
                    }
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            Ok(Err(e)) => {
                failed += 1;
                eprintln!("plumb: {}{}", error_line(&e), others(targets));
            }
            Err(e) => {
                failed += 1;
                eprintln!("plumb: {}: {e}", t.who);
            }
        }
    }
    common::print_stdout(&out)?;
    SomeFailed::check(failed, targets.len())
}

pub fn error_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}

fn request(cmd: &TraceCmd, g: &GadgetDesc) -> anyhow::Result<TraceRequest> {
    cmd.params.check(g)?;
    if cmd.output.buffer.is_some() {
        return Err(plumb_core::Error::BadParam {
            param: "buffer".into(),
            reason: "it sizes this host's ring buffer; each agent sizes its own".into(),
        }
        .into());
    }
    Ok(TraceRequest {
        gadget: g.name.to_string(),
        params_json: serde_json::to_vec(&cmd.params)?,
        filter_json: serde_json::to_vec(&cmd.filter)?,
        duration_ms: cmd.output.duration.map_or(0, |d| d.as_millis() as u64),
        max_events: cmd.output.max_events.unwrap_or(0),
        pods: Vec::new(),
    })
}

async fn trace(
    targets: &[Target],
    auth: &ClientAuth,
    d: Deadlines,
    cmd: TraceCmd,
    verbose: bool,
) -> anyhow::Result<()> {
    let g = match cmd.gadget {
        Ok(g) => g,
        Err(ref name) => return Err(gadgets::find(name).unwrap_err().into()),
    };
    let req = request(&cmd, g)?;
    let mut rx = client::fan_out(targets, auth, req, d);
    // The sinks of a local run, with the node in front.
    let here = plumb_core::runner::node_name();
    let stdout = BufWriter::with_capacity(64 << 10, io::stdout());
    let mut out = output(g, &cmd.output.spec(true), &here, stdout);
    let mut nodes: HashMap<usize, String> = HashMap::new();
    let (mut seen, mut lost, mut failed, mut done) = (0u64, 0u64, 0usize, 0usize);
    let max = cmd.output.max_events;
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let write = |r: io::Result<()>| -> anyhow::Result<bool> {
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    // Summary intervals are checked as often as a local run checks them.
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let summarising = cmd.output.summary.is_some();
    let mut interrupted = false;
    loop {
        let item = tokio::select! {
            i = rx.recv() => i,
            _ = ticker.tick(), if summarising => {
                if !write(out.tick())? {
                    break;
                }
                continue;
            }
            _ = int.recv() => { interrupted = true; None }
            _ = term.recv() => { interrupted = true; None }
        };
        // Every agent has finished or failed: the senders are gone.
        let Some(item) = item else { break };
        match item {
            FanItem::Ready {
                target,
                node,
                prog_ids,
            } => {
                if verbose {
                    let ids: Vec<String> = prog_ids.iter().map(u32::to_string).collect();
                    eprintln!(
                        "plumb: node {node} ({}): {} attached, BPF program ids {}",
                        targets[target].via,
                        g.name,
                        ids.join(",")
                    );
                }
                nodes.insert(target, node);
            }
            FanItem::Event { event, .. } => {
                seen += 1;
                if !write(out.record(&event))? {
                    break;
                }
                // Batch while events queue up; show them once the queue
                // is drained, as a local run does.
                if rx.is_empty() && !write(out.flush())? {
                    break;
                }
                if max.is_some_and(|m| seen >= m) {
                    break;
                }
            }
            FanItem::Lost {
                target,
                gadget,
                count,
            } => {
                lost += count;
                let node = nodes
                    .get(&target)
                    .map_or(targets[target].node_or_via(), String::as_str)
                    .to_string();
                if verbose {
                    eprintln!("plumb: node {node}: {count} {gadget} events lost");
                }
                if !write(out.lost(&node, &gadget, count, SystemTime::now()))? {
                    break;
                }
                // A loss can be the last word for a while: show it, and the
                // events before it, once the queue is drained.
                if rx.is_empty() && !write(out.flush())? {
                    break;
                }
            }
            FanItem::Done {
                target,
                seen: sent,
                lost: node_lost,
            } => {
                done += 1;
                let _ = out.flush();
                if verbose {
                    let t = &targets[target];
                    let node = nodes.get(&target).map_or(t.node_or_via(), String::as_str);
                    eprintln!(
                        "plumb: node {node} ({}): finished, {sent} events sent, {node_lost} lost",
                        t.via
                    );
                }
            }
            FanItem::Failed { target, error } => {
                failed += 1;
                let _ = out.flush();
                eprintln!(
                    "plumb: {error}{}{}",
                    node_suffix(&targets[target], nodes.get(&target)),
                    others(targets)
                );
            }
        }
    }
    // Dropping the receiver cancels the calls still running: each agent
    // stops its gadget and unloads it.
    drop(rx);
    let _ = write(out.finish());
    let answered = format!(
        "from {} of {} agents",
        targets.len() - failed,
        targets.len()
    );
    let mut line = end_line(seen, lost, &[answered]);
    if interrupted {
        line.push_str(" (interrupted)");
    }
    eprintln!("{line}");
    tracing::debug!(done, "agents finished");
    SomeFailed::check(failed, targets.len())
}
