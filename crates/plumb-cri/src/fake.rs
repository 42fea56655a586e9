//! A stand-in CRI runtime for tests: it serves the three calls plumb makes on
//! a unix socket, answering for the pods it was given the way containerd
//! answers for pods the kubelet created (the kubelet's labels on each
//! container, the pod's metadata on its sandbox). No cluster or runtime can
//! be installed on the machines the tests run on; this is what stands in.

use crate::proto::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use crate::proto::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// A pod as the runtime knows it.
#[derive(Debug, Clone)]
pub struct FakePod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// (container id, container name)
    pub containers: Vec<(String, String)>,
}

struct Service {
    pods: Vec<FakePod>,
    delay: Duration,
    runtime_name: String,
}

#[tonic::async_trait]
impl RuntimeService for Service {
    async fn version(
        &self,
        _req: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        tokio::time::sleep(self.delay).await;
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: self.runtime_name.clone(),
            runtime_version: "stand-in".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        tokio::time::sleep(self.delay).await;
        let id = req.into_inner().container_id;
        let found = self.pods.iter().find_map(|p| {
            p.containers
                .iter()
                .find(|(cid, _)| *cid == id)
                .map(|(_, name)| (p, name))
        });
        let Some((pod, name)) = found else {
            return Err(Status::not_found(format!(
                "an error occurred when try to find container \"{id}\": not found"
            )));
        };
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_string(), pod.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                pod.namespace.clone(),
            ),
            ("io.kubernetes.pod.uid".to_string(), pod.uid.clone()),
            ("io.kubernetes.container.name".to_string(), name.clone()),
        ]);
        Ok(Response::new(ContainerStatusResponse {
            status: Some(ContainerStatus {
                id,
                metadata: Some(ContainerMetadata {
                    name: name.clone(),
                    attempt: 0,
                }),
                labels,
                annotations: HashMap::new(),
            }),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        tokio::time::sleep(self.delay).await;
        let want = req
            .into_inner()
            .filter
            .and_then(|f| f.label_selector.get("io.kubernetes.pod.uid").cloned());
        let items = self
            .pods
            .iter()
            .filter(|p| want.as_deref().is_none_or(|u| u == p.uid))
            .map(|p| PodSandbox {
                id: format!("sandbox-{}", p.uid),
                metadata: Some(PodSandboxMetadata {
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    namespace: p.namespace.clone(),
                    attempt: 0,
                }),
                state: 0,
                labels: HashMap::from([("io.kubernetes.pod.uid".to_string(), p.uid.clone())]),
            })
            .collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }
}

/// A running stand-in; stops and removes its socket when dropped.
pub struct FakeRuntime {
    rt: Option<tokio::runtime::Runtime>,
    path: PathBuf,
}

impl FakeRuntime {
    /// Serve `pods` on a unix socket at `path`, each answer after `delay`,
    /// calling itself containerd.
    pub fn start(path: &Path, pods: Vec<FakePod>, delay: Duration) -> std::io::Result<Self> {
        Self::start_named(path, pods, delay, "containerd")
    }

    /// As [`FakeRuntime::start`], with the name its Version call gives.
    pub fn start_named(
        path: &Path,
        pods: Vec<FakePod>,
        delay: Duration,
        runtime_name: &str,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = {
            let _guard = rt.enter();
            tokio::net::UnixListener::bind(path)?
        };
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(RuntimeServiceServer::new(Service {
                    pods,
                    delay,
                    runtime_name: runtime_name.to_string(),
                }))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        Ok(FakeRuntime {
            rt: Some(rt),
            path: path.to_path_buf(),
        })
    }

    /// The socket, as `--runtime-endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
