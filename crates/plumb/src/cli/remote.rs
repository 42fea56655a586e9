//! `plumb remote --agents HOST:PORT,... trace GADGET ...`: run a gadget on
//! many agents at once and merge their streams, each event carrying its
//! `node`. An agent that cannot be reached, refuses us or goes away is
//! reported on stderr while the others go on; the exit code says whether
//! every node answered. `kubectl plumb` ends here too, with the agents
//! reached through port-forwards.

use super::common::{self, OutputOpts};
use super::trace::TraceCmd;
use clap::{Args, Subcommand};
use plumb_agent::auth::Token;
use plumb_agent::client::{self, ClientAuth, ClientTls, FanItem};
use plumb_agent::proto::TraceRequest;
use plumb_core::gadgets::{self, Column, GadgetDesc};
use plumb_core::sink::{cell, select};
use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The agents to ask, comma-separated HOST:PORT (as `plumb agent
    /// --listen` was given).
    #[arg(
        long,
        value_name = "HOST:PORT,...",
        value_delimiter = ',',
        required = true
    )]
    pub agents: Vec<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Give up on an agent that does not answer within this time.
    #[arg(long, value_name = "TIME", default_value = "5s", value_parser = common::parse_duration)]
    pub connect_timeout: Duration,
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
            }),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Run one gadget on every agent and merge the events (a `node` column).
    Trace(Box<TraceCmd>),
    /// List the gadgets each agent can run.
    Gadgets,
    /// CPU-profile every node at once; folded stacks, each line starting
    /// with the node (feed to a flame graph tool).
    Profile(RemoteProfileArgs),
    /// Follow the agents' own logs, each line with its node, until Ctrl-C,
    /// --duration, or every agent has stopped.
    Logs(RemoteLogsArgs),
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

#[derive(Debug, Args)]
pub struct RemoteProfileArgs {
    /// How long to sample.
    #[arg(long, value_name = "TIME", default_value = "10s", value_parser = common::parse_duration)]
    pub duration: Duration,
    /// Samples per second on each CPU.
    #[arg(long, value_name = "HZ", default_value_t = 99)]
    pub frequency: u32,
    /// Only this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<String>,
    /// Only pods of this Kubernetes namespace.
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Only this pod.
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,
}

/// A node failed; the others' output was still printed.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} agents failed")]
pub struct SomeFailed {
    pub failed: usize,
    pub total: usize,
}

pub fn run(args: RemoteArgs, verbose: bool) -> anyhow::Result<()> {
    let auth = args.auth.client_auth()?;
    run_on(
        &args.agents,
        &auth,
        args.connect_timeout,
        args.command,
        verbose,
    )
}

/// Run `command` on `agents`.
pub fn run_on(
    agents: &[String],
    auth: &ClientAuth,
    timeout: Duration,
    command: RemoteCommand,
    verbose: bool,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(dispatch(agents, auth, timeout, command, verbose, None))
}

/// Pods whose events are kept (namespace, name); None keeps everything.
type Keep = Option<BTreeSet<(String, String)>>;

