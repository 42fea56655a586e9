//! The agent: binds the API and metrics listeners, serves until told to
//! stop, then stops every client's run and unloads everything.
//!
//! Shutdown is bounded: runs see the stop at their next poll, and clients
//! that do not finish reading within `shutdown_grace` lose their
//! connection; the counters are unloaded either way.

use crate::attribution::{Attribution, AttributionConfig, HostLookup};
use crate::auth::{self, Token};
use crate::bpftrace::BpftraceConfig;
use crate::counters::{CounterStore, NodeCounters};
use crate::error::{AgentError, Result};
use crate::k8s::PodIndex;
use crate::ledger::Ledger;
use crate::listen::ListenAddr;
use crate::logs::LogHub;
use crate::metrics::{self, AgentStats, NodeCollector};
use crate::proto::agent_server::{Agent, AgentServer};
use crate::proto::{
    BpftraceMessage, BpftraceRequest, CaptureMessage, CaptureRequest, Gadget, ListGadgetsRequest,
    ListGadgetsResponse, LogLine, LogsRequest, ProfileRequest, ProfileResponse, StackKinds,
    TraceMessage, TraceRequest,
};
use crate::session::{self, Shared};
use plumb_core::enrich::MetadataSource;
use plumb_core::filter::FilterArgs;
use plumb_core::gadgets;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tokio_stream::Stream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// Files for mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub listen: ListenAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub node: String,
    pub token: Option<Token>,
    pub tls: Option<TlsFiles>,
    /// The cardinality cap and how long attribution answers last.
    pub attribution: AttributionConfig,
    /// How often counter keys of vanished namespaces and cgroups are
    /// looked for (and removed after their counts are folded in).
    pub gc_every: Duration,
    /// Load the always-on kernel counters.
    pub counters: bool,
    /// The most gadget runs at once; more are refused.
    pub max_sessions: usize,
    /// How long clients get to finish after the stop, before their
    /// connections are closed.
    pub shutdown_grace: Duration,
    /// The pod watcher's index, for its size in the health metrics (it is
    /// also among the metadata sources given to `bind`).
    pub pod_index: Option<PodIndex>,
    /// Run clients' bpftrace scripts (`--allow-bpftrace`); None: refuse.
    pub bpftrace: Option<BpftraceConfig>,
    /// Who may capture packets, and the caps; None: nobody.
    pub capture: Option<crate::capture::CaptureConfig>,
}

impl AgentConfig {
    pub fn new(listen: ListenAddr) -> Self {
        AgentConfig {
            listen,
            metrics_listen: None,
            node: plumb_core::runner::node_name(),
            token: None,
            tls: None,
            attribution: AttributionConfig::default(),
            gc_every: Ledger::DEFAULT_GC_EVERY,
            counters: true,
            max_sessions: Self::DEFAULT_MAX_SESSIONS,
            shutdown_grace: Duration::from_secs(3),
            pod_index: None,
            bpftrace: None,
            capture: None,
        }
    }

    pub const DEFAULT_MAX_SESSIONS: usize = 16;
}

struct Service {
    shared: Shared,
    logs: LogHub,
    /// Turns true at shutdown: log followers' streams end then, so the
    /// server's graceful stop does not wait for them forever.
    stopping: watch::Receiver<bool>,
    bpftrace: Option<BpftraceConfig>,
    capture: Option<crate::capture::CaptureConfig>,
    /// Calls must carry a bearer token (how callers are named in the log).
    token_required: bool,
}

