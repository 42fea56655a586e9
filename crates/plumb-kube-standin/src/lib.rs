//! Tests only: a stand-in for the parts of the Kubernetes API server that
//! plumb's pod watcher and `kubectl plumb` use, since no API server can be
//! run where the tests run. It is written after the API reference and
//! kube-rs's client code, not recorded from a cluster:
//!
//! - `GET /api/v1/pods` and `/api/v1/namespaces/NS/pods`: a `PodList` of
//!   the cluster's pods ([`Cluster::pods`], a fixture), filtered by the
//!   namespace, `labelSelector` (equality and set-based terms) and
//!   `fieldSelector` (`metadata.name`, `metadata.namespace`,
//!   `spec.nodeName`, `status.phase`), as the API server filters them;
//!   with `watch=1` the watch events of [`Cluster::watch`] (filtered the
//!   same way) on a chunked response that stays open.
//! - `GET /api/v1/namespaces/NS/pods/NAME/portforward?ports=P`: the
//!   WebSocket upgrade with the `v4.channel.k8s.io` subprotocol. Port i
//!   has data channel 2i and error channel 2i+1; the first frame of each
//!   carries the port as 2 bytes little-endian; every later frame is one
//!   channel byte and data. The bytes are proxied to the real address of
//!   that pod's port ([`Cluster::forwards`]); when nothing answers there,
//!   the error channel says so (in the kubelet's words) and the stream
//!   closes, as a real API server does.
//! - [`Cluster::refuse`] answers every call with one `Status` (403
//!   Forbidden for a service account without rights).
//!
//! Every request target is recorded, decoded, so tests can check the
//! selectors sent. The server runs on its own thread and runtime (tests
//! of the binary are synchronous); dropping it stops it.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{self as ws, protocol::Role};
use tokio_tungstenite::WebSocketStream;

/// What the stand-in serves.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Every pod of the cluster: a `PodList` as `GET /api/v1/pods` returns it.
    pub pods: Value,
    /// Watch events (one JSON object per line) sent after a list.
    pub watch: Option<String>,
    /// Answer every request with this status code and `Status` message.
    pub refuse: Option<(u16, String)>,
    /// Where the port-forward of (namespace, pod, port) goes (more can be
    /// added once the server runs: [`ApiServer::forward`]).
    pub forwards: HashMap<(String, String, u16), SocketAddr>,
}

type Forwards = Arc<Mutex<HashMap<(String, String, u16), SocketAddr>>>;

/// A running stand-in.
pub struct ApiServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    forwards: Forwards,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Listen on a loopback port and serve `cluster`.
    pub fn start(cluster: Cluster) -> std::io::Result<ApiServer> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let forwards: Forwards = Arc::new(Mutex::new(cluster.forwards.clone()));
        let (cluster, s2, f2) = (Arc::new(cluster), seen.clone(), forwards.clone());
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                let serve = async {
                    while let Ok((conn, _)) = listener.accept().await {
                        let (cluster, seen, fw) = (cluster.clone(), s2.clone(), f2.clone());
                        tokio::spawn(async move {
                            let _ = connection(conn, &cluster, &seen, &fw).await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime ends every connection still open.
            drop(rt);
        });
        Ok(ApiServer {
            addr,
            seen,
            forwards,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, the port-forward of `port` of `namespace/pod` goes to
    /// `to` (pods whose agents are started after the server).
    pub fn forward(&self, namespace: &str, pod: &str, port: u16, to: SocketAddr) {
        if let Ok(mut f) = self.forwards.lock() {
            f.insert((namespace.to_string(), pod.to_string(), port), to);
        }
    }

    /// Every request target so far (path and query, percent-decoded).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A kubeconfig whose current context is this server, in `namespace`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n\
             contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: {namespace}\n\
             current-context: standin\nusers:\n- name: standin\n  user: {{}}\n",
            self.url()
        )
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request's head.
struct Head {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: HashMap<String, String>,
}

impl Head {
    fn query(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or_default();
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Read one request head; bytes after it stay in `buf`.
async fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Head>> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or("/").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect();
    Ok(Some(Head {
        method,
        path: decode(path),
        query,
        headers,
    }))
}

/// A `Status` object, as the API server sends with every error.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Error",
    }
}

async fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        reason_phrase(code),
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await
}

/// Requests of one connection (HTTP/1.1 keep-alive), until it closes or
/// becomes a watch or a port-forward.
async fn connection(
    mut conn: TcpStream,
    cluster: &Cluster,
    seen: &Mutex<Vec<String>>,
    forwards: &Forwards,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut conn, &mut buf).await? {
        // Bodies (none for the calls served here) are skipped.
        let len: usize = head
            .headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..len);
        let mut target = head.path.clone();
        if !head.query.is_empty() {
            let q: Vec<String> = head.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            target = format!("{target}?{}", q.join("&"));
        }
        if let Ok(mut s) = seen.lock() {
            s.push(target);
        }
        if let Some((code, msg)) = &cluster.refuse {
            let reason = reason_phrase(*code).replace(' ', "");
            respond(&mut conn, *code, &status(*code, &reason, msg)).await?;
            continue;
        }
        let segs: Vec<&str> = head.path.trim_matches('/').split('/').collect();
        match (head.method.as_str(), segs.as_slice()) {
            ("GET", ["api", "v1", "pods"]) => {
                if !pods(&mut conn, cluster, None, &head).await? {
                    return Ok(());
                }
            }
            ("GET", ["api", "v1", "namespaces", ns, "pods"]) => {
                let ns = ns.to_string();
                if !pods(&mut conn, cluster, Some(&ns), &head).await? {
                    return Ok(());
                }
            }
            ("GET", ["api", "v1", "namespaces", ns, "pods", name, "portforward"]) => {
                let (ns, name) = (ns.to_string(), name.to_string());
                return port_forward(conn, cluster, forwards, &ns, &name, &head).await;
            }
            _ => {
                let msg = format!(
                    "the server could not find the requested resource ({})",
                    head.path
                );
                respond(&mut conn, 404, &status(404, "NotFound", &msg)).await?;
            }
        }
    }
    Ok(())
}

