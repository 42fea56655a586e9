//! The other end of the API: connect to one or many agents (directly, or
//! through a Kubernetes port-forward that ends on a local port), run a
//! gadget on each and merge their streams. A node that fails or cannot be
//! reached is reported as such while the others go on.

use crate::auth::Token;
use crate::error::{AgentError, Result};
use crate::proto::agent_client::AgentClient;
use crate::proto::{trace_message::Kind, TraceRequest};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, Error as TlsError, RootCertStore};
use tonic::codegen::Service;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Uri;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Credentials a client presents.
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    pub token: Option<Token>,
    pub tls: Option<ClientTls>,
}

/// TLS towards the agents.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA that signed the agents' certificates.
    pub ca: PathBuf,
    /// This client's certificate and key (mutual TLS); without them the
    /// agent is verified but the client shows no certificate.
    pub identity: Option<(PathBuf, PathBuf)>,
}

type Authed = Box<dyn FnMut(Request<()>) -> std::result::Result<Request<()>, Status> + Send + Sync>;
pub type Client = AgentClient<InterceptedService<Channel, Authed>>;

/// Connect to the agent at `addr` (`HOST:PORT`).
pub async fn connect(addr: &str, auth: &ClientAuth, timeout: Duration) -> Result<Client> {
    let connect_err = |source| AgentError::Connect {
        addr: addr.to_string(),
        source,
    };
    // TLS, when asked for, is done by the connector below, not by tonic.
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| AgentError::BadAddress(addr.to_string()))?
        .connect_timeout(timeout);
    let tls = match &auth.tls {
        Some(t) => Some(client_tls(addr, t)?),
        None => None,
    };
    let once = OnceConnector {
        addr: addr.to_string(),
        tls,
        used: Arc::new(AtomicBool::new(false)),
    };
    let channel = match ep.connect_with_connector(once).await {
        Ok(c) => c,
        Err(e) => {
            // The agent refused our certificate: an authentication failure.
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(x) = cur {
                let refused = x
                    .downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|i| i.downcast_ref::<Refused>());
                if let Some(r) = refused {
                    return Err(AgentError::Remote {
                        addr: addr.to_string(),
                        status: Status::unauthenticated(r.0.clone()),
                    });
                }
                cur = x.source();
            }
            return Err(connect_err(e));
        }
    };
    let header = auth
        .token
        .as_ref()
        .map(|t| {
            format!("Bearer {}", t.as_str())
                .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
        })
        .transpose()
        .map_err(|_| AgentError::Internal("the token is not a valid header value".into()))?;
    let add: Authed = Box::new(move |mut req: Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    });
    Ok(AgentClient::with_interceptor(channel, add))
}

/// A failed call. When the connection itself failed (the status has a
/// cause: a reset, a TLS error) the cause goes into the message, since
/// "transport error" alone tells the user nothing.
fn remote_error(addr: &str, status: Status) -> AgentError {
    let status = match std::error::Error::source(&status) {
        Some(cause) => Status::new(
            status.code(),
            format!("{}: {}", status.message(), crate::session::chain(cause)),
        ),
        None => status,
    };
    AgentError::Remote {
        addr: addr.to_string(),
        status,
    }
}

/// The rustls client side: the agents' CA, our certificate if any, h2.
fn client_tls(addr: &str, t: &ClientTls) -> Result<(Arc<ClientConfig>, ServerName<'static>)> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |what: &'static str, p: &PathBuf| {
        std::fs::read(p).map_err(|source| AgentError::ReadFile {
            what,
            path: p.clone(),
            source,
        })
    };
    let bad = |what: &str, e: &dyn std::fmt::Display| AgentError::TlsConfig(format!("{what}: {e}"));
    let certs = |pem: &[u8], what: &str| -> Result<Vec<CertificateDer<'static>>> {
        let v = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(what, &e))?;
        if v.is_empty() {
            return Err(bad(what, &"no PEM certificate in it"));
        }
        Ok(v)
    };
    let mut roots = RootCertStore::empty();
    for c in certs(&read("CA certificate", &t.ca)?, "CA certificate")? {
        roots.add(c).map_err(|e| bad("CA certificate", &e))?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let b = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_root_certificates(roots);
    let mut cfg = match &t.identity {
        Some((cert, key)) => {
            let chain = certs(&read("client certificate", cert)?, "client certificate")?;
            let key = PrivateKeyDer::from_pem_slice(&read("client key", key)?)
                .map_err(|e| bad("client key", &e))?;
            b.with_client_auth_cert(chain, key)
                .map_err(|e| bad("client certificate and key", &e))?
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| AgentError::BadAddress(addr.to_string()))?;
    Ok((Arc::new(cfg), name))
}

/// The agent refused our credentials during the TLS handshake.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refusal(e: &TlsError) -> Option<Refused> {
    use tokio_rustls::rustls::AlertDescription as A;
    let TlsError::AlertReceived(a) = e else {
        return None;
    };
    Some(Refused(match a {
        A::CertificateRequired => {
            "this agent requires a client certificate (give --tls-cert and --tls-key)".into()
        }
        A::UnknownCA
        | A::BadCertificate
        | A::CertificateUnknown
        | A::CertificateExpired
        | A::CertificateRevoked
        | A::UnsupportedCertificate
        | A::AccessDenied => format!(
            "this agent refused our client certificate (TLS alert {a:?}: is it signed by the agent's client CA?)"
        ),
        _ => return None,
    }))
}