/// The longest profile one call may ask for.
const MAX_PROFILE: Duration = Duration::from_secs(600);

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for Service {
    async fn list_gadgets(
        &self,
        _req: Request<ListGadgetsRequest>,
    ) -> std::result::Result<Response<ListGadgetsResponse>, Status> {
        let gadgets = gadgets::REGISTRY
            .iter()
            .map(|g| {
                let avail = gadgets::availability(g);
                Gadget {
                    name: g.name.to_string(),
                    summary: g.summary.to_string(),
                    available: avail.is_ok(),
                    unavailable_reason: avail.err().unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(ListGadgetsResponse {
            node: self.shared.node.to_string(),
            gadgets,
        }))
    }

    type TraceStream = BoxStream<TraceMessage>;

    type BpftraceStream = BoxStream<BpftraceMessage>;

    type CaptureStream = BoxStream<CaptureMessage>;

    async fn capture(
        &self,
        req: Request<CaptureRequest>,
    ) -> std::result::Result<Response<Self::CaptureStream>, Status> {
        let caller = crate::identity::of(&req, self.token_required);
        let subject = crate::identity::subject_of(&req);
        let token = req
            .metadata()
            .get(crate::capture::TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let shared = self.shared.clone();
        let cfg = self.capture.clone();
        // Resolving pods walks the cgroup tree and opening sockets enters
        // namespaces: off the async workers.
        let rx = tokio::task::spawn_blocking(move || {
            crate::capture::start(
                req.into_inner(),
                caller,
                token,
                subject,
                cfg.as_ref(),
                shared,
            )
        })
        .await
        .map_err(|e| Status::internal(format!("capture start: {e}")))??;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn bpftrace(
        &self,
        req: Request<BpftraceRequest>,
    ) -> std::result::Result<Response<Self::BpftraceStream>, Status> {
        let caller = crate::identity::of(&req, self.token_required);
        let shared = self.shared.clone();
        let cfg = self.bpftrace.clone();
        // Resolving a pod walks the cgroup tree: off the async workers.
        let rx = tokio::task::spawn_blocking(move || {
            crate::bpftrace::start(req.into_inner(), caller, cfg.as_ref(), shared)
        })
        .await
        .map_err(|e| Status::internal(format!("bpftrace start: {e}")))??;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn trace(
        &self,
        req: Request<TraceRequest>,
    ) -> std::result::Result<Response<Self::TraceStream>, Status> {
        let rx = session::start(req.into_inner(), self.shared.clone())?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn profile(
        &self,
        req: Request<ProfileRequest>,
    ) -> std::result::Result<Response<ProfileResponse>, Status> {
        let r = req.into_inner();
        let mut filter: FilterArgs = session::json("filter", &r.filter_json)?;
        // A label selection's pods, filtered like --pod: in the kernel by
        // their cgroups, then per sample.
        filter
            .pods
            .extend(r.pods.iter().map(|p| (p.namespace.clone(), p.name.clone())));
        let duration = match r.duration_ms {
            0 => Duration::from_secs(10),
            ms if ms > MAX_PROFILE.as_millis() as u64 => {
                return Err(Status::invalid_argument(format!(
                    "a profile lasts at most {}s",
                    MAX_PROFILE.as_secs()
                )))
            }
            ms => Duration::from_millis(ms),
        };
        let frequency = match r.frequency_hz {
            0 => 99,
            f if f > 10_000 => {
                return Err(Status::invalid_argument(
                    "frequency_hz: at most 10000 samples per second",
                ))
            }
            f => f,
        };
        let (kernel, user) = match StackKinds::try_from(r.stacks) {
            Ok(StackKinds::KernelAndUser) => (true, true),
            Ok(StackKinds::KernelOnly) => (true, false),
            Ok(StackKinds::UserOnly) => (false, true),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "stacks: {} is not a kind of stack this agent knows",
                    r.stacks
                )))
            }
        };
        let opts = plumb_profile::ProfileOptions {
            frequency,
            duration,
            filter,
            kernel,
            user,
            sources: self.shared.sources.clone(),
            include_self: r.include_self,
        };
        // The sampling stops early when the client goes away (tonic drops
        // this future, and with it the guard) or the agent shuts down.
        let stop = Arc::new(AtomicBool::new(false));
        let _guard = StopOnDrop(stop.clone());
        let mut stopping = self.stopping.clone();
        let on_shutdown = stop.clone();
        let watcher = tokio::spawn(async move {
            let _ = stopping.wait_for(|v| *v).await;
            on_shutdown.store(true, Ordering::Relaxed);
        });
        let s2 = stop.clone();
        let result = tokio::task::spawn_blocking(move || {
            plumb_profile::profile(&opts, &s2).map_err(|e| session::chain(&e))
        })
        .await;
        watcher.abort();
        let profile = match result {
            Ok(Ok(p)) => p,
            Ok(Err(msg)) => {
                tracing::warn!(error = %msg, "remote profile failed");
                return Err(Status::failed_precondition(msg));
            }
            Err(e) => return Err(Status::internal(format!("profile task: {e}"))),
        };
        tracing::info!(
            samples = profile.completeness.samples,
            lost = profile.completeness.lost,
            "remote profile done"
        );
        let mut resp = crate::profile_wire::to_response(&profile);
        resp.node = self.shared.node.to_string();
        Ok(Response::new(resp))
    }

    type LogsStream = BoxStream<LogLine>;

    async fn logs(
        &self,
        _req: Request<LogsRequest>,
    ) -> std::result::Result<Response<Self::LogsStream>, Status> {
        let mut rx = self.logs.subscribe();
        let mut stopping = self.stopping.clone();
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    r = rx.recv() => r,
                    _ = stopping.wait_for(|v| *v) => return,
                };
                let line = match next {
                    Ok(l) => l,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => LogLine {
                        level: "WARN".into(),
                        target: "plumb_agent::logs".into(),
                        message: format!("{n} log lines skipped: this client read too slowly"),
                        ..Default::default()
                    },
                    Err(_) => return,
                };
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

/// An agent whose listeners are bound (so their addresses are known).
pub struct BoundAgent {
    cfg: AgentConfig,
    api: Incoming,
    metrics: Option<tokio::net::TcpListener>,
    collector: Arc<NodeCollector>,
    registry: Arc<Registry>,
    shared: Shared,
    shutdown: Arc<AtomicBool>,
    /// Mutual TLS, done by the agent itself (see `auth::tls_incoming`).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

enum Incoming {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl BoundAgent {
    /// Check the configuration, load the counters, bind the listeners.
    pub async fn bind(
        cfg: AgentConfig,
        sources: Vec<Arc<dyn MetadataSource>>,
    ) -> Result<BoundAgent> {
        cfg.listen
            .check_auth(cfg.token.is_some() || cfg.tls.is_some())?;
        // Bad TLS files fail here, before anything is loaded.
        let mut tls = None;
        if let Some(files) = &cfg.tls {
            let read = |what: &'static str, p: &PathBuf| {
                std::fs::read(p).map_err(|source| AgentError::ReadFile {
                    what,
                    path: p.clone(),
                    source,
                })
            };
            tls = Some(auth::tls_acceptor(
                &read("TLS certificate", &files.cert)?,
                &read("TLS key", &files.key)?,
                &read("client CA", &files.client_ca)?,
            )?);
        }
        let api = match &cfg.listen {
            ListenAddr::Tcp(a) => {
                Incoming::Tcp(tokio::net::TcpListener::bind(a).await.map_err(|source| {
                    AgentError::Listen {
                        addr: a.to_string(),
                        source,
                    }
                })?)
            }
            ListenAddr::Unix(p) => {
                // A socket left by an earlier run would make bind fail.
                let _ = std::fs::remove_file(p);
                let l = tokio::net::UnixListener::bind(p).map_err(|source| AgentError::Listen {
                    addr: cfg.listen.to_string(),
                    source,
                })?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).map_err(
                    |source| AgentError::Listen {
                        addr: cfg.listen.to_string(),
                        source,
                    },
                )?;
                Incoming::Unix(l, p.clone())
            }
        };
        let metrics = match cfg.metrics_listen {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|source| {
                AgentError::Listen {
                    addr: a.to_string(),
                    source,
                }
            })?),
            None => None,
        };
        let counters: Option<Box<dyn CounterStore>> = if cfg.counters {
            match tokio::task::block_in_place(NodeCounters::start) {
                Ok(c) => {
                    for s in &c.skipped {
                        tracing::warn!(program = %s, "hook not available on this kernel; its counter stays at zero");
                    }
                    Some(Box::new(c))
                }
                Err(e) => return Err(AgentError::Counters(e)),
            }
        } else {
            None
        };
        let stats = Arc::new(AgentStats::default());
        let attribution =
            Attribution::new(Box::new(HostLookup::new(sources.clone())), cfg.attribution);
        let collector = Arc::new(NodeCollector::new(
            counters,
            attribution,
            Ledger::new(cfg.gc_every),
            stats.clone(),
            cfg.pod_index.clone(),
        ));
        let registry = Arc::new(metrics::registry(collector.clone(), &cfg.node));
        let shutdown = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            stats,
            sources,
            node: Arc::from(cfg.node.as_str()),
            shutdown: shutdown.clone(),
            max_sessions: cfg.max_sessions,
        };
        Ok(BoundAgent {
            cfg,
            api,
            metrics,
            collector,
            registry,
            shared,
            shutdown,
            tls,
        })
    }

    /// The API's TCP address (when it listens on TCP).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        match &self.api {
            Incoming::Tcp(l) => l.local_addr().ok(),
            Incoming::Unix(..) => None,
        }
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Programs of the always-on counters.
    pub fn counter_prog_ids(&self) -> Vec<u32> {
        self.collector.prog_ids()
    }

    /// Serve until `stop` resolves; then stop every run and unload.
    pub async fn serve(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let flag = self.shutdown.clone();
        tokio::spawn(async move {
            stop.await;
            // Runs see the flag at their next poll and end their streams,
            // which lets the gRPC server finish gracefully.
            flag.store(true, Ordering::Relaxed);
            let _ = stop_tx.send(true);
        });
        let wait = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let grace = self.cfg.shutdown_grace;
        let health = Arc::new(Health {
            collector: self.collector.clone(),
            // The API's listener is bound (connections queue) and this
            // function goes on to serve it without waiting on anything
            // first: it is up from here until the server ends. Set later,
            // a /healthz answered on another worker in between said
            // otherwise.
            api_up: AtomicBool::new(true),
            stopping: self.shutdown.clone(),
            socket: match &self.api {
                Incoming::Unix(_, p) => {
                    use std::os::unix::fs::MetadataExt;
                    std::fs::metadata(p).ok().map(|m| (p.clone(), m.ino()))
                }
                Incoming::Tcp(_) => None,
            },
        });
        // Keys of vanished pods are collected even when nobody scrapes.
        let refresher = {
            let c = self.collector.clone();
            let every = self.cfg.gc_every;
            let mut rx = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let stopped = tokio::select! {
                        _ = tick.tick() => false,
                        _ = rx.wait_for(|v| *v) => true,
                    };
                    if stopped {
                        return;
                    }
                    let c = c.clone();
                    let _ = tokio::task::spawn_blocking(move || c.refresh()).await;
                }
            })
        };
        let mut metrics_task = None;
        if let Some(l) = self.metrics {
            let reg = self.registry.clone();
            let (h1, h2) = (health.clone(), health.clone());
            let app = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || {
                        let reg = reg.clone();
                        async move {
                            let body = tokio::task::spawn_blocking(move || metrics::render(&reg))
                                .await
                                .unwrap_or_default();
                            (
                                [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                                body,
                            )
                        }
                    }),
                )
                .route(
                    "/healthz",
                    axum::routing::get(move || {
                        let h = h1.clone();
                        async move { h.answer(false).await }
                    }),
                )
                .route(
                    "/readyz",
                    axum::routing::get(move || {
                        let h = h2.clone();
                        async move { h.answer(true).await }
                    }),
                );
            let rx = stop_rx.clone();
            metrics_task = Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).with_graceful_shutdown(wait(rx)).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            }));
        }
        let token = self.cfg.token.clone();
        let svc = Service {
            shared: self.shared.clone(),
            logs: crate::logs::hub(),
            stopping: stop_rx.clone(),
            bpftrace: self.cfg.bpftrace.clone(),
            capture: self.cfg.capture.clone(),
            token_required: token.is_some(),
        };
        let svc = AgentServer::with_interceptor(
            svc,
            auth::interceptor(token, self.shared.stats.auth.clone()),
        );
        tracing::info!(listen = %self.cfg.listen, metrics = ?self.cfg.metrics_listen, node = %self.cfg.node, "agent ready");
        let router = Server::builder().add_service(svc);
        let auth_stats = self.shared.stats.auth.clone();
        type Serving =
            Pin<Box<dyn Future<Output = std::result::Result<(), tonic::transport::Error>> + Send>>;
        let mut socket = None;
        let server: Serving = match (self.api, self.tls) {
            (Incoming::Tcp(l), Some(a)) => {
                let tls = auth::tls_incoming(TcpListenerStream::new(l), a, auth_stats);
                Box::pin(router.serve_with_incoming_shutdown(tls, wait(stop_rx.clone())))
            }
            (Incoming::Tcp(l), None) => Box::pin(
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(l), wait(stop_rx.clone())),
            ),
            (Incoming::Unix(l, path), a) => {
                socket = Some(path);
                let l = UnixListenerStream::new(l);
                match a {
                    Some(a) => {
                        let tls = auth::tls_incoming(l, a, auth_stats);
                        Box::pin(router.serve_with_incoming_shutdown(tls, wait(stop_rx.clone())))
                    }
                    None => Box::pin(router.serve_with_incoming_shutdown(l, wait(stop_rx.clone()))),
                }
            }
        };
        // After the stop, clients get `grace` to read what is left; one
        // that stopped reading would otherwise hold the graceful end forever.
        let deadline = {
            let rx = stop_rx.clone();
            async move {
                wait(rx).await;
                tokio::time::sleep(grace).await;
            }
        };
        let r = tokio::select! {
            r = server => r,
            _ = deadline => {
                tracing::warn!(grace = ?grace, "clients still connected after the grace period; closing them");
                Ok(())
            }
        };
        health.api_up.store(false, Ordering::Relaxed);
        if let Some(p) = socket {
            let _ = std::fs::remove_file(p);
        }
        // Runs unload as soon as they see the stop (they never wait for a
        // client); wait for that, within the same bound.
        let until = tokio::time::Instant::now() + grace;
        while self.shared.stats.sessions.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.shared.stats.sessions.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(sessions = left, "gadget runs still unloading at exit");
        }
        // The metrics handler and the refresher hold the collector; once
        // they are done, the counters unload with it.
        if let Some(t) = metrics_task {
            if tokio::time::timeout(grace, t).await.is_err() {
                tracing::warn!("metrics clients still connected; closing them");
            }
        }
        let _ = refresher.await;
        drop(health);
        drop(self.registry);
        drop(self.collector);
        r.map_err(AgentError::Serve)?;
        tracing::info!("agent stopped; everything detached");
        Ok(())
    }
}

