//! Names for containers and pods from the node's container runtime, asked
//! through the Kubernetes Container Runtime Interface (CRI) on the runtime's
//! unix socket: containerd, CRI-O and cri-dockerd all serve it to the
//! kubelet. A cgroup path gives plumb a container id and a pod UID; the
//! runtime knows the names the kubelet gave them (pod, namespace, container),
//! as the labels it set.
//!
//! The pipeline that asks is synchronous and must not stall on a slow
//! runtime: lookups run on one worker thread with its own tokio runtime,
//! each answer is waited for at most a bounded time, and answers (including
//! "not known") are cached.

mod endpoint;
#[cfg(feature = "fake-runtime")]
pub mod fake;

pub use endpoint::{parse_endpoint, DEFAULT_ENDPOINTS};

/// The CRI messages and service (the subset in `proto/cri`).
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

use lru::LruCache;
use plumb_core::enrich::MetadataSource;
use plumb_core::event::Workload;
use proto::runtime_service_client::RuntimeServiceClient;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Labels the kubelet sets on every container it creates through the CRI.
const POD_NAME: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const POD_UID: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// What the runtime said about a container or a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    /// The runtime that answered, as its Version call names it
    /// ("containerd", "cri-o", "docker"); `None` for one plumb does not know.
    pub runtime: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Container(String),
    Pod(String),
}

/// The worker's answer to one lookup.
enum Answer {
    Known(Names),
    /// Every runtime answered, none knows it.
    Unknown,
    /// No runtime answered (unreachable, or slower than the timeout).
    Failed,
}

struct Job {
    key: Key,
    reply: mpsc::SyncSender<Answer>,
}

/// Lookups asked of the runtime, those that got no answer (runtime slow or
/// unreachable), and answers served from the cache.
#[derive(Debug, Default)]
pub struct CriStats {
    pub asked: AtomicU64,
    pub failed: AtomicU64,
    pub cached: AtomicU64,
}

/// A [`MetadataSource`] over one or more CRI endpoints, tried in order.
pub struct CriSource {
    jobs: Mutex<mpsc::Sender<Job>>,
    cache: Mutex<LruCache<Key, (Instant, Option<Names>)>>,
    wait: Duration,
    endpoints: Vec<PathBuf>,
    pub stats: CriStats,
}

/// How long an answer (or the absence of one) is kept.
const TTL_KNOWN: Duration = Duration::from_secs(300);
const TTL_UNKNOWN: Duration = Duration::from_secs(10);

impl CriSource {
    /// The longest one call to one endpoint may take.
    pub const CALL_TIMEOUT: Duration = Duration::from_millis(300);

    /// A source over `extra` endpoints (given by the user, used as they
    /// are) followed by the well-known sockets that exist on this host.
    /// `None` when there is none.
    pub fn discover(extra: &[PathBuf]) -> Option<Self> {
        let mut endpoints: Vec<PathBuf> = extra.to_vec();
        for p in DEFAULT_ENDPOINTS {
            let p = PathBuf::from(p);
            if p.exists() && !endpoints.contains(&p) {
                endpoints.push(p);
            }
        }
        (!endpoints.is_empty()).then(|| Self::new(endpoints, Self::CALL_TIMEOUT))
    }