/// With TLS 1.3 the client finishes its handshake before the agent has
/// checked the client's certificate; the verdict is the agent's next
/// record: an alert, or its first data (HTTP/2 settings). Wait for it, so
/// a refusal is reported as such instead of as a broken connection. The
/// data read stays buffered in the TLS session for the HTTP/2 layer.
async fn await_verdict(tls: &mut TlsStream<TcpStream>) -> std::io::Result<()> {
    struct TryRead<'a>(&'a TcpStream);
    impl std::io::Read for TryRead<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.try_read(buf)
        }
    }
    loop {
        let (tcp, conn) = tls.get_mut();
        let state = conn.process_new_packets().map_err(to_io)?;
        if state.plaintext_bytes_to_read() > 0 {
            return Ok(());
        }
        tcp.readable().await?;
        match conn.read_tls(&mut TryRead(tcp)) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the agent closed the connection after the TLS handshake",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

fn to_io(e: TlsError) -> std::io::Error {
    match refusal(&e) {
        Some(r) => std::io::Error::new(std::io::ErrorKind::PermissionDenied, r),
        None => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    }
}

/// Makes a client's one connection (TCP, or TLS over it). A tonic channel
/// whose connection broke reconnects as soon as it is polled again: after a
/// refused handshake that is a second attempt the agent counts as a second
/// refusal, and after a lost agent a silent retry. A client here is one
/// connection for one run, so a second attempt fails instead.
#[derive(Clone)]
struct OnceConnector {
    addr: String,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    used: Arc<AtomicBool>,
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

impl Service<Uri> for OnceConnector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let first = !self.used.swap(true, Ordering::SeqCst);
        let (addr, tls) = (self.addr.clone(), self.tls.clone());
        Box::pin(async move {
            if !first {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the connection to the agent is gone",
                ));
            }
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let Some((cfg, name)) = tls else {
                return Ok(TokioIo::new(Box::new(tcp) as Box<dyn Io>));
            };
            let connector = tokio_rustls::TlsConnector::from(cfg);
            let mut s = connector.connect(name, tcp).await.map_err(|e| {
                // TLS 1.2: the refusal comes inside the handshake.
                let refused = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<TlsError>())
                    .and_then(refusal);
                match refused {
                    Some(r) => std::io::Error::new(std::io::ErrorKind::PermissionDenied, r),
                    None => e,
                }
            })?;
            await_verdict(&mut s).await?;
            Ok(TokioIo::new(Box::new(s) as Box<dyn Io>))
        })
    }
}

/// One item of a merged fan-out stream.
#[derive(Debug, Clone, PartialEq)]
pub enum FanItem {
    /// The gadget runs on this node.
    Ready {
        addr: String,
        node: String,
        prog_ids: Vec<u32>,
    },
    /// An event (its JSON object carries `node`).
    Event {
        addr: String,
        event: serde_json::Value,
    },
    Lost {
        addr: String,
        gadget: String,
        count: u64,
    },
    /// This node finished normally.
    Done { addr: String, seen: u64, lost: u64 },
    /// This node failed or went away; the others go on.
    Failed { addr: String, error: String },
}

/// Run `req` on every agent in `addrs`; items arrive as they come.
pub fn fan_out(
    addrs: &[String],
    auth: &ClientAuth,
    req: TraceRequest,
    timeout: Duration,
) -> mpsc::Receiver<FanItem> {
    let (tx, rx) = mpsc::channel(1024);
    for addr in addrs {
        let (tx, auth, req, addr) = (tx.clone(), auth.clone(), req.clone(), addr.clone());
        tokio::spawn(async move {
            if let Err(e) = trace_one(&addr, &auth, req, timeout, &tx).await {
                let _ = tx
                    .send(FanItem::Failed {
                        addr: addr.clone(),
                        error: crate::session::chain(&e),
                    })
                    .await;
            }
        });
    }
    rx
}

