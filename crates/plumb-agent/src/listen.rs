//! Where the API listens, and the rule that keeps it closed: any TCP
//! address needs authentication configured; only a unix socket (whose file
//! permissions decide who connects) may go without.

use crate::error::{AgentError, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    pub const DEFAULT: &'static str = "127.0.0.1:7979";

    pub fn parse(s: &str) -> Result<ListenAddr> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(AgentError::BadAddress(s.to_string()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(p)));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| AgentError::BadAddress(s.to_string()))
    }

    /// Refuse to serve without credentials anywhere but a unix socket.
    pub fn check_auth(&self, auth_configured: bool) -> Result<()> {
        match self {
            ListenAddr::Tcp(a) if !auth_configured => Err(AgentError::NoAuth(a.to_string())),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_tcp_needs_auth() {
        let lo = ListenAddr::parse("127.0.0.1:7979").unwrap();
        let any = ListenAddr::parse("0.0.0.0:7979").unwrap();
        let sock = ListenAddr::parse("unix:/run/plumb.sock").unwrap();
        assert_eq!(sock, ListenAddr::Unix("/run/plumb.sock".into()));
        assert!(ListenAddr::parse("localhost").is_err());
        assert!(ListenAddr::parse("unix:").is_err());
        assert!(matches!(any.check_auth(false), Err(AgentError::NoAuth(a)) if a == "0.0.0.0:7979"));
        assert!(lo.check_auth(false).is_err());
        assert!(any.check_auth(true).is_ok());
        assert!(sock.check_auth(false).is_ok());
    }
}
