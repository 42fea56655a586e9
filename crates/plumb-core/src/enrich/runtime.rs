//! Names from a container runtime's API socket (Docker, and podman's
//! Docker-compatible socket, rootful and each user's rootless one):
//! container name, and for containers started by a kubelet through
//! dockershim/cri-dockerd, the pod's name and namespace from the labels the
//! kubelet sets. (CRI runtimes, containerd and CRI-O, are asked by the
//! plumb-cri crate.)

use super::MetadataSource;
use crate::event::Workload;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Sockets that speak the Docker Engine API, in the order they are tried.
const SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/podman/podman.sock"];

/// Docker-API runtimes reached through their unix sockets.
pub struct DockerApi {
    sockets: Vec<PathBuf>,
}

/// Longest wait for one answer: this runs on the event path.
const TIMEOUT: Duration = Duration::from_millis(250);

impl DockerApi {
    /// The runtime sockets present on this host: Docker's, rootful
    /// podman's, and every user's rootless podman socket.
    pub fn discover() -> Option<Self> {
        let mut sockets: Vec<PathBuf> = SOCKETS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        if let Ok(users) = std::fs::read_dir("/run/user") {
            let mut rootless: Vec<PathBuf> = users
                .flatten()
                .map(|u| u.path().join("podman/podman.sock"))
                .filter(|p| p.exists())
                .collect();
            rootless.sort();
            sockets.extend(rootless);
        }
        (!sockets.is_empty()).then_some(DockerApi { sockets })
    }

    /// The sockets asked, in order.
    pub fn sockets(&self) -> &[PathBuf] {
        &self.sockets
    }

    fn inspect(&self, id: &str) -> Option<serde_json::Value> {
        self.sockets.iter().find_map(|s| inspect_at(s, id))
    }
}

/// `GET /containers/ID/json` on one socket.
fn inspect_at(socket: &Path, id: &str) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(TIMEOUT)).ok()?;
    s.set_write_timeout(Some(TIMEOUT)).ok()?;
    write!(
        s,
        "GET /containers/{id}/json HTTP/1.0\r\nHost: localhost\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf).ok()?;
    parse_inspect_response(&buf)
}

/// The JSON body of an HTTP/1.0 response with status 200.
fn parse_inspect_response(buf: &[u8]) -> Option<serde_json::Value> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1)? != "200" {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// Fill a workload from `docker inspect`'s JSON.
fn fill_from_inspect(v: &serde_json::Value, w: &mut Workload) {
    let labels = &v["Config"]["Labels"];
    let label = |k: &str| labels.get(k).and_then(|x| x.as_str()).map(str::to_string);
    if let Some(p) = label("io.kubernetes.pod.name") {
        w.pod = Some(p);
    }
    if let Some(n) = label("io.kubernetes.pod.namespace") {
        w.namespace = Some(n);
    }
    if let Some(u) = label("io.kubernetes.pod.uid") {
        w.pod_uid.get_or_insert(u);
    }
    w.container = label("io.kubernetes.container.name").or_else(|| {
        v["Name"]
            .as_str()
            .map(|n| n.trim_start_matches('/').to_string())
    });
}

impl MetadataSource for DockerApi {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn fill(&self, w: &mut Workload) {
        if !matches!(w.container_runtime, Some("docker" | "podman")) {
            return;
        }
        if let Some(v) = w.container_id.as_deref().and_then(|id| self.inspect(id)) {
            fill_from_inspect(&v, w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_pod_labels() {
        let resp = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Name\":\"/k8s_app_checkout\",\"Config\":{\"Labels\":{\"io.kubernetes.pod.name\":\"checkout-7d\",\"io.kubernetes.pod.namespace\":\"shop\",\"io.kubernetes.container.name\":\"app\"}}}";
        let v = parse_inspect_response(resp).unwrap();
        let mut w = Workload::default();
        fill_from_inspect(&v, &mut w);
        assert_eq!(w.pod.as_deref(), Some("checkout-7d"));
        assert_eq!(w.namespace.as_deref(), Some("shop"));
        assert_eq!(w.container.as_deref(), Some("app"));
    }

    #[test]
    fn plain_container_gets_its_name_only() {
        let resp = b"HTTP/1.0 200 OK\r\n\r\n{\"Name\":\"/web\",\"Config\":{\"Labels\":{}}}";
        let mut w = Workload::default();
        fill_from_inspect(&parse_inspect_response(resp).unwrap(), &mut w);
        assert_eq!(w.container.as_deref(), Some("web"));
        assert!(w.pod.is_none());
        assert!(parse_inspect_response(b"HTTP/1.0 404 Not Found\r\n\r\n{}").is_none());
    }
}
