//! `plumb agent`: the node daemon. Serves the authenticated remote API and
//! the always-on Prometheus metrics until SIGTERM/SIGINT, then stops every
//! client's run and detaches everything.

use anyhow::Context;
use clap::Args;
use plumb_agent::attribution::AttributionConfig;
use plumb_agent::auth::Token;
use plumb_agent::listen::ListenAddr;
use plumb_agent::server::{AgentConfig, BoundAgent, TlsFiles};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where the API listens: unix:PATH, or HOST:PORT (a TCP address, even
    /// loopback, needs --token-file or mutual TLS: every local user and
    /// host-network pod can reach it).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "unix:/run/plumb/agent.sock"
    )]
    pub listen: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (read-only; no auth).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// The node name events and metrics carry (Kubernetes: spec.nodeName).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Require `authorization: Bearer <token>`, the token read from FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
    pub token_file: Option<PathBuf>,
    /// Mutual TLS: the agent's certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Mutual TLS: the agent's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: only clients with a certificate signed by this CA get in.
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Distinct pods in metric labels before new ones fold into pod="other"
    /// (a pod gone for 10 minutes makes room).
    #[arg(long, value_name = "N", default_value_t = AttributionConfig::DEFAULT_MAX_PODS)]
    pub max_pods: usize,
    /// Gadget runs for API clients at once; more are refused (and counted).
    #[arg(long, value_name = "N", default_value_t = AgentConfig::DEFAULT_MAX_SESSIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub max_sessions: usize,
    /// Run API clients' bpftrace scripts (`plumb remote ... bpftrace`,
    /// `kubectl plumb bpftrace`): root in the kernel for whoever holds the
    /// token or a client certificate, so off by default. Every script is
    /// logged with its caller.
    #[arg(long)]
    pub allow_bpftrace: bool,
    /// The bpftrace binary clients' scripts run with [default: bpftrace on
    /// PATH; the image ships Debian's].
    #[arg(long, value_name = "PATH", requires = "allow_bpftrace")]
    pub bpftrace: Option<PathBuf>,
    /// The longest bpftrace run, and the deadline of one that asked for none.
    #[arg(long, value_name = "TIME", default_value = "10m", value_parser = super::common::parse_duration)]
    pub max_bpftrace_duration: std::time::Duration,
    /// Let API clients that present this file's token (a token of its own,
    /// not the API's) capture packets of the pods they name
    /// (`kubectl plumb capture`). Off by default: packets carry payloads.
    #[arg(long, value_name = "FILE")]
    pub capture_token_file: Option<PathBuf>,
    /// Let clients whose certificate subject has this part (CN=alice)
    /// capture packets (repeatable).
    #[arg(long, value_name = "SUBJECT")]
    pub capture_subject: Vec<String>,
    /// Capture only pods of these Kubernetes namespaces (comma-separated);
    /// default: any namespace the client names.
    #[arg(long, value_name = "NS,...", value_delimiter = ',')]
    pub capture_namespaces: Vec<String>,
    /// The longest capture, and the duration of one that asked for none.
    #[arg(long, value_name = "TIME", default_value = "5m", value_parser = super::common::parse_duration)]
    pub max_capture_duration: std::time::Duration,
    /// The most packets one capture sends.
    #[arg(long, value_name = "N", default_value_t = plumb_agent::capture::CaptureConfig::DEFAULT_MAX_PACKETS)]
    pub max_capture_packets: u64,
    /// The most captured bytes one capture sends (bytes, or with k, M, G, KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = plumb_capture::session::parse_size)]
    pub max_capture_bytes: u64,
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, value_name = "LEVEL", env = "PLUMB_LOG", default_value = "info")]
    pub log_level: String,
}

fn config(a: &AgentArgs) -> anyhow::Result<AgentConfig> {
    let listen = ListenAddr::parse(&a.listen)?;
    let tls = match (&a.tls_cert, &a.tls_key, &a.client_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: ca.clone(),
        }),
        _ => return Err(plumb_agent::AgentError::PartialTls.into()),
    };
    let token = a.token_file.as_deref().map(Token::from_file).transpose()?;
    listen.check_auth(token.is_some() || tls.is_some())?;
    let mut cfg = AgentConfig::new(listen);
    cfg.metrics_listen = a.metrics_listen;
    if let Some(n) = &a.node_name {
        cfg.node = n.clone();
    }
    cfg.token = token;
    cfg.tls = tls;
    cfg.attribution.max_pods = a.max_pods;
    cfg.max_sessions = a.max_sessions;
    if a.allow_bpftrace {
        let mut b = plumb_agent::bpftrace::BpftraceConfig::new();
        b.binary = a.bpftrace.clone();
        b.max_duration = a.max_bpftrace_duration;
        cfg.bpftrace = Some(b);
    }
    if a.capture_token_file.is_some() || !a.capture_subject.is_empty() {
        let mut c = plumb_agent::capture::CaptureConfig::new();
        c.token = a
            .capture_token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()?;
        c.subjects = a.capture_subject.clone();
        c.namespaces = a.capture_namespaces.clone();
        c.max_duration = a.max_capture_duration;
        c.max_packets = a.max_capture_packets;
        c.max_bytes = a.max_capture_bytes;
        cfg.capture = Some(c);
    } else if !a.capture_namespaces.is_empty() {
        anyhow::bail!("--capture-namespaces needs --capture-token-file or --capture-subject");
    }
    Ok(cfg)
}

pub fn run(a: AgentArgs) -> anyhow::Result<()> {
    // Configuration errors come before anything is loaded or bound.
    let cfg = config(&a)?;
    plumb_core::preflight::check_all()?;
    if let ListenAddr::Unix(p) = &cfg.listen {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    plumb_agent::logs::init(&a.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served = rt.block_on(async move {
        let mut cfg = cfg;
        let mut sources = super::trace::local_sources();
        if let Some(pods) = plumb_agent::k8s::start_watcher(&cfg.node).await {
            sources.push(std::sync::Arc::new(pods.clone()));
            cfg.pod_index = Some(pods);
        }
        let agent = BoundAgent::bind(cfg.clone(), sources).await?;
        // One line a supervisor (or a test) can read: where to connect.
        let api = agent
            .api_addr()
            .map_or_else(|| cfg.listen.to_string(), |a| a.to_string());
        let metrics = agent
            .metrics_addr()
            .map_or_else(|| "off".to_string(), |a| format!("http://{a}/metrics"));
        let ids: Vec<String> = agent
            .counter_prog_ids()
            .iter()
            .map(u32::to_string)
            .collect();
        eprintln!(
            "plumb agent: node {} api {api} metrics {metrics} counter programs {}",
            cfg.node,
            ids.join(",")
        );
        agent.serve(shutdown_signal()).await?;
        anyhow::Ok(())
    });
    // Connections the agent gave up on at shutdown end with the runtime;
    // nothing of ours is left in them to wait for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
