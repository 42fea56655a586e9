//! TLS towards an agent: the rustls client configuration (the agents' CA,
//! our certificate, the name to check), and waiting for the agent's
//! verdict on our certificate so a refusal is reported as one.

use super::{no_server_name, ClientTls, Dial, Io, Target};
use crate::error::{AgentError, Result};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, Error as TlsError, RootCertStore};

/// The rustls client side: the agents' CA, our certificate if any, h2,
/// and the name the agent's certificate must carry.
pub(super) fn client_tls(
    t: &Target,
    tls: &ClientTls,
) -> Result<(Arc<ClientConfig>, ServerName<'static>)> {
    use crate::auth::{pem_certs as certs, pem_key, tls_bad as bad};
    let read = |what: &'static str, p: &PathBuf| {
        std::fs::read(p).map_err(|source| AgentError::ReadFile {
            what,
            path: p.clone(),
            source,
        })
    };
    let host = match (&tls.server_name, &t.dial) {
        (Some(n), _) => n.clone(),
        (None, Dial::Tcp(addr)) => addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        (None, _) => return Err(no_server_name(t)),
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|_| AgentError::TlsConfig(format!("'{host}' is not a TLS server name")))?;
    let mut roots = RootCertStore::empty();
    for c in certs(&read("CA certificate", &tls.ca)?, "CA certificate")? {
        roots.add(c).map_err(|e| bad("CA certificate", &e))?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let b = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_root_certificates(roots);
    let mut cfg = match &tls.identity {
        Some((cert, key)) => {
            let chain = certs(&read("client certificate", cert)?, "client certificate")?;
            let key = pem_key(&read("client key", key)?, "client key")?;
            b.with_client_auth_cert(chain, key)
                .map_err(|e| bad("client certificate and key", &e))?
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(cfg), name))
}

/// The agent refused our credentials during the TLS handshake.
#[derive(Debug)]
pub(super) struct Refused(pub String);

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

/// A TLS error as an io::Error, a refusal recognisable as such.
pub(super) fn tls_io_error(e: io::Error) -> io::Error {
    let refused = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<TlsError>())
        .and_then(refusal);
    match refused {
        Some(r) => io::Error::new(io::ErrorKind::PermissionDenied, r),
        None => e,
    }
}

/// A stream whose first bytes were already read: they are handed out
/// again before the rest.
pub(super) struct Replay<S> {
    head: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.at);
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// With TLS 1.3 the client finishes its handshake before the agent has
/// checked the client's certificate; the verdict is the agent's next
/// record: an alert, or its first data (HTTP/2 settings, which an HTTP/2
/// server sends first). Wait for it, so a refusal is reported as such
/// instead of as a broken connection; the data read is replayed to the
/// HTTP/2 layer.
pub(super) async fn await_verdict<S: Io>(mut tls: S) -> io::Result<Replay<S>> {
    let mut head = vec![0u8; 16 << 10];
    let n = tls.read(&mut head).await.map_err(tls_io_error)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the agent closed the connection after the TLS handshake",
        ));
    }
    head.truncate(n);
    Ok(Replay {
        head,
        at: 0,
        inner: tls,
    })
}