/// One selector term.
enum Term {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// Split at commas outside parentheses.
fn terms(sel: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in sel.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(sel[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(sel[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

fn parse_selector(sel: &str) -> Result<Vec<Term>, String> {
    let set = |v: &str| -> Result<Vec<String>, String> {
        let v = v.trim();
        let inner = v
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(|| format!("unable to parse requirement: {v}"))?;
        Ok(inner.split(',').map(|s| s.trim().to_string()).collect())
    };
    terms(sel)
        .into_iter()
        .map(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                return Ok(Term::Ne(k.trim().into(), v.trim().into()));
            }
            if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                return Ok(Term::Eq(k.trim().into(), v.trim().into()));
            }
            if let Some((k, v)) = t.split_once(" notin ") {
                return Ok(Term::NotIn(k.trim().into(), set(v)?));
            }
            if let Some((k, v)) = t.split_once(" in ") {
                return Ok(Term::In(k.trim().into(), set(v)?));
            }
            if let Some(k) = t.strip_prefix('!') {
                return Ok(Term::Absent(k.trim().into()));
            }
            if t.contains(char::is_whitespace) {
                return Err(format!("unable to parse requirement: {t}"));
            }
            Ok(Term::Exists(t.into()))
        })
        .collect()
}

fn matches(terms: &[Term], get: impl Fn(&str) -> Option<String>) -> bool {
    terms.iter().all(|t| match t {
        Term::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
        Term::Ne(k, v) => get(k).as_deref() != Some(v.as_str()),
        Term::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
        Term::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
        Term::Exists(k) => get(k).is_some(),
        Term::Absent(k) => get(k).is_none(),
    })
}

/// The pod fields the API server lets a field selector use.
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
];

fn field(pod: &Value, name: &str) -> Option<String> {
    let v = match name {
        "metadata.name" => &pod["metadata"]["name"],
        "metadata.namespace" => &pod["metadata"]["namespace"],
        "spec.nodeName" => &pod["spec"]["nodeName"],
        "status.phase" => &pod["status"]["phase"],
        _ => return None,
    };
    // An unset field compares as the empty string, as the API server's does.
    Some(v.as_str().unwrap_or_default().to_string())
}

/// The selection a list or watch asks for, or the API server's 400.
type PodFilter = Box<dyn Fn(&Value) -> bool + Send>;

fn pod_filter(ns: Option<&str>, head: &Head) -> Result<PodFilter, Value> {
    let bad = |m: String| status(400, "BadRequest", &m);
    let labels = parse_selector(head.query("labelSelector").unwrap_or_default()).map_err(bad)?;
    let fields = parse_selector(head.query("fieldSelector").unwrap_or_default()).map_err(bad)?;
    for t in &fields {
        let (Term::Eq(k, _) | Term::Ne(k, _)) = t else {
            return Err(bad("field selectors take only =, == and !=".into()));
        };
        if !POD_FIELDS.contains(&k.as_str()) {
            return Err(bad(format!("field label not supported: {k}")));
        }
    }
    let ns = ns.map(str::to_string);
    Ok(Box::new(move |p: &Value| {
        let in_ns = ns
            .as_deref()
            .is_none_or(|n| p["metadata"]["namespace"].as_str() == Some(n));
        let label = |k: &str| p["metadata"]["labels"][k].as_str().map(str::to_string);
        in_ns && matches(&labels, label) && matches(&fields, |k| field(p, k))
    }))
}

/// A list or a watch of pods; false when the connection is done (a watch).
async fn pods(
    conn: &mut TcpStream,
    cluster: &Cluster,
    ns: Option<&str>,
    head: &Head,
) -> std::io::Result<bool> {
    let keep = match pod_filter(ns, head) {
        Ok(f) => f,
        Err(st) => {
            respond(conn, 400, &st).await?;
            return Ok(true);
        }
    };
    if matches!(head.query("watch"), Some("1" | "true")) {
        let mut body = String::new();
        for line in cluster.watch.as_deref().unwrap_or_default().lines() {
            let Ok(ev) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if keep(&ev["object"]) {
                body.push_str(&ev.to_string());
                body.push('\n');
            }
        }
        let mut resp = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        if !body.is_empty() {
            resp.push_str(&format!("{:x}\r\n{body}\r\n", body.len()));
        }
        conn.write_all(resp.as_bytes()).await?;
        // The watch stays open until the client goes.
        let mut sink = [0u8; 1024];
        while conn.read(&mut sink).await? > 0 {}
        return Ok(false);
    }
    let items: Vec<Value> = cluster.pods["items"]
        .as_array()
        .map(|v| v.iter().filter(|p| keep(p)).cloned().collect())
        .unwrap_or_default();
    let list = json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {
            "resourceVersion": cluster.pods["metadata"]["resourceVersion"],
        },
        "items": items,
    });
    respond(conn, 200, &list).await?;
    Ok(true)
}

