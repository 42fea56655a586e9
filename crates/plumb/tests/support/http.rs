//! The agent's metrics listener (and Prometheus's API) read as a scraper
//! would: a plain HTTP/1.1 GET over loopback, and the value of one sample
//! in the Prometheus text it serves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// GET http://ADDR/PATH: (status code, Content-Type, body); an error when
/// nothing answers.
pub fn try_get(addr: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((code, ctype, body.to_string()))
}

/// [`try_get`], which must be answered.
pub fn get(addr: &str, path: &str) -> (u16, String, String) {
    try_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// The body of `/metrics`, which must be served with 200.
pub fn scrape(addr: &str) -> String {
    let (code, _, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of the sample `name` whose labels include `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (n == name && all).then(|| value.parse().ok())?
    })
}
