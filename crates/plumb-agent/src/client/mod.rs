//! The other end of the API: connect to one or many agents (over TCP, a
//! unix socket, or a stream someone else opens, such as a Kubernetes
//! port-forward), run a gadget or a profile on each at once and merge
//! their answers. Every wait has a deadline and every connection is
//! watched with HTTP/2 pings, so a node that fails, hangs or stalls is
//! reported as such while the others go on.

pub mod bpftrace;
pub mod capture;
mod connector;
mod tls;

use crate::auth::Token;
use crate::error::{AgentError, Result};
use crate::proto::agent_client::AgentClient;
use crate::proto::{trace_message::Kind, PodRef, TraceRequest};
use connector::{Ended, OnceConnector};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tls::{client_tls, Refused};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
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
    /// The name the agents' certificates are checked against; by default
    /// the host of a `HOST:PORT` address (a unix socket or a port-forward
    /// has none, so it must be given).
    pub server_name: Option<String>,
}

/// How long to wait for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Opening the connection (TCP or port-forward, and TLS).
    pub connect: Duration,
    /// A one-shot call (the gadget list), a gadget's start (until it is
    /// attached), and the margin allowed on top of a profile's or a timed
    /// trace's own duration.
    pub call: Duration,
    /// A connection whose HTTP/2 pings stay unanswered this long is dead:
    /// how a stream from a hung agent is noticed while its gadget is quiet.
    pub stall: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            connect: Duration::from_secs(5),
            call: Duration::from_secs(30),
            stall: Duration::from_secs(20),
        }
    }
}

/// A byte stream to an agent.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub type BoxIo = Box<dyn Io>;
pub type OpenFuture = Pin<Box<dyn Future<Output = io::Result<BoxIo>> + Send>>;

/// How to reach one agent.
#[derive(Clone)]
pub enum Dial {
    /// `HOST:PORT`.
    Tcp(String),
    /// `unix:PATH` (the agent's default listener).
    Unix(PathBuf),
    /// A stream opened by someone else, once per connection (a Kubernetes
    /// port-forward).
    Stream(Arc<dyn Fn() -> OpenFuture + Send + Sync>),
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dial::Tcp(a) => write!(f, "Tcp({a})"),
            Dial::Unix(p) => write!(f, "Unix({})", p.display()),
            Dial::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// One agent to ask.
#[derive(Debug, Clone)]
pub struct Target {
    pub dial: Dial,
    /// How messages name it: `agent 10.0.0.1:7979`, or
    /// `node worker-2 (agent pod plumb/plumb-agent-x7k2p)`.
    pub who: String,
    /// What follows the node's name in progress lines: `10.0.0.1:7979`,
    /// `agent pod plumb/plumb-agent-x7k2p`.
    pub via: String,
    /// The node, when known before asking.
    pub node: Option<String>,
    /// The selected pods on this node (`kubectl plumb -l`); empty: all.
    pub pods: Vec<PodRef>,
}

impl Target {
    /// `HOST:PORT` or `unix:PATH`, as `plumb remote --agents` takes them.
    pub fn parse(addr: &str) -> Result<Target> {
        let dial = match addr.strip_prefix("unix:") {
            Some("") => return Err(AgentError::BadAddress(addr.to_string())),
            Some(p) => Dial::Unix(PathBuf::from(p)),
            None => {
                // The same check tonic makes of the URI, early and in one line.
                let ok = addr
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok || Endpoint::from_shared(format!("http://{addr}")).is_err() {
                    return Err(AgentError::BadAddress(addr.to_string()));
                }
                Dial::Tcp(addr.to_string())
            }
        };
        Ok(Target {
            dial,
            who: format!("agent {addr}"),
            via: addr.to_string(),
            node: None,
            pods: Vec::new(),
        })
    }