async fn dispatch(
    agents: &[String],
    auth: &ClientAuth,
    timeout: Duration,
    command: RemoteCommand,
    verbose: bool,
    keep: Keep,
) -> anyhow::Result<()> {
    match command {
        RemoteCommand::Trace(t) => trace(agents, auth, timeout, *t, verbose, keep).await,
        RemoteCommand::Gadgets => list(agents, auth, timeout).await,
        RemoteCommand::Profile(p) => profile(agents, auth, timeout, p).await,
        RemoteCommand::Logs(l) => logs(agents, auth, timeout, l, verbose).await,
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
    agents: &[String],
    auth: &ClientAuth,
    timeout: Duration,
    a: RemoteLogsArgs,
    verbose: bool,
) -> anyhow::Result<()> {
    use client::LogItem;
    use tokio::signal::unix::{signal, SignalKind};
    let json = a.output == "json";
    let mut rx = client::follow_logs(agents, auth, timeout);
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
            LogItem::Following { addr, node } => {
                if verbose {
                    eprintln!("plumb: node {node} ({addr}): following its log");
                }
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
            LogItem::Ended { addr, node } => {
                ended += 1;
                eprintln!("plumb: node {node} ({addr}): the agent ended its log stream");
                Ok(())
            }
            LogItem::Failed { error, .. } => {
                failed += 1;
                let rest = if agents.len() > 1 {
                    "; the others go on"
                } else {
                    ""
                };
                eprintln!("plumb: {error}{rest}");
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
        agents.len() - failed,
        agents.len()
    );
    if failed > 0 {
        return Err(SomeFailed {
            failed,
            total: agents.len(),
        }
        .into());
    }
    Ok(())
}

async fn list(agents: &[String], auth: &ClientAuth, timeout: Duration) -> anyhow::Result<()> {
    let mut out = format!(
        "{:<16} {:<10} {:<10} {}\n",
        "NODE", "GADGET", "AVAILABLE", "DESCRIPTION"
    );
    let mut failed = 0;
    let tasks: Vec<_> = agents
        .iter()
        .map(|a| {
            let (a, auth) = (a.clone(), auth.clone());
            tokio::spawn(async move { client::list_gadgets(&a, &auth, timeout).await })
        })
        .collect();
    for (addr, t) in agents.iter().zip(tasks) {
        match t.await {
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
                eprintln!("plumb: {}", error_line(&e));
            }
            Err(e) => {
                failed += 1;
                eprintln!("plumb: agent {addr}: {e}");
            }
        }
    }
    common::print_stdout(&out)?;
    if failed > 0 {
        return Err(SomeFailed {
            failed,
            total: agents.len(),
        }
        .into());
    }
    Ok(())
}

async fn profile(
    agents: &[String],
    auth: &ClientAuth,
    timeout: Duration,
    p: RemoteProfileArgs,
) -> anyhow::Result<()> {
    let filter = plumb_core::filter::FilterArgs {
        pid: p.pid,
        namespace: p.namespace,
        pod: p.pod,
        ..Default::default()
    };
    let req = plumb_agent::proto::ProfileRequest {
        duration_ms: p.duration.as_millis() as u64,
        frequency_hz: p.frequency,
        filter_json: serde_json::to_vec(&filter)?,
    };
    let tasks: Vec<_> = agents
        .iter()
        .map(|a| {
            let (a, auth, req) = (a.clone(), auth.clone(), req.clone());
            tokio::spawn(async move { client::profile(&a, &auth, timeout, req).await })
        })
        .collect();
    let mut failed = 0;
    for (addr, t) in agents.iter().zip(tasks) {
        match t.await {
            Ok(Ok(resp)) => {
                let mut out = String::new();
                for line in resp.folded.lines() {
                    out.push_str(&resp.node);
                    out.push(';');
                    out.push_str(line);
                    out.push('\n');
                }
                common::print_stdout(&out)?;
                eprintln!(
                    "plumb: node {}: {} samples, {} lost",
                    resp.node, resp.samples, resp.lost
                );
            }
            Ok(Err(e)) => {
                failed += 1;
                eprintln!("plumb: {}", error_line(&e));
            }
            Err(e) => {
                failed += 1;
                eprintln!("plumb: agent {addr}: {e}");
            }
        }
    }
    if failed > 0 {
        return Err(SomeFailed {
            failed,
            total: agents.len(),
        }
        .into());
    }
    Ok(())
}

fn error_line(e: &dyn std::error::Error) -> String {
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

/// Prints merged events: JSON lines, or a table whose first column is the
/// node.
struct Printer {
    out: BufWriter<io::Stdout>,
    json: bool,
    fields: Vec<String>,
    columns: Vec<Column>,
    width: Option<usize>,
    header_done: bool,
}

impl Printer {
    fn new(g: &GadgetDesc, o: &OutputOpts) -> Printer {
        let mut columns = vec![Column::new("node", "NODE", 12)];
        if o.fields.is_empty() {
            columns.extend(g.columns.iter().filter(|c| c.key != "node").cloned());
        } else {
            columns.extend(
                o.fields
                    .iter()
                    .filter(|f| f.as_str() != "node")
                    .map(|f| Column::for_key(f)),
            );
        }
        Printer {
            out: BufWriter::with_capacity(64 << 10, io::stdout()),
            json: o.json,
            fields: o.fields.clone(),
            columns,
            width: common::terminal_width(),
            header_done: false,
        }
    }

    fn row(&mut self, cells: Vec<String>) -> io::Result<()> {
        let n = self.columns.len();
        let mut line = String::new();
        for (i, (c, text)) in self.columns.iter().zip(cells).enumerate() {
            let w = c.width.max(c.header.len());
            if i + 1 == n || c.width == 0 {
                line.push_str(&text);
            } else {
                line.push_str(&format!("{text:<w$} "));
            }
        }
        let line = line.trim_end();
        match self.width {
            Some(w) if line.chars().count() > w => {
                writeln!(self.out, "{}", line.chars().take(w).collect::<String>())
            }
            _ => writeln!(self.out, "{line}"),
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if self.json || self.header_done {
            return Ok(());
        }
        self.header_done = true;
        let h = self.columns.iter().map(|c| c.header.to_string()).collect();
        self.row(h)
    }

    fn event(&mut self, ev: serde_json::Value) -> io::Result<()> {
        if self.json {
            let v = if self.fields.is_empty() {
                ev
            } else {
                let mut f = self.fields.clone();
                if !f.iter().any(|k| k == "node") {
                    f.insert(0, "node".into());
                }
                select(ev, &f)
            };
            serde_json::to_writer(&mut self.out, &v)?;
            return self.out.write_all(b"\n");
        }
        self.header()?;
        let cells = self
            .columns
            .iter()
            .map(|c| {
                let s = cell(ev.get(&*c.key));
                if c.key == "timestamp" {
                    s.get(11..26).map(str::to_string).unwrap_or(s)
                } else {
                    s
                }
            })
            .collect();
        self.row(cells)
    }

    fn lost(&mut self, node: &str, gadget: &str, count: u64) -> io::Result<()> {
        if self.json {
            let v = serde_json::json!({
                "type": "lost",
                "timestamp": humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
                "node": node,
                "gadget": gadget,
                "count": count,
            });
            serde_json::to_writer(&mut self.out, &v)?;
            self.out.write_all(b"\n")?;
            return self.out.flush();
        }
        self.out.flush()?;
        eprintln!("plumb: node {node}: {count} {gadget} events lost in the kernel");
        Ok(())
    }
}

fn request(cmd: &TraceCmd, g: &GadgetDesc) -> anyhow::Result<TraceRequest> {
    cmd.params.check(g)?;
    Ok(TraceRequest {
        gadget: g.name.to_string(),
        params_json: serde_json::to_vec(&cmd.params)?,
        filter_json: serde_json::to_vec(&cmd.filter)?,
        duration_ms: cmd.output.duration.map_or(0, |d| d.as_millis() as u64),
        max_events: cmd.output.max_events.unwrap_or(0),
    })
}

async fn trace(
    agents: &[String],
    auth: &ClientAuth,
    timeout: Duration,
    cmd: TraceCmd,
    verbose: bool,
    keep: Keep,
) -> anyhow::Result<()> {
    let g = match cmd.gadget {
        Ok(g) => g,
        Err(ref name) => return Err(gadgets::find(name).unwrap_err().into()),
    };
    if cmd.output.summary.is_some() {
        anyhow::bail!("--summary is not available for remote runs yet; use -o json and aggregate");
    }
    let req = request(&cmd, g)?;
    let mut rx = client::fan_out(agents, auth, req, timeout);
    let mut printer = Printer::new(g, &cmd.output);
    let mut nodes: HashMap<String, String> = HashMap::new();
    let (mut seen, mut lost, mut failed, mut done) = (0u64, 0u64, 0usize, 0usize);
    let max = cmd.output.max_events;
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let node_of = |nodes: &HashMap<String, String>, addr: &str| {
        nodes.get(addr).cloned().unwrap_or_else(|| addr.to_string())
    };
    let write = |r: io::Result<()>| -> anyhow::Result<bool> {
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    let mut interrupted = false;
    loop {
        let item = tokio::select! {
            i = rx.recv() => i,
            _ = int.recv() => { interrupted = true; None }
            _ = term.recv() => { interrupted = true; None }
        };
        // Every agent has finished or failed: the senders are gone.
        let Some(item) = item else { break };
        match item {
            FanItem::Ready {
                addr,
                node,
                prog_ids,
            } => {
                if verbose {
                    let ids: Vec<String> = prog_ids.iter().map(u32::to_string).collect();
                    eprintln!(
                        "plumb: node {node} ({addr}): {} attached, BPF program ids {}",
                        g.name,
                        ids.join(",")
                    );
                }
                nodes.insert(addr, node);
            }
            FanItem::Event { event, .. } => {
                if let Some(k) = &keep {
                    let key = |f: &str| event[f].as_str().unwrap_or_default().to_string();
                    if !k.contains(&(key("namespace"), key("pod"))) {
                        continue;
                    }
                }
                seen += 1;
                if !write(printer.event(event))? {
                    break;
                }
                // Batch while events queue up; show them once the queue
                // is drained, as the local sinks do.
                if rx.is_empty() && !write(printer.out.flush())? {
                    break;
                }
                if max.is_some_and(|m| seen >= m) {
                    break;
                }
            }
            FanItem::Lost {
                addr,
                gadget,
                count,
            } => {
                lost += count;
                if !write(printer.lost(&node_of(&nodes, &addr), &gadget, count))? {
                    break;
                }
            }
            FanItem::Done { .. } => {
                done += 1;
                let _ = printer.out.flush();
            }
            FanItem::Failed { addr, error } => {
                failed += 1;
                let _ = printer.out.flush();
                let node = nodes
                    .get(&addr)
                    .map(|n| format!(" [node {n}]"))
                    .unwrap_or_default();
                let rest = if agents.len() > 1 {
                    "; the others go on"
                } else {
                    ""
                };
                eprintln!("plumb: {error}{node}{rest}");
            }
        }
    }
    // Dropping the receiver cancels the calls still running: each agent
    // stops its gadget and unloads it.
    drop(rx);
    let _ = write(printer.header());
    let _ = write(printer.out.flush());
    let mut line = format!(
        "plumb: {seen} events from {} of {} agents, {lost} lost",
        agents.len() - failed,
        agents.len()
    );
    if interrupted {
        line.push_str(" (interrupted)");
    }
    eprintln!("{line}");
    tracing::debug!(done, "agents finished");
    if failed > 0 {
        return Err(SomeFailed {
            failed,
            total: agents.len(),
        }
        .into());
    }
    Ok(())
}

/// `kubectl plumb`: the same commands, on the nodes that host the selected
/// pods, each reached through a port-forward to its agent pod.
#[derive(Debug, Args)]
pub struct KubectlArgs {
    /// Only pods with these labels (a label selector: app=web,tier!=db).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", global = true)]
    pub selector: Option<String>,
    /// Only this node (alone: the whole node).
    #[arg(long, value_name = "NODE", global = true)]
    pub node: Option<String>,
    /// Pods of every namespace (with -l), instead of the current one.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The agents' API port inside their pods.
    #[arg(long, value_name = "PORT", default_value_t = 7979, global = true)]
    pub agent_port: u16,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[arg(long, value_name = "TIME", default_value = "10s", value_parser = common::parse_duration, global = true)]
    pub connect_timeout: Duration,
    #[command(subcommand)]
    pub command: RemoteCommand,
}

/// The plugin's own parser (`kubectl plumb ...`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "kubectl plumb",
    version,
    about = "Run plumb gadgets and profiles on the nodes hosting the selected pods, and merge the results."
)]
pub struct KubectlCli {
    /// Say more (which nodes and agent pods are asked).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(flatten)]
    pub args: KubectlArgs,
}

/// True when this binary runs as the kubectl plugin.
pub fn invoked_as_kubectl_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().ends_with("kubectl-plumb"))
        })
        .unwrap_or(false)
}