fn pod_of<'a>(cluster: &'a Cluster, ns: &str, name: &str) -> Option<&'a Value> {
    cluster.pods["items"].as_array()?.iter().find(|p| {
        p["metadata"]["namespace"].as_str() == Some(ns)
            && p["metadata"]["name"].as_str() == Some(name)
    })
}

const V4: &str = "v4.channel.k8s.io";

async fn port_forward(
    mut conn: TcpStream,
    cluster: &Cluster,
    forwards: &Forwards,
    ns: &str,
    name: &str,
    head: &Head,
) -> std::io::Result<()> {
    let Some(pod) = pod_of(cluster, ns, name) else {
        let msg = format!("pods \"{name}\" not found");
        return respond(&mut conn, 404, &status(404, "NotFound", &msg)).await;
    };
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ports: Vec<u16> = match head
        .query("ports")
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().parse::<u16>())
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let st = status(400, "BadRequest", "query parameter \"ports\" is required");
            return respond(&mut conn, 400, &st).await;
        }
    };
    let offered = head
        .headers
        .get("sec-websocket-protocol")
        .is_some_and(|p| p.split(',').any(|x| x.trim() == V4));
    let (Some(key), true) = (head.headers.get("sec-websocket-key"), offered) else {
        let st = status(
            400,
            "BadRequest",
            "a WebSocket upgrade with v4.channel.k8s.io is required",
        );
        return respond(&mut conn, 400, &st).await;
    };
    let accept = ws::handshake::derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {V4}\r\n\r\n"
    );
    conn.write_all(resp.as_bytes()).await?;
    let wsock = WebSocketStream::from_raw_socket(conn, Role::Server, None).await;
    let upstreams = {
        let f = forwards.lock().map(|f| f.clone()).unwrap_or_default();
        ports
            .iter()
            .map(|p| f.get(&(ns.to_string(), name.to_string(), *p)).copied())
            .collect()
    };
    forward_channels(wsock, &ports, upstreams, &uid).await;
    Ok(())
}

