//! Who may use the API: a bearer token read from a file, or a client
//! certificate signed by the agent's client CA (checked by the TLS layer
//! before any call reaches us). Refusals are counted for the metrics.

use crate::error::{AgentError, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    fn matches(&self, given: &str) -> bool {
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
