//! Who may use the API: a bearer token read from a file, or a client
//! certificate signed by the agent's client CA (checked by the TLS layer
//! during the handshake, which the agent runs itself so that it can count
//! and log the refusals). Refusals are counted for the metrics.

use crate::error::{AgentError, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Status};

/// The secret every call must present as `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// Read a token file; surrounding whitespace (a trailing newline) is
    /// not part of the token.
    pub fn from_file(path: &Path) -> Result<Token> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::ReadFile {
            what: "token file",
            path: path.to_path_buf(),
            source,
        })?;
        let t = text.trim();
        if t.is_empty() {
            return Err(AgentError::EmptyToken(path.to_path_buf()));
        }
        Ok(Token(Arc::from(t)))
    }

    pub fn new(t: &str) -> Token {
        Token(Arc::from(t))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compare without returning early, so the time taken does not tell an
    /// attacker how much of a guess was right.
    pub(crate) fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        let mut diff = (a.len() ^ b.len()) as u8;
        for (i, x) in a.iter().enumerate() {
            diff |= x ^ b.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Refused calls, by cause.
#[derive(Debug, Default)]
pub struct AuthStats {
    pub missing: AtomicU64,
    pub invalid: AtomicU64,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
}

/// Check the `authorization` header value against the token.
pub fn check_bearer(token: &Token, header: Option<&str>) -> std::result::Result<(), Refusal> {
    let Some(h) = header else {
        return Err(Refusal::Missing);
    };
    let Some(given) = h.strip_prefix("Bearer ") else {
        return Err(Refusal::Invalid);
    };
    if token.matches(given.trim()) {
        Ok(())
    } else {
        Err(Refusal::Invalid)
    }
}

/// The interceptor every call goes through. Without a token (mutual TLS or
/// a unix socket) the transport has already authenticated the peer.
pub fn interceptor(
    token: Option<Token>,
    stats: Arc<AuthStats>,
) -> impl FnMut(Request<()>) -> std::result::Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let Some(token) = &token else {
            return Ok(req);
        };
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match check_bearer(token, header) {
            Ok(()) => Ok(req),
            Err(Refusal::Missing) => {
                stats.missing.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("refused a call without credentials");
                Err(Status::unauthenticated(
                    "this agent requires a bearer token (authorization: Bearer ...)",
                ))
            }
            Err(Refusal::Invalid) => {
                stats.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("refused a call with a wrong token");
                Err(Status::unauthenticated("wrong bearer token"))
            }
        }
    }
}

/// A TLS configuration error about `what`.
pub(crate) fn tls_bad(what: &str, e: &dyn std::fmt::Display) -> AgentError {
    AgentError::TlsConfig(format!("{what}: {e}"))
}

/// The certificates of a PEM file (at least one), `what` naming it in errors.
pub(crate) fn pem_certs(
    pem: &[u8],
    what: &str,
) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let v = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_bad(what, &e))?;
    if v.is_empty() {
        return Err(tls_bad(what, &"no PEM certificate in it"));
    }
    Ok(v)
}

/// The private key of a PEM file, `what` naming it in errors.
pub(crate) fn pem_key(
    pem: &[u8],
    what: &str,
) -> Result<tokio_rustls::rustls::pki_types::PrivateKeyDer<'static>> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| tls_bad(what, &e))
}

/// Mutual TLS: the agent's identity and the CA its clients' certificates
/// must chain to. The handshake runs here, not inside tonic, because tonic
/// drops failed handshakes without a trace and a refused certificate must
/// be counted like a wrong token.
pub fn tls_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls::{server::WebPkiClientVerifier, RootCertStore, ServerConfig};
    let (bad, certs) = (tls_bad, pem_certs);
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs(client_ca_pem, "client CA")? {
        roots.add(c).map_err(|e| bad("client CA", &e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad("client CA", &e))?;
    let key = pem_key(key_pem, "TLS key")?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem, "TLS certificate")?, key)
        .map_err(|e| bad("TLS certificate and key", &e))?;
    // gRPC runs over HTTP/2.
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a handshake failed, when the client's certificate is the cause.
fn tls_refusal(e: &std::io::Error) -> Option<Refusal> {
    use tokio_rustls::rustls::Error as TlsError;
    match e.get_ref()?.downcast_ref::<TlsError>()? {
        TlsError::NoCertificatesPresented => Some(Refusal::Missing),
        TlsError::InvalidCertificate(_) => Some(Refusal::Invalid),
        _ => None,
    }
}

/// After a refused handshake the alert saying why is on its way; closing
/// at once would answer the client's next bytes (with TLS 1.3 it sends its
/// request before it learns of the refusal) with a reset, and a reset makes
/// the client's kernel discard the alert unread. So: half-close, and read
/// and discard until the client closes too, for a short while.
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = io.shutdown().await;
    let mut buf = [0u8; 4096];
    let drain = async { while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// The connections of `incoming` (a TCP or unix listener's stream) after
/// a successful mutual-TLS handshake. Each handshake runs on its own task
/// (a slow client holds up no one); refused client certificates are
/// counted in `stats` and logged. Accepting stops when the returned stream
/// is dropped.
pub fn tls_incoming<S, IO>(
    incoming: S,
    acceptor: tokio_rustls::TlsAcceptor,
    stats: Arc<AuthStats>,
) -> ReceiverStream<std::io::Result<TlsStream<IO>>>
where
    S: Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let conn = tokio::select! {
                c = incoming.next() => c,
                _ = tx.closed() => return,
            };
            let io = match conn {
                None => return,
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    // Out of descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (tx, acceptor, stats) = (tx.clone(), acceptor.clone(), stats.clone());
            tokio::spawn(async move {
                let accept = acceptor.accept(io).into_fallible();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err((e, io))) => {
                        match tls_refusal(&e) {
                            Some(Refusal::Missing) => {
                                stats.missing.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!("refused a TLS client without a certificate");
                            }
                            Some(Refusal::Invalid) => {
                                stats.invalid.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(error = %e, "refused a TLS client certificate");
                            }
                            None => tracing::debug!(error = %e, "TLS handshake failed"),
                        }
                        linger(io).await;
                    }
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked_exactly() {
        let t = Token::new("s3cret");
        assert_eq!(check_bearer(&t, Some("Bearer s3cret")), Ok(()));
        assert_eq!(check_bearer(&t, None), Err(Refusal::Missing));
        assert_eq!(
            check_bearer(&t, Some("Bearer s3cre")),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            check_bearer(&t, Some("Bearer s3cret2")),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            check_bearer(&t, Some("Basic s3cret")),
            Err(Refusal::Invalid)
        );
        assert_eq!(check_bearer(&t, Some("Bearer ")), Err(Refusal::Invalid));
    }

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("plumb-token-{}", std::process::id()));
        std::fs::write(&dir, "abc\n").unwrap();
        assert_eq!(Token::from_file(&dir).unwrap().as_str(), "abc");
        std::fs::write(&dir, " \n").unwrap();
        let e = Token::from_file(&dir).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(e, AgentError::EmptyToken(_)));
    }
}
