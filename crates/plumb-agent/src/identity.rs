//! Who is calling, in words for the agent's log: the subject of the
//! client's certificate (mutual TLS), "bearer token" (the token is shared,
//! so it names no one; the peer's address goes with it), or the peer's
//! uid on a unix socket. Calls that run code in the kernel (bpftrace) are
//! logged with it.
//!
//! The subject is read from the certificate's DER with a few lines of
//! parsing here (Certificate → TBSCertificate → subject Name), so that no
//! X.509 library is pulled in for one log field.

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::Request;

/// One DER element: (tag, content, the rest after it).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, r) = rest.split_at(n);
        rest = r;
        bytes.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x))
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((tag, content, after))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The short names of the attributes a subject usually holds (2.5.4.x).
fn attribute(oid: &[u8]) -> Option<&'static str> {
    match oid {
        [0x55, 0x04, 0x03] => Some("CN"),
        [0x55, 0x04, 0x06] => Some("C"),
        [0x55, 0x04, 0x07] => Some("L"),
        [0x55, 0x04, 0x08] => Some("ST"),
        [0x55, 0x04, 0x0a] => Some("O"),
        [0x55, 0x04, 0x0b] => Some("OU"),
        _ => None,
    }
}

/// The subject of a DER certificate, `CN=alice,O=sre`; None when the
/// bytes are not a certificate as RFC 5280 lays it out.
pub fn subject(der: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] version is optional; then serial, signature, issuer, validity.
    let (tag, _, r) = tlv(rest)?;
    rest = if tag == 0xa0 { tlv(r)?.2 } else { r };
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = tlv(rest)? else {
        return None;
    };
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (SET, mut set, r) = tlv(name)? else {
            return None;
        };
        name = r;
        while !set.is_empty() {
            let (SEQUENCE, atv, r) = tlv(set)? else {
                return None;
            };
            set = r;
            let (OID, oid, value) = tlv(atv)? else {
                return None;
            };
            let (_, value, _) = tlv(value)?;
            let key = attribute(oid).map_or_else(
                || {
                    let hex: Vec<String> = oid.iter().map(|b| format!("{b:02x}")).collect();
                    format!("OID:{}", hex.join(""))
                },
                str::to_string,
            );
            parts.push(format!("{key}={}", String::from_utf8_lossy(value)));
        }
    }
    Some(parts.join(","))
}

/// The caller of `req`, for the log.
/// The subject of the client's certificate (mutual TLS), if it showed one.
pub fn subject_of<T>(req: &Request<T>) -> Option<String> {
    let ext = req.extensions();
    let certs = ext
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .or_else(|| {
            ext.get::<TlsConnectInfo<UdsConnectInfo>>()
                .and_then(|i| i.peer_certs())
        });
    certs
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| subject(c))
}

pub fn of<T>(req: &Request<T>, token_required: bool) -> String {
    let ext = req.extensions();
    let tls_tcp = ext.get::<TlsConnectInfo<TcpConnectInfo>>();
    let tls_uds = ext.get::<TlsConnectInfo<UdsConnectInfo>>();
    let certs = tls_tcp
        .and_then(|i| i.peer_certs())
        .or_else(|| tls_uds.and_then(|i| i.peer_certs()));
    let addr = req.remote_addr().map(|a| a.to_string());
    let uds = ext
        .get::<UdsConnectInfo>()
        .or_else(|| tls_uds.map(|i| i.get_ref()))
        .and_then(|u| u.peer_cred)
        .map(|c| format!("unix socket peer uid {}", c.uid()));
    let from = addr.or(uds).unwrap_or_else(|| "an unknown peer".into());
    match certs.as_ref().and_then(|c| c.first()) {
        Some(c) => format!(
            "client certificate {} from {from}",
            subject(c).unwrap_or_else(|| "(unreadable subject)".into())
        ),
        None if token_required => format!("bearer token from {from}"),
        None => from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_is_read_from_the_certificate() {
        // A real certificate (tests/fixtures/README.md says how it was made).
        let der = include_bytes!("../tests/fixtures/client-alice.der");
        assert_eq!(subject(der).as_deref(), Some("CN=alice,O=sre"));
        assert_eq!(subject(&der[..40]), None);
        assert_eq!(subject(b"not a certificate"), None);
        assert_eq!(subject(&[]), None);
    }
}