    /// A source over these sockets, each call bounded by `timeout`.
    pub fn new(endpoints: Vec<PathBuf>, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let worker_endpoints = endpoints.clone();
        // If the thread cannot start, every lookup finds the channel closed
        // and answers nothing: names stay unknown, events still flow.
        let _ = std::thread::Builder::new()
            .name("plumb-cri".into())
            .spawn(move || worker(worker_endpoints, timeout, rx));
        CriSource {
            jobs: Mutex::new(tx),
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
            )),
            // Every endpoint may be tried once, one after another; a new
            // connection also asks the runtime's name first.
            wait: timeout * 2 * endpoints.len().max(1) as u32 + Duration::from_millis(50),
            endpoints,
            stats: CriStats::default(),
        }
    }

    /// The sockets this source asks, in order.
    pub fn endpoints(&self) -> &[PathBuf] {
        &self.endpoints
    }

    /// Names of container `id`, as the runtime knows them.
    pub fn container(&self, id: &str) -> Option<Names> {
        self.ask(Key::Container(id.to_string()))
    }

    /// Names of the pod with this UID.
    pub fn pod(&self, uid: &str) -> Option<Names> {
        self.ask(Key::Pod(uid.to_string()))
    }

    fn ask(&self, key: Key) -> Option<Names> {
        if let Ok(mut c) = self.cache.lock() {
            if let Some((at, names)) = c.get(&key) {
                let ttl = if names.is_some() {
                    TTL_KNOWN
                } else {
                    TTL_UNKNOWN
                };
                if at.elapsed() < ttl {
                    self.stats.cached.fetch_add(1, Ordering::Relaxed);
                    return names.clone();
                }
            }
        }
        self.stats.asked.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = mpsc::sync_channel(1);
        let sent = self
            .jobs
            .lock()
            .ok()
            .map(|tx| {
                tx.send(Job {
                    key: key.clone(),
                    reply,
                })
                .is_ok()
            })
            .unwrap_or(false);
        if !sent {
            return None;
        }
        let names = match answer.recv_timeout(self.wait) {
            Ok(Answer::Known(n)) => Some(n),
            Ok(Answer::Unknown) => None,
            Ok(Answer::Failed) | Err(_) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        if let Ok(mut c) = self.cache.lock() {
            c.put(key, (Instant::now(), names.clone()));
        }
        names
    }
}

impl MetadataSource for CriSource {
    fn name(&self) -> &'static str {
        "cri"
    }

    fn fill(&self, w: &mut Workload) {
        let by_container = match (w.container_id.as_deref(), w.container_runtime) {
            (Some(id), Some("containerd" | "cri-o" | "cri")) => Some(id),
            // Docker containers of a kubelet (cri-dockerd).
            (Some(id), Some("docker")) if w.pod_uid.is_some() => Some(id),
            _ => None,
        };
        let mut names = by_container.and_then(|id| self.container(id));
        if names.as_ref().is_none_or(|n| n.pod.is_none()) && w.pod.is_none() {
            if let Some(uid) = w.pod_uid.clone() {
                if let Some(p) = self.pod(&uid) {
                    let n = names.get_or_insert_with(Names::default);
                    n.pod = p.pod;
                    n.namespace = p.namespace;
                    n.pod_uid = n.pod_uid.take().or(p.pod_uid);
                    n.runtime = n.runtime.or(p.runtime);
                }
            }
        }
        let Some(n) = names else {
            return;
        };
        // The runtime that knows the container, or its pod (a sandbox's
        // pause container is known only as the pod), is surer than the
        // cgroup path's guess: a cgroupfs path names no runtime at all.
        if let Some(r) = n.runtime {
            w.container_runtime = Some(r);
        }
        // What the cgroup path said stays; only what it could not say is added.
        if w.pod.is_none() {
            w.pod = n.pod;
        }
        if w.namespace.is_none() {
            w.namespace = n.namespace;
        }
        if w.container.is_none() {
            w.container = n.container;
        }
        if w.pod_uid.is_none() {
            w.pod_uid = n.pod_uid;
        }
    }
}

/// The worker: one connection per endpoint, made on first use and made
/// again after a failure; one lookup at a time.
fn worker(endpoints: Vec<PathBuf>, timeout: Duration, jobs: mpsc::Receiver<Job>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut clients: Vec<Option<Client>> = vec![None; endpoints.len()];
    while let Ok(job) = jobs.recv() {
        let answer = rt.block_on(lookup(&endpoints, &mut clients, timeout, &job.key));
        // The asker may have stopped waiting; that is not an error.
        let _ = job.reply.send(answer);
    }
}

/// A connection to one runtime, and the runtime's name as it gave it when
/// the connection was made.
#[derive(Clone)]
struct Client {
    rpc: RuntimeServiceClient<Channel>,
    runtime: Option<&'static str>,
}

/// Connect, and ask once which runtime this is.
async fn open(path: &std::path::Path, timeout: Duration) -> Option<Client> {
    let mut rpc = tokio::time::timeout(timeout, endpoint::connect(path))
        .await
        .ok()?
        .ok()?;
    let version = rpc.version(proto::VersionRequest {
        version: "v1".into(),
    });
    let runtime = match tokio::time::timeout(timeout, version).await {
        Ok(Ok(v)) => runtime_of(&v.into_inner().runtime_name),
        // An old or partial runtime may not answer Version; names still work.
        _ => None,
    };
    Some(Client { rpc, runtime })
}