async fn trace_one(
    addr: &str,
    auth: &ClientAuth,
    req: TraceRequest,
    timeout: Duration,
    tx: &mpsc::Sender<FanItem>,
) -> Result<()> {
    let remote = |status| remote_error(addr, status);
    let mut client = connect(addr, auth, timeout).await?;
    let mut stream = client.trace(req).await.map_err(remote)?.into_inner();
    let a = addr.to_string();
    loop {
        let msg = match stream.message().await.map_err(remote)? {
            Some(m) => m,
            None => {
                return Err(AgentError::Internal(format!(
                    "agent {addr} ended the stream without finishing the run"
                )))
            }
        };
        let item = match msg.kind {
            Some(Kind::Ready(r)) => FanItem::Ready {
                addr: a.clone(),
                node: r.node,
                prog_ids: r.prog_ids,
            },
            Some(Kind::EventJson(b)) => match serde_json::from_slice(&b) {
                Ok(event) => FanItem::Event {
                    addr: a.clone(),
                    event,
                },
                Err(e) => FanItem::Failed {
                    addr: a.clone(),
                    error: format!("agent {addr} sent an event that is not JSON: {e}"),
                },
            },
            Some(Kind::Lost(l)) => FanItem::Lost {
                addr: a.clone(),
                gadget: l.gadget,
                count: l.count,
            },
            Some(Kind::Done(d)) => {
                let _ = tx
                    .send(FanItem::Done {
                        addr: a.clone(),
                        seen: d.seen,
                        lost: d.lost,
                    })
                    .await;
                return Ok(());
            }
            None => continue,
        };
        if tx.send(item).await.is_err() {
            // The reader is gone: dropping the stream cancels the call,
            // which stops the gadget on the agent.
            return Ok(());
        }
    }
}

/// The gadgets the agent at `addr` can run.
pub async fn list_gadgets(
    addr: &str,
    auth: &ClientAuth,
    timeout: Duration,
) -> Result<crate::proto::ListGadgetsResponse> {
    let mut client = connect(addr, auth, timeout).await?;
    let resp = client
        .list_gadgets(crate::proto::ListGadgetsRequest {})
        .await
        .map_err(|status| remote_error(addr, status))?;
    Ok(resp.into_inner())
}

/// A CPU profile from the agent at `addr`.
pub async fn profile(
    addr: &str,
    auth: &ClientAuth,
    timeout: Duration,
    req: crate::proto::ProfileRequest,
) -> Result<crate::proto::ProfileResponse> {
    let mut client = connect(addr, auth, timeout).await?;
    let resp = client
        .profile(req)
        .await
        .map_err(|status| remote_error(addr, status))?;
    Ok(resp.into_inner())
}

/// One item of the merged log streams of several agents.
#[derive(Debug, Clone, PartialEq)]
pub enum LogItem {
    /// The agent at `addr` (node `node`) streams its log from now on.
    Following { addr: String, node: String },
    Line {
        node: String,
        line: crate::proto::LogLine,
    },
    /// The agent ended the stream (it is shutting down).
    Ended { addr: String, node: String },
    /// This agent failed or went away; the others go on.
    Failed { addr: String, error: String },
}

/// Follow the logs of every agent in `addrs`; lines arrive as they come.
/// Dropping the receiver cancels the calls.
pub fn follow_logs(
    addrs: &[String],
    auth: &ClientAuth,
    timeout: Duration,
) -> mpsc::Receiver<LogItem> {
    let (tx, rx) = mpsc::channel(1024);
    for addr in addrs {
        let (tx, auth, addr) = (tx.clone(), auth.clone(), addr.clone());
        tokio::spawn(async move {
            if let Err(e) = logs_one(&addr, &auth, timeout, &tx).await {
                let _ = tx
                    .send(LogItem::Failed {
                        addr: addr.clone(),
                        error: crate::session::chain(&e),
                    })
                    .await;
            }
        });
    }
    rx
}

async fn logs_one(
    addr: &str,
    auth: &ClientAuth,
    timeout: Duration,
    tx: &mpsc::Sender<LogItem>,
) -> Result<()> {
    let remote = |status| remote_error(addr, status);
    let mut client = connect(addr, auth, timeout).await?;
    // Log lines do not carry the node: ask for it first.
    let node = client
        .list_gadgets(crate::proto::ListGadgetsRequest {})
        .await
        .map_err(remote)?
        .into_inner()
        .node;
    // The agent answers once it has subscribed: no line after this is missed.
    let mut stream = client
        .logs(crate::proto::LogsRequest {})
        .await
        .map_err(remote)?
        .into_inner();
    let following = LogItem::Following {
        addr: addr.to_string(),
        node: node.clone(),
    };
    if tx.send(following).await.is_err() {
        return Ok(());
    }
    while let Some(line) = stream.message().await.map_err(remote)? {
        let item = LogItem::Line {
            node: node.clone(),
            line,
        };
        if tx.send(item).await.is_err() {
            return Ok(());
        }
    }
    let _ = tx
        .send(LogItem::Ended {
            addr: addr.to_string(),
            node,
        })
        .await;
    Ok(())
}
