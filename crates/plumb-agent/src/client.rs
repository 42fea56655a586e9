//! The other end of the API: connect to one or many agents (directly, or
//! through a Kubernetes port-forward that ends on a local port), run a
//! gadget on each and merge their streams. A node that fails or cannot be
//! reached is reported as such while the others go on.

use crate::auth::Token;
use crate::error::{AgentError, Result};
use crate::proto::agent_client::AgentClient;
use crate::proto::{trace_message::Kind, TraceRequest};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
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
    let scheme = if auth.tls.is_some() { "https" } else { "http" };
    let connect_err = |source| AgentError::Connect {
        addr: addr.to_string(),
        source,
    };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|_| AgentError::BadAddress(addr.to_string()))?
        .connect_timeout(timeout);
    if let Some(t) = &auth.tls {
        let read = |what: &'static str, p: &PathBuf| {
            std::fs::read(p).map_err(|source| AgentError::ReadFile {
                what,
                path: p.clone(),
                source,
            })
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("CA certificate", &t.ca)?));
        if let Some((cert, key)) = &t.identity {
            tls = tls.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        ep = ep.tls_config(tls).map_err(connect_err)?;
    }
    let channel = ep.connect().await.map_err(connect_err)?;
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
/// cause) the cause goes into the message, since "transport error" alone
/// tells the user nothing; a TLS alert refusing our certificate becomes an
/// authentication failure, like a wrong token.
fn remote_error(addr: &str, status: Status) -> AgentError {
    let Some(cause) = std::error::Error::source(&status) else {
        return AgentError::Remote {
            addr: addr.to_string(),
            status,
        };
    };
    // The TLS layer reports the alert only as text, deep in the chain.
    let why = crate::session::chain(cause);
    let alert = why.split_once("received fatal alert: ").map(|(_, a)| {
        a.split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
    });
    let status = match alert {
        Some("CertificateRequired") => Status::unauthenticated(
            "this agent requires a client certificate (give --tls-cert and --tls-key)",
        ),
        Some(
            a @ ("UnknownCA" | "BadCertificate" | "CertificateUnknown" | "CertificateExpired"
            | "CertificateRevoked" | "UnsupportedCertificate" | "AccessDenied"),
        ) => Status::unauthenticated(format!(
            "this agent refused our client certificate (TLS alert {a}: is it signed by the agent's client CA?)"
        )),
        _ => Status::new(status.code(), format!("{}: {why}", status.message())),
    };
    AgentError::Remote {
        addr: addr.to_string(),
        status,
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