    /// The node's name for messages: known in advance, learnt from the
    /// agent, or the agent's address.
    pub fn node_or_via(&self) -> &str {
        self.node.as_deref().unwrap_or(&self.via)
    }
}

/// With TLS, every target must have a name to check the agent's
/// certificate against: a unix socket or a port-forward has no host, so
/// `--tls-server-name` is needed. Checked before anything is dialled.
pub fn check_tls_names(targets: &[Target], auth: &ClientAuth) -> Result<()> {
    let Some(tls) = &auth.tls else { return Ok(()) };
    if tls.server_name.is_some() {
        return Ok(());
    }
    match targets.iter().find(|t| !matches!(t.dial, Dial::Tcp(_))) {
        Some(t) => Err(no_server_name(t)),
        None => Ok(()),
    }
}

pub(super) fn no_server_name(t: &Target) -> AgentError {
    AgentError::TlsConfig(format!(
        "{} has no host name to check its certificate against: give --tls-server-name",
        t.who
    ))
}

type Authed = Box<dyn FnMut(Request<()>) -> std::result::Result<Request<()>, Status> + Send + Sync>;
pub type Client = AgentClient<InterceptedService<Channel, Authed>>;

/// Profiles are one message; a busy node's can be large.
const MAX_MESSAGE: usize = 256 << 20;

/// Connect to the agent `t`.
pub async fn connect(t: &Target, auth: &ClientAuth, d: Deadlines) -> Result<Client> {
    Ok(connect_noting(t, auth, d).await?.0)
}

/// [`connect`], and where the connection notes how it ended.
async fn connect_noting(t: &Target, auth: &ClientAuth, d: Deadlines) -> Result<(Client, Ended)> {
    let uri = match &t.dial {
        Dial::Tcp(a) => format!("http://{a}"),
        // The authority is only a header here; the connector decides.
        Dial::Unix(_) | Dial::Stream(_) => "http://plumb-agent".to_string(),
    };
    let ep = Endpoint::from_shared(uri)
        .map_err(|_| AgentError::BadAddress(t.via.clone()))?
        .connect_timeout(d.connect)
        // A peer that stops answering pings is dead, even mid-stream and
        // with a quiet gadget: half the stall time between pings, half
        // waiting for the answer.
        .http2_keep_alive_interval(d.stall / 2)
        .keep_alive_timeout(d.stall / 2)
        .keep_alive_while_idle(true);
    let tls = match &auth.tls {
        Some(tls) => Some(client_tls(t, tls)?),
        None => None,
    };
    let ended = Ended::default();
    let once = OnceConnector {
        dial: t.dial.clone(),
        tls,
        used: Arc::new(AtomicBool::new(false)),
        ended: ended.clone(),
    };
    let channel = match ep.connect_with_connector(once).await {
        Ok(c) => c,
        Err(e) => {
            // The agent refused our certificate: an authentication failure.
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(x) = cur {
                let refused = x
                    .downcast_ref::<io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|i| i.downcast_ref::<Refused>());
                if let Some(r) = refused {
                    return Err(AgentError::Remote {
                        who: t.who.clone(),
                        status: Status::unauthenticated(r.0.clone()),
                    });
                }
                cur = x.source();
            }
            return Err(AgentError::Connect {
                who: t.who.clone(),
                source: e,
            });
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
    let client = AgentClient::with_interceptor(channel, add).max_decoding_message_size(MAX_MESSAGE);
    Ok((client, ended))
}

/// A failed call. A connection whose pings went unanswered is reported as
/// stalled; when the connection itself failed otherwise (the status has a
/// cause: a reset, a TLS error, a port-forward error) the causes go into
/// the message, with how the transport saw the connection end, since
/// "transport error" alone tells the user nothing.
fn remote_error(who: &str, status: Status, d: Deadlines, ended: &Ended) -> AgentError {
    let (silent, why) = ended
        .lock()
        .map(|t| (t.last_read.elapsed(), t.ended.clone()))
        .unwrap_or_default();
    // The agent answers a ping within half the stall time (pings go out
    // after the other half of silence); a connection that dies after
    // three quarters of it without a byte from the agent died of the
    // unanswered pings (h2 reports that only as a closed stream).
    if std::error::Error::source(&status).is_some() && silent >= d.stall * 3 / 4 {
        return AgentError::Stalled {
            who: who.to_string(),
            after: d.stall,
        };
    }
    let mut cur = std::error::Error::source(&status);
    while let Some(c) = cur {
        if c.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_timeout())
        {
            return AgentError::Stalled {
                who: who.to_string(),
                after: d.stall,
            };
        }
        cur = c.source();
    }
    // The socket ended under the call (the agent died, or its node): that
    // is the whole story; h2's chain of closed streams adds nothing.
    if let (Some(_), Some(why)) = (std::error::Error::source(&status), &why) {
        return AgentError::Lost {
            who: who.to_string(),
            why: why.clone(),
        };
    }
    let status = match std::error::Error::source(&status) {
        Some(cause) => {
            let mut msg = format!("{}: {}", status.message(), crate::error::chain(cause));
            if let Some(why) = why {
                if !msg.contains(&why) {
                    msg = format!("{msg}: {why}");
                }
            }
            Status::new(status.code(), msg)
        }
        None => status,
    };
    AgentError::Remote {
        who: who.to_string(),
        status,
    }
}

/// `f`, or NotAnswering once `after` has passed.
async fn within<T>(
    who: &str,
    what: &'static str,
    after: Duration,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(after, f)
        .await
        .map_err(|_| AgentError::NotAnswering {
            who: who.to_string(),
            what,
            after,
        })?
}

/// One item of a merged fan-out stream; `target` is the index of the
/// agent in the list given to [`fan_out`].
#[derive(Debug, Clone, PartialEq)]
pub enum FanItem {
    /// The gadget runs on this node.
    Ready {
        target: usize,
        node: String,
        prog_ids: Vec<u32>,
    },
    /// An event (its JSON object carries `node`).
    Event {
        target: usize,
        event: serde_json::Value,
    },
    Lost {
        target: usize,
        gadget: String,
        count: u64,
    },
    /// This node finished normally.
    Done { target: usize, seen: u64, lost: u64 },
    /// This node failed, hung or went away; the others go on.
    Failed { target: usize, error: String },
}

/// Run `req` on every target at once (each with its own pod selection);
/// items arrive as they come. Dropping the receiver cancels the calls,
/// which stops the gadgets.
pub fn fan_out(
    targets: &[Target],
    auth: &ClientAuth,
    req: TraceRequest,
    d: Deadlines,
) -> mpsc::Receiver<FanItem> {
    let (tx, rx) = mpsc::channel(1024);
    for (i, t) in targets.iter().enumerate() {
        let (tx, auth, t) = (tx.clone(), auth.clone(), t.clone());
        let mut req = req.clone();
        req.pods = t.pods.clone();
        tokio::spawn(async move {
            if let Err(e) = trace_one(i, &t, &auth, req, d, &tx).await {
                let _ = tx
                    .send(FanItem::Failed {
                        target: i,
                        error: crate::error::chain(&e),
                    })
                    .await;
            }
        });
    }
    rx
}

async fn trace_one(
    i: usize,
    t: &Target,
    auth: &ClientAuth,
    req: TraceRequest,
    d: Deadlines,
    tx: &mpsc::Sender<FanItem>,
) -> Result<()> {
    let (mut client, ended) = connect_noting(t, auth, d).await?;
    let remote = |status| remote_error(&t.who, status, d, &ended);
    // A timed run must end within its duration and the margin.
    let end = (req.duration_ms > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_millis(req.duration_ms) + d.call);
    // The agent answers once the gadget is attached (or failed).
    let mut stream = within(&t.who, "starting the gadget", d.call, async {
        Ok(client.trace(req).await.map_err(remote)?.into_inner())
    })
    .await?;
    let mut ready = false;
    loop {
        let next = stream.message();
        let msg = match (ready, end) {
            (false, _) => {
                within(&t.who, "starting the gadget", d.call, async {
                    next.await.map_err(remote)
                })
                .await?
            }
            (true, Some(end)) => {
                let left = end.saturating_duration_since(tokio::time::Instant::now());
                within(&t.who, "finishing the run", left, async {
                    next.await.map_err(remote)
                })
                .await?
            }
            (true, None) => next.await.map_err(remote)?,
        };
        let Some(msg) = msg else {
            return Err(AgentError::Internal(format!(
                "{}: ended the stream without finishing the run",
                t.who
            )));
        };
        let item = match msg.kind {
            Some(Kind::Ready(r)) => {
                ready = true;
                FanItem::Ready {
                    target: i,
                    node: r.node,
                    prog_ids: r.prog_ids,
                }
            }
            Some(Kind::EventJson(b)) => match serde_json::from_slice(&b) {
                Ok(event) => FanItem::Event { target: i, event },
                Err(e) => FanItem::Failed {
                    target: i,
                    error: format!("{}: sent an event that is not JSON: {e}", t.who),
                },
            },
            Some(Kind::Lost(l)) => FanItem::Lost {
                target: i,
                gadget: l.gadget,
                count: l.count,
            },
            Some(Kind::Done(done)) => {
                let _ = tx
                    .send(FanItem::Done {
                        target: i,
                        seen: done.seen,
                        lost: done.lost,
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

/// The gadgets the agent `t` can run.
pub async fn list_gadgets(
    t: &Target,
    auth: &ClientAuth,
    d: Deadlines,
) -> Result<crate::proto::ListGadgetsResponse> {
    let (mut client, ended) = connect_noting(t, auth, d).await?;
    let req = Request::new(crate::proto::ListGadgetsRequest {});
    within(&t.who, "listing its gadgets", d.call, async {
        let resp = client
            .list_gadgets(req)
            .await
            .map_err(|status| remote_error(&t.who, status, d, &ended))?;
        Ok(resp.into_inner())
    })
    .await
}

/// A CPU profile from the agent `t`, as plumb-profile's type (see
/// `profile_wire`); `req.pods` is set from the target.
pub async fn profile(
    t: &Target,
    auth: &ClientAuth,
    d: Deadlines,
    mut req: crate::proto::ProfileRequest,
) -> Result<plumb_profile::Profile> {
    req.pods = t.pods.clone();
    // Sampling, then reading and symbolizing the stacks.
    let deadline = Duration::from_millis(req.duration_ms) + d.call;
    let (mut client, ended) = connect_noting(t, auth, d).await?;
    let mut call = Request::new(req);
    // The agent stops sampling when the client's deadline has passed
    // (tonic enforces it on both ends; ours reports it, a moment before).
    call.set_timeout(deadline + Duration::from_secs(1));
    let resp = within(&t.who, "the profile", deadline, async {
        let resp = client
            .profile(call)
            .await
            .map_err(|status| remote_error(&t.who, status, d, &ended))?;
        Ok(resp.into_inner())
    })
    .await?;
    crate::profile_wire::from_response(&resp).map_err(|source| AgentError::BadProfile {
        who: t.who.clone(),
        source,
    })
}

/// One item of the merged log streams of several agents.
#[derive(Debug, Clone, PartialEq)]
pub enum LogItem {
    /// The agent `target` (node `node`) streams its log from now on.
    Following { target: usize, node: String },
    Line {
        node: String,
        line: crate::proto::LogLine,
    },
    /// The agent ended the stream (it is shutting down).
    Ended { target: usize, node: String },
    /// This agent failed or went away; the others go on.
    Failed { target: usize, error: String },
}

/// Follow the logs of every target; lines arrive as they come. Dropping
/// the receiver cancels the calls.
pub fn follow_logs(targets: &[Target], auth: &ClientAuth, d: Deadlines) -> mpsc::Receiver<LogItem> {
    let (tx, rx) = mpsc::channel(1024);
    for (i, t) in targets.iter().enumerate() {
        let (tx, auth, t) = (tx.clone(), auth.clone(), t.clone());
        tokio::spawn(async move {
            if let Err(e) = logs_one(i, &t, &auth, d, &tx).await {
                let _ = tx
                    .send(LogItem::Failed {
                        target: i,
                        error: crate::error::chain(&e),
                    })
                    .await;
            }
        });
    }
    rx
}

async fn logs_one(
    i: usize,
    t: &Target,
    auth: &ClientAuth,
    d: Deadlines,
    tx: &mpsc::Sender<LogItem>,
) -> Result<()> {
    let (mut client, ended) = connect_noting(t, auth, d).await?;
    let remote = |status| remote_error(&t.who, status, d, &ended);
    // Log lines do not carry the node: ask for it first.
    let node = within(&t.who, "naming its node", d.call, async {
        Ok(client
            .list_gadgets(crate::proto::ListGadgetsRequest {})
            .await
            .map_err(remote)?
            .into_inner()
            .node)
    })
    .await?;
    // The agent answers once it has subscribed: no line after this is missed.
    let mut stream = within(&t.who, "following its log", d.call, async {
        Ok(client
            .logs(crate::proto::LogsRequest {})
            .await
            .map_err(remote)?
            .into_inner())
    })
    .await?;
    let following = LogItem::Following {
        target: i,
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
    let _ = tx.send(LogItem::Ended { target: i, node }).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_addresses_parse() {
        let t = Target::parse("127.0.0.1:7979").unwrap();
        assert!(matches!(&t.dial, Dial::Tcp(a) if a == "127.0.0.1:7979"));
        assert_eq!(t.who, "agent 127.0.0.1:7979");
        let u = Target::parse("unix:/run/plumb/agent.sock").unwrap();
        assert!(matches!(&u.dial, Dial::Unix(p) if p == &PathBuf::from("/run/plumb/agent.sock")));
        assert_eq!(u.who, "agent unix:/run/plumb/agent.sock");
        for bad in ["unix:", "localhost", "a b:1", ":7979", "host:port"] {
            assert!(
                matches!(Target::parse(bad), Err(AgentError::BadAddress(a)) if a == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_unix_socket_with_tls_needs_a_server_name() {
        let t = Target::parse("unix:/run/plumb/agent.sock").unwrap();
        let tls = ClientTls {
            ca: "/nonexistent/ca.pem".into(),
            identity: None,
            server_name: None,
        };
        let e = client_tls(&t, &tls).unwrap_err();
        assert_eq!(
            e.to_string(),
            "TLS configuration: agent unix:/run/plumb/agent.sock has no host name to check its \
             certificate against: give --tls-server-name"
        );
    }
}
