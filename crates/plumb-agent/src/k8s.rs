//! The Kubernetes side, kept thin.
//!
//! Agent: [`PodIndex`] watches the Pods of its own node (field selector
//! `spec.nodeName=NODE`) and names the pod UIDs found in cgroup paths
//! (namespace and name for events and metrics; owner and labels for
//! events). Without API access it says so once and the agent goes on
//! with cgroup-level attribution.
//!
//! Client (`kubectl plumb`): [`resolve`] turns -n/-l/--pod/--node/-A into
//! the nodes concerned and each node's agent pod (every agent when nothing
//! is selected); [`target`] makes each into a fan-out target reached
//! through the API server's port-forward, opened per connection, whose
//! failures (refused upgrade, nothing listening in the pod) are reported
//! as the connection's error.

use crate::client::{BoxIo, Dial, Target as AgentTarget};
use crate::proto::PodRef;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::{watcher, WatchStreamExt};
use plumb_core::enrich::MetadataSource;
use plumb_core::event::Workload;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// What the agent knows of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `Kind/name` of the controller owning it (ReplicaSet/web-5d9...).
    pub owner: Option<String>,
    pub node: Option<String>,
}

impl PodMeta {
    fn of(p: &Pod) -> Option<(String, PodMeta)> {
        let m = &p.metadata;
        let owner = m
            .owner_references
            .as_ref()
            .and_then(|o| o.iter().find(|r| r.controller == Some(true)).or(o.first()))
            .map(|r| format!("{}/{}", r.kind, r.name));
        Some((
            m.uid.clone()?,
            PodMeta {
                namespace: m.namespace.clone().unwrap_or_default(),
                name: m.name.clone()?,
                labels: m.labels.clone().unwrap_or_default(),
                owner,
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            },
        ))
    }
}

/// Pod UID → metadata for the pods of this node, kept current by a watch.
#[derive(Debug, Default, Clone)]
pub struct PodIndex(Arc<RwLock<HashMap<String, PodMeta>>>);

impl PodIndex {
    pub fn get(&self, uid: &str) -> Option<PodMeta> {
        self.0.read().ok()?.get(uid).cloned()
    }

    pub fn len(&self) -> usize {
        self.0.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn apply(&self, ev: watcher::Event<Pod>) {
        let Ok(mut m) = self.0.write() else { return };
        match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                if let Some((uid, meta)) = PodMeta::of(&p) {
                    m.insert(uid, meta);
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(uid) = &p.metadata.uid {
                    m.remove(uid);
                }
            }
            // A relist: what is not listed again is gone.
            watcher::Event::Init => m.clear(),
            watcher::Event::InitDone => {}
        }
    }

    /// Watch the pods of `node` until the stream ends (never, normally:
    /// the watcher retries). The first error is logged once; the index
    /// keeps what it had.
    pub async fn watch(self, client: kube::Client, node: String) {
        let pods: Api<Pod> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut said = false;
        let stream = watcher(pods, cfg).default_backoff();
        futures_util::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => self.apply(ev),
                Err(e) if !said => {
                    said = true;
                    tracing::warn!(error = %e, "cannot watch pods; events keep cgroup-level attribution until the API answers");
                }
                Err(_) => {}
            }
        }
    }
}

impl MetadataSource for PodIndex {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn fill(&self, w: &mut Workload) {
        let Some(uid) = w.pod_uid.as_deref() else {
            return;
        };
        if let Some(p) = self.get(uid) {
            w.pod.get_or_insert(p.name);
            w.namespace.get_or_insert(p.namespace);
            if w.owner.is_none() {
                w.owner = p.owner;
            }
            if w.pod_labels.is_none() && !p.labels.is_empty() {
                w.pod_labels = Some(Arc::new(p.labels));
            }
        }
    }
}

/// Start watching this node's pods when running in a pod of a cluster.
/// Otherwise (or without a usable service account), say so once and
/// return None.
pub async fn start_watcher(node: &str) -> Option<PodIndex> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        tracing::info!(
            "not running in a Kubernetes pod: attribution stays at cgroup/container level"
        );
        return None;
    }
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "no Kubernetes API access: attribution stays at cgroup/container level");
            return None;
        }
    };
    let index = PodIndex::default();
    tokio::spawn(index.clone().watch(client, node.to_string()));
    Some(index)
}

/// Which pods a `kubectl plumb` command is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// None with `all_namespaces`: every namespace.
    pub namespace: Option<String>,
    pub all_namespaces: bool,
    pub labels: Option<String>,
    pub pod: Option<String>,
    /// Only this node (alone: every pod of the node).
    pub node: Option<String>,
}

impl Selection {
    /// No pod is selected: the command is about whole nodes (`--node`, or
    /// every node).
    pub fn whole_nodes(&self) -> bool {
        self.pod.is_none() && self.labels.is_none() && self.namespace.is_none()
    }
}

/// Where the agents run (deploy/daemonset.yaml), overridable with
/// `--agent-namespace` and `--agent-selector`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPods {
    pub namespace: String,
    /// A label selector matching the agent pods.
    pub selector: String,
}

impl Default for AgentPods {
    fn default() -> Self {
        AgentPods {
            namespace: AGENT_NAMESPACE.to_string(),
            selector: AGENT_SELECTOR.to_string(),
        }
    }
}

/// Where to run: a node, its agent pod, and the selected pods on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    pub agent_pod: String,
    /// (namespace, name) of the selected pods on this node; empty when the
    /// selection is the whole node.
    pub pods: BTreeSet<(String, String)>,
}

/// What [`resolve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub targets: Vec<Target>,
    /// Nodes with selected pods but no running agent.
    pub without_agent: Vec<String>,
}

