//! A client's one connection to an agent: dialled over TCP, a unix socket
//! or a stream opened elsewhere (a port-forward), TLS over it when asked,
//! and watched: when the agent was last heard from, and how the
//! connection ended.

use super::tls::{await_verdict, tls_io_error};
use super::{BoxIo, Dial};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tonic::codegen::Service;
use tonic::transport::Uri;

/// What a client's connection saw of the agent: when it last read from
/// it, and how the connection ended.
#[derive(Debug)]
pub(super) struct Transport {
    pub(super) last_read: std::time::Instant,
    pub(super) ended: Option<String>,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            last_read: std::time::Instant::now(),
            ended: None,
        }
    }
}

pub(super) type Ended = Arc<std::sync::Mutex<Transport>>;

/// Makes a client's one connection (TCP, a unix socket or an opened
/// stream; TLS over it when asked). A tonic channel whose connection broke
/// reconnects as soon as it is polled again: after a refused handshake
/// that is a second attempt the agent counts as a second refusal, and
/// after a lost agent a silent retry. A client here is one connection for
/// one run, so a second attempt fails instead.
#[derive(Clone)]
pub(super) struct OnceConnector {
    pub(super) dial: Dial,
    pub(super) tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub(super) used: Arc<AtomicBool>,
    /// How the connection ended, for the attempt to reconnect to report.
    pub(super) ended: Ended,
}

/// A connection that notes when it last read from the agent and how it
/// ended: its first read or write error, or the peer closing it. HTTP/2 drops the cause when a connection dies
/// under a call that was not sent yet; tonic then reconnects, and the
/// refused second attempt reports the cause noted here.
struct Watched {
    io: BoxIo,
    ended: Ended,
}

impl Watched {
    fn note<T>(&self, r: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(e)) = r {
            if let Ok(mut t) = self.ended.lock() {
                t.ended.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        self.note(&r);
        if matches!(r, Poll::Ready(Ok(()))) {
            if let Ok(mut t) = self.ended.lock() {
                if buf.filled().len() > before {
                    t.last_read = std::time::Instant::now();
                } else if buf.remaining() > 0 {
                    t.ended
                        .get_or_insert_with(|| "the agent closed the connection".into());
                }
            }
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(&r);
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.note(&r);
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Service<Uri> for OnceConnector {
    type Response = TokioIo<BoxIo>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let first = !self.used.swap(true, Ordering::SeqCst);
        let (dial, tls, ended) = (self.dial.clone(), self.tls.clone(), self.ended.clone());
        Box::pin(async move {
            if !first {
                let why = ended.lock().ok().and_then(|t| t.ended.clone());
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    match why {
                        Some(why) => format!("the connection to the agent is gone: {why}"),
                        None => "the connection to the agent is gone".to_string(),
                    },
                ));
            }
            let raw: BoxIo = match &dial {
                Dial::Tcp(addr) => {
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    Box::new(tcp)
                }
                Dial::Unix(path) => Box::new(UnixStream::connect(path).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("unix socket {}: {e}", path.display()))
                })?),
                Dial::Stream(open) => open().await?,
            };
            let raw: BoxIo = Box::new(Watched { io: raw, ended });
            let Some((cfg, name)) = tls else {
                return Ok(TokioIo::new(raw));
            };
            let connector = tokio_rustls::TlsConnector::from(cfg);
            // TLS 1.2: a refusal comes inside the handshake.
            let s = connector.connect(name, raw).await.map_err(tls_io_error)?;
            let s = await_verdict(s).await?;
            Ok(TokioIo::new(Box::new(s) as BoxIo))
        })
    }
}
