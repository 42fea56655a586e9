//! Where CRI runtimes listen, and how a gRPC channel is made over a unix
//! socket (tonic dials TCP by default).

use crate::proto::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint, Uri};

/// Sockets of the runtimes a kubelet talks to, in the order they are tried:
/// containerd (also k3s's), CRI-O, cri-dockerd.
pub const DEFAULT_ENDPOINTS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/cri-dockerd.sock",
];

/// A runtime endpoint as crictl and the kubelet write it (`unix:///path`),
/// or a plain path.
pub fn parse_endpoint(s: &str) -> Result<PathBuf, String> {
    let path = s
        .strip_prefix("unix://")
        .or_else(|| s.strip_prefix("unix:"))
        .unwrap_or(s);
    if path.is_empty() || !path.starts_with('/') {
        return Err(format!(
            "'{s}' is not a unix socket path (give unix:///path/to/runtime.sock)"
        ));
    }
    Ok(PathBuf::from(path))
}

/// A client over the unix socket at `path`.
pub async fn connect(
    path: &Path,
) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the HTTP/2 layer but never dialled.
    let channel = Endpoint::from_static("http://cri.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(RuntimeServiceClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_as_crictl_writes_them() {
        assert_eq!(
            parse_endpoint("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            parse_endpoint("/run/crio/crio.sock").unwrap(),
            PathBuf::from("/run/crio/crio.sock")
        );
        assert!(parse_endpoint("tcp://10.0.0.1:1234").is_err());
        assert!(parse_endpoint("").is_err());
    }
}
