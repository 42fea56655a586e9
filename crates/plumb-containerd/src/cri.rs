//! A blocking CRI client over containerd's unix socket: the calls the
//! kubelet makes to run a pod, each bounded by a timeout, on a runtime of
//! its own so tests call it from plain threads.

use crate::proto::runtime_service_client::RuntimeServiceClient;
use crate::proto::*;
use crate::{Error, Result};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one call may take (a sandbox start runs runc and CNI).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// A client for the socket at `path` (the connection is made lazily: a
    /// runtime not up yet fails the first call, not this).
    pub fn new(path: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error(format!("tokio runtime: {e}")))?;
        let path: PathBuf = path.to_path_buf();
        let channel = {
            let _guard = rt.enter();
            // The URI is required by the HTTP/2 layer but never dialled.
            Endpoint::from_static("http://cri.invalid").connect_with_connector_lazy(
                tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }),
            )
        };
        Ok(Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    fn call<T, F>(
        &self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.client.clone());
        match self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(Error(format!("CRI {what}: {}", s.message()))),
            Err(_) => Err(Error(format!("CRI {what}: no answer in {CALL_TIMEOUT:?}"))),
        }
    }

    pub fn version(&self) -> Result<VersionResponse> {
        self.call("Version", |mut c| async move {
            c.version(VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String> {
        let r = self.call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })?;
        Ok(r.pod_sandbox_id)
    }

    /// The pod's IP address as CNI gave it.
    pub fn pod_ip(&self, id: &str) -> Result<String> {
        let id = id.to_string();
        let r = self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: false,
            })
            .await
        })?;
        Ok(r.status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    pub fn create_container(
        &self,
        sandbox: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> Result<String> {
        let sandbox = sandbox.to_string();
        let r = self.call("CreateContainer", |mut c| async move {
            c.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox,
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
        })?;
        Ok(r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call("StartContainer", |mut c| async move {
            c.start_container(StartContainerRequest { container_id: id })
                .await
        })
        .map(drop)
    }

    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let id = id.to_string();
        self.call("StopContainer", |mut c| async move {
            c.stop_container(StopContainerRequest {
                container_id: id,
                timeout,
            })
            .await
        })
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call("RemoveContainer", |mut c| async move {
            c.remove_container(RemoveContainerRequest { container_id: id })
                .await
        })
        .map(drop)
    }
}