/// After our Close, read until the client's Close (RFC 6455's closing
/// handshake), so everything sent before it is read by the client before
/// the connection goes.
async fn closing_handshake<S>(stream: &mut futures_util::stream::SplitStream<WebSocketStream<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let drain = async {
        while let Some(Ok(m)) = stream.next().await {
            if m.is_close() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

/// Frames of one channel: its number, then the data.
fn frame(channel: u8, data: &[u8]) -> ws::Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    ws::Message::binary(v)
}

async fn forward_channels<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    wsock: WebSocketStream<S>,
    ports: &[u16],
    upstreams: Vec<Option<SocketAddr>>,
    uid: &str,
) {
    let (mut sink, mut stream) = wsock.split();
    // Each port's data and error channels open with the port number.
    for (i, p) in ports.iter().enumerate() {
        for ch in [2 * i as u8, 2 * i as u8 + 1] {
            if sink.send(frame(ch, &p.to_le_bytes())).await.is_err() {
                return;
            }
        }
    }
    let (to_ws, mut from_pods) = tokio::sync::mpsc::channel::<ws::Message>(64);
    let mut writers = Vec::new();
    for (i, (port, up)) in ports.iter().zip(upstreams).enumerate() {
        let conn = match up {
            Some(a) => TcpStream::connect(a).await.ok(),
            None => None,
        };
        let Some(conn) = conn else {
            // The kubelet's words when nothing listens on the pod's port.
            let msg = format!(
                "error forwarding port {port} to pod {uid}, uid : failed to execute portforward in \
                 network namespace: failed to connect to localhost:{port} inside namespace, IPv4: \
                 dial tcp4 127.0.0.1:{port}: connect: connection refused"
            );
            let _ = sink.send(frame(2 * i as u8 + 1, msg.as_bytes())).await;
            let _ = sink.send(ws::Message::Close(None)).await;
            closing_handshake(&mut stream).await;
            return;
        };
        let (mut r, w) = conn.into_split();
        writers.push(w);
        let to_ws = to_ws.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to_ws.send(frame(2 * i as u8, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // The pod closed its end: so does the stream.
            let _ = to_ws.send(ws::Message::Close(None)).await;
        });
    }
    drop(to_ws);
    loop {
        tokio::select! {
            m = from_pods.recv() => {
                let Some(m) = m else { break };
                let close = m.is_close();
                if sink.send(m).await.is_err() {
                    break;
                }
                if close {
                    closing_handshake(&mut stream).await;
                    break;
                }
            }
            m = stream.next() => {
                let Some(Ok(m)) = m else { break };
                match m {
                    ws::Message::Binary(b) if b.len() > 1 => {
                        let ch = b[0] as usize;
                        // Only data channels carry bytes towards the pod.
                        if ch.is_multiple_of(2) {
                            if let Some(w) = writers.get_mut(ch / 2) {
                                if w.write_all(&b[1..]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    m if m.is_close() => break,
                    _ => {}
                }
            }
        }
    }
    for mut w in writers {
        let _ = w.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, node: &str, labels: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name, "labels": labels},
               "spec": {"nodeName": node}, "status": {"phase": "Running"}})
    }

    fn head(q: &[(&str, &str)]) -> Head {
        Head {
            method: "GET".into(),
            path: "/api/v1/pods".into(),
            query: q
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            headers: HashMap::new(),
        }
    }

    #[test]
    fn selectors_filter_as_the_api_server_does() {
        let web = pod(
            "shop",
            "web-1",
            "n1",
            json!({"app": "web", "tier": "front"}),
        );
        let db = pod("shop", "db-0", "n2", json!({"app": "db"}));
        let other = pod("front", "web-2", "n1", json!({"app": "web"}));
        let keep = |ns: Option<&str>, q: &[(&str, &str)]| {
            let f = pod_filter(ns, &head(q)).map_err(|s| s.to_string()).unwrap();
            [&web, &db, &other]
                .iter()
                .filter(|p| f(p))
                .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keep(None, &[("labelSelector", "app=web")]),
            ["web-1", "web-2"]
        );
        assert_eq!(
            keep(Some("shop"), &[("labelSelector", "app==web")]),
            ["web-1"]
        );
        assert_eq!(keep(None, &[("labelSelector", "app!=web")]), ["db-0"]);
        assert_eq!(keep(None, &[("labelSelector", "tier")]), ["web-1"]);
        assert_eq!(
            keep(None, &[("labelSelector", "!tier,app in (web, db)")]),
            ["db-0", "web-2"]
        );
        assert_eq!(
            keep(None, &[("labelSelector", "app notin (web)")]),
            ["db-0"]
        );
        assert_eq!(
            keep(
                None,
                &[("fieldSelector", "spec.nodeName=n1,metadata.name!=web-2")]
            ),
            ["web-1"]
        );
        let e = pod_filter(None, &head(&[("fieldSelector", "spec.hostname=x")]))
            .err()
            .unwrap();
        assert_eq!(e["code"], 400);
        assert_eq!(e["message"], "field label not supported: spec.hostname");
    }

    #[test]
    fn targets_are_decoded() {
        assert_eq!(decode("app%3Dweb%2Ctier%21%3Ddb"), "app=web,tier!=db");
        assert_eq!(decode("a+b%"), "a b%");
    }
}