/// What `/healthz` and `/readyz` check.
struct Health {
    collector: Arc<NodeCollector>,
    api_up: AtomicBool,
    stopping: Arc<AtomicBool>,
    /// The API's unix socket and its inode: deleted or replaced, nobody
    /// can reach the API any more.
    socket: Option<(PathBuf, u64)>,
}

impl Health {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.collector.healthy() {
            p.push("the always-on counters are not loaded".to_string());
        }
        if !self.api_up.load(Ordering::Relaxed) {
            p.push("the API is not being served".to_string());
        }
        if let Some((path, ino)) = &self.socket {
            use std::os::unix::fs::MetadataExt;
            if std::fs::metadata(path).map(|m| m.ino()).ok() != Some(*ino) {
                p.push(format!(
                    "the API socket {} was removed or replaced",
                    path.display()
                ));
            }
        }
        p
    }

    /// 200 "ok", or 503 with what is wrong (one problem a line). Ready
    /// also means not shutting down.
    async fn answer(self: Arc<Self>, ready: bool) -> (axum::http::StatusCode, String) {
        let h = self.clone();
        let mut p = tokio::task::spawn_blocking(move || h.problems())
            .await
            .unwrap_or_else(|e| vec![format!("health check failed: {e}")]);
        if ready && self.stopping.load(Ordering::Relaxed) {
            p.push("shutting down".to_string());
        }
        if p.is_empty() {
            (axum::http::StatusCode::OK, "ok\n".to_string())
        } else {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                p.join("\n") + "\n",
            )
        }
    }
}