/// The names plumb reports for the runtimes' own names of themselves.
pub fn runtime_of(runtime_name: &str) -> Option<&'static str> {
    match runtime_name.to_ascii_lowercase().as_str() {
        "containerd" => Some("containerd"),
        "cri-o" | "crio" => Some("cri-o"),
        "docker" | "cri-dockerd" => Some("docker"),
        _ => None,
    }
}

async fn lookup(
    endpoints: &[PathBuf],
    clients: &mut [Option<Client>],
    timeout: Duration,
    key: &Key,
) -> Answer {
    let mut answered = false;
    for (path, slot) in endpoints.iter().zip(clients.iter_mut()) {
        if slot.is_none() {
            *slot = open(path, timeout).await;
        }
        let Some(client) = slot.as_mut() else {
            continue;
        };
        match tokio::time::timeout(timeout, call(&mut client.rpc, key)).await {
            Ok(Ok(Some(mut names))) => {
                names.runtime = client.runtime;
                return Answer::Known(names);
            }
            // Not known to this runtime: try the next one.
            Ok(Ok(None)) => answered = true,
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => answered = true,
            // Broken or slow: connect again next time.
            Ok(Err(_)) | Err(_) => *slot = None,
        }
    }
    if answered {
        Answer::Unknown
    } else {
        Answer::Failed
    }
}

async fn call(
    client: &mut RuntimeServiceClient<Channel>,
    key: &Key,
) -> Result<Option<Names>, tonic::Status> {
    match key {
        Key::Container(id) => {
            let resp = client
                .container_status(proto::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner();
            Ok(resp.status.map(|s| container_names(&s)))
        }
        Key::Pod(uid) => {
            let resp = client
                .list_pod_sandbox(proto::ListPodSandboxRequest {
                    filter: Some(proto::PodSandboxFilter {
                        id: String::new(),
                        label_selector: HashMap::from([(POD_UID.to_string(), uid.clone())]),
                    }),
                })
                .await?
                .into_inner();
            Ok(resp
                .items
                .iter()
                .filter_map(|p| p.metadata.as_ref())
                .find(|m| m.uid == *uid)
                .map(|m| Names {
                    pod: non_empty(&m.name),
                    namespace: non_empty(&m.namespace),
                    pod_uid: non_empty(&m.uid),
                    container: None,
                    runtime: None,
                }))
        }
    }
}

/// The pods (namespace, name) whose sandboxes carry every one of `labels`
/// (the kubelet copies a pod's labels onto its sandbox), asked of each
/// endpoint in turn; only ready sandboxes count. An error names the
/// endpoints when none answered.
pub fn pods_with_labels(
    endpoints: &[PathBuf],
    labels: &HashMap<String, String>,
    timeout: Duration,
) -> Result<Vec<(String, String)>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let mut found = Vec::new();
        let mut answered = false;
        for path in endpoints {
            let Some(mut c) = open(path, timeout).await else {
                continue;
            };
            let req = proto::ListPodSandboxRequest {
                filter: Some(proto::PodSandboxFilter {
                    id: String::new(),
                    label_selector: labels.clone(),
                }),
            };
            let Ok(Ok(resp)) = tokio::time::timeout(timeout, c.rpc.list_pod_sandbox(req)).await
            else {
                continue;
            };
            answered = true;
            for p in resp.into_inner().items {
                // SANDBOX_READY is 0.
                if p.state != 0 {
                    continue;
                }
                if let Some(m) = p.metadata {
                    found.push((m.namespace, m.name));
                }
            }
        }
        if !answered {
            let shown: Vec<String> = endpoints.iter().map(|p| p.display().to_string()).collect();
            return Err(format!(
                "no container runtime answered at {} (give --runtime-endpoint)",
                shown.join(", ")
            ));
        }
        found.sort();
        found.dedup();
        Ok(found)
    })
}

/// Names from a container's status: the kubelet's labels, and the CRI's
/// own container name.
pub fn container_names(s: &proto::ContainerStatus) -> Names {
    let label = |k: &str| s.labels.get(k).and_then(|v| non_empty(v));
    Names {
        pod: label(POD_NAME),
        namespace: label(POD_NAMESPACE),
        pod_uid: label(POD_UID),
        container: label(CONTAINER_NAME)
            .or_else(|| s.metadata.as_ref().and_then(|m| non_empty(&m.name))),
        runtime: None,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}