/// The default agents' namespace and label (deploy/daemonset.yaml).
pub const AGENT_NAMESPACE: &str = "plumb";
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=plumb,app.kubernetes.io/component=agent";

/// Resolve a selection to nodes and their agent pods. With no pod
/// selected (no -n, -l or --pod), every agent is asked, or the one on
/// `--node`.
pub async fn resolve(
    client: &kube::Client,
    sel: &Selection,
    agents: &AgentPods,
) -> kube::Result<Resolved> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &agents.namespace);
    let mut agent_of: BTreeMap<String, String> = BTreeMap::new();
    for p in api
        .list(&ListParams::default().labels(&agents.selector))
        .await?
    {
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if let (true, Some(node), Some(name)) = (
            running,
            p.spec.as_ref().and_then(|s| s.node_name.clone()),
            p.metadata.name.clone(),
        ) {
            agent_of.insert(node, name);
        }
    }
    let mut nodes: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    if sel.whole_nodes() {
        match &sel.node {
            Some(n) => {
                nodes.insert(n.clone(), BTreeSet::new());
            }
            None => {
                for n in agent_of.keys() {
                    nodes.insert(n.clone(), BTreeSet::new());
                }
            }
        }
    } else {
        let api: Api<Pod> = match &sel.namespace {
            _ if sel.all_namespaces => Api::all(client.clone()),
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::default_namespaced(client.clone()),
        };
        let mut lp = ListParams::default();
        if let Some(l) = &sel.labels {
            lp = lp.labels(l);
        }
        let mut fields = Vec::new();
        if let Some(p) = &sel.pod {
            fields.push(format!("metadata.name={p}"));
        }
        if let Some(n) = &sel.node {
            fields.push(format!("spec.nodeName={n}"));
        }
        let joined = fields.join(",");
        if !joined.is_empty() {
            lp = lp.fields(&joined);
        }
        for p in api.list(&lp).await? {
            let (Some(node), Some(name)) = (
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                p.metadata.name.clone(),
            ) else {
                continue; // not scheduled yet: no node to ask
            };
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            nodes.entry(node).or_default().insert((ns, name));
        }
    }
    let mut out = Resolved {
        targets: Vec::new(),
        without_agent: Vec::new(),
    };
    for (node, pods) in nodes {
        match agent_of.get(&node) {
            Some(a) => out.targets.push(Target {
                node,
                agent_pod: a.clone(),
                pods,
            }),
            None => out.without_agent.push(node),
        }
    }
    Ok(out)
}

/// The fan-out target for `t`: port `port` of its agent pod, reached
/// through the API server; `keep_pods` sends the node's selected pods
/// along so the agent streams only their events.
pub fn target(
    client: kube::Client,
    agents: &AgentPods,
    t: &Target,
    port: u16,
    keep_pods: bool,
) -> AgentTarget {
    let api: Api<Pod> = Api::namespaced(client, &agents.namespace);
    let pod = t.agent_pod.clone();
    let open = move || {
        let (api, pod) = (api.clone(), pod.clone());
        Box::pin(async move { port_forward(&api, &pod, port).await }) as crate::client::OpenFuture
    };
    let via = format!("agent pod {}/{}", agents.namespace, t.agent_pod);
    AgentTarget {
        dial: Dial::Stream(Arc::new(open)),
        who: format!("node {} ({via})", t.node),
        via,
        node: Some(t.node.clone()),
        pods: if keep_pods {
            t.pods
                .iter()
                .map(|(namespace, name)| PodRef {
                    namespace: namespace.clone(),
                    name: name.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// One port-forward stream to `pod`'s `port`.
async fn port_forward(api: &Api<Pod>, pod: &str, port: u16) -> io::Result<BoxIo> {
    let mut pf = api
        .portforward(pod, &[port])
        .await
        .map_err(|e| io::Error::other(format!("port-forward: {}", crate::error::chain(&e))))?;
    let (Some(io), Some(error)) = (pf.take_stream(port), pf.take_error(port)) else {
        return Err(io::Error::other(
            "port-forward: the port's stream is missing",
        ));
    };
    // The forwarding runs in kube's own task; `pf` only holds its handle.
    drop(pf);
    Ok(Box::new(Forwarded {
        io,
        error: PodError::Waiting(Box::pin(error)),
    }))
}

/// What the pod end of a port-forward said on its error channel.
enum PodError {
    Waiting(Pin<Box<dyn Future<Output = Option<String>> + Send>>),
    Said(Option<String>),
}

/// A port-forward stream. The API server reports a failure (nothing
/// listening on the pod's port) on the port's error channel, then closes
/// the stream: the end of the stream, or a write into it, fails with that
/// message, so the user sees why the node is unreachable. The whole
/// message is the io::Error's text, since HTTP/2 keeps only that.
struct Forwarded {
    io: DuplexStream,
    error: PodError,
}

impl Forwarded {
    /// The pod end's error, if it has said one by now.
    fn pod_error(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let PodError::Waiting(f) = &mut self.error {
            if let Poll::Ready(msg) = f.as_mut().poll(cx) {
                self.error = PodError::Said(msg);
            }
        }
        match &self.error {
            PodError::Said(Some(msg)) => Some(io::Error::other(format!("port-forward: {msg}"))),
            _ => None,
        }
    }

    /// A failed write, or the end of the stream, as the pod's error.
    fn explain<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.pod_error(cx).unwrap_or(e))),
            other => other,
        }
    }
}

impl AsyncRead for Forwarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // The end of the stream: was it an error?
                match this.pod_error(cx) {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Ready(Ok(())),
                }
            }
            other => this.explain(cx, other),
        }
    }
}

impl AsyncWrite for Forwarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.explain(cx, r)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.explain(cx, r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