pub fn run_kubectl(a: KubectlArgs, verbose: bool) -> anyhow::Result<()> {
    let auth = a.auth.client_auth()?;
    let (namespace, pod) = match &a.command {
        RemoteCommand::Trace(t) => (t.filter.namespace.clone(), t.filter.pod.clone()),
        RemoteCommand::Profile(p) => (p.namespace.clone(), p.pod.clone()),
        RemoteCommand::Gadgets | RemoteCommand::Logs(_) => (None, None),
    };
    let sel = plumb_agent::k8s::Selection {
        namespace,
        all_namespaces: a.all_namespaces,
        labels: a.selector.clone(),
        pod,
        node: a.node.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the Kubernetes API: {e}"))?;
        let found = plumb_agent::k8s::resolve(&client, &sel)
            .await
            .map_err(|e| anyhow::anyhow!("listing pods: {e}"))?;
        for n in &found.without_agent {
            eprintln!("plumb: node {n} hosts selected pods but runs no plumb agent");
        }
        if found.targets.is_empty() {
            anyhow::bail!("no node to ask: no running pod matches the selection");
        }
        let mut addrs = Vec::new();
        for t in &found.targets {
            let addr = plumb_agent::k8s::forward(client.clone(), t.agent_pod.clone(), a.agent_port)
                .await?;
            if verbose {
                eprintln!(
                    "plumb: node {} via {}/{} ({addr})",
                    t.node,
                    plumb_agent::k8s::AGENT_NAMESPACE,
                    t.agent_pod
                );
            }
            addrs.push(addr);
        }
        // With a label selector, events are kept for the selected pods only.
        let keep = sel.labels.as_ref().map(|_| {
            found
                .targets
                .iter()
                .flat_map(|t| t.pods.iter().cloned())
                .collect()
        });
        dispatch(&addrs, &auth, a.connect_timeout, a.command, verbose, keep).await
    })
}
