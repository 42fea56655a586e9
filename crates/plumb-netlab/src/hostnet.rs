//! The host's own prefixes (addresses and routes), so a lab takes only
//! subnets that nothing on the host uses: a lab address that also exists
//! outside the lab would make attribution by address ambiguous, and would
//! shadow a real network for anyone reading the lab's traffic.

use crate::{LabError, Result};
use std::net::IpAddr;
use std::process::Command;

/// An address prefix, `addr/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u8) -> Prefix {
        Prefix { addr, len }
    }

    /// Parse `a.b.c.d/n`, `x::y/n`, or a bare address (a host prefix).
    pub fn parse(s: &str) -> Option<Prefix> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l.parse().ok().filter(|&n| n <= max)?,
            None => max,
        };
        Some(Prefix { addr, len })
    }

    fn bits(&self) -> u128 {
        match self.addr {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// Do the two prefixes share any address?
    pub fn overlaps(&self, other: &Prefix) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        let len = self.len.min(other.len) as u32;
        if len == 0 {
            return true;
        }
        let shift = width - len;
        (self.bits() >> shift) == (other.bits() >> shift)
    }
}

/// Prefixes in use on the host.
#[derive(Debug, Default, Clone)]
pub struct HostPrefixes(pub Vec<Prefix>);

fn ip_json(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LabError(format!("ip: {e}")))?;
    if !out.status.success() {
        return Err(LabError(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| LabError(format!("`ip {}`: not JSON: {e}", args.join(" "))))
}

impl HostPrefixes {
    /// Read the host's addresses and routes (every table, both families).
    pub fn read() -> Result<HostPrefixes> {
        let addrs = ip_json(&["-j", "addr", "show"])?;
        let r4 = ip_json(&["-j", "-4", "route", "show", "table", "all"])?;
        let r6 = ip_json(&["-j", "-6", "route", "show", "table", "all"])?;
        Ok(Self::from_json(&addrs, &[r4, r6]))
    }

    /// From `ip -j addr` and `ip -j route` output. Default routes, and
    /// link-local and multicast prefixes (present everywhere), say nothing
    /// about which subnets are used and are left out.
    pub fn from_json(addrs: &serde_json::Value, routes: &[serde_json::Value]) -> HostPrefixes {
        let mut v = Vec::new();
        for link in addrs.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64())
                else {
                    continue;
                };
                if let Some(p) = Prefix::parse(&format!("{local}/{len}")) {
                    v.push(p);
                }
            }
        }
        for table in routes {
            for r in table.as_array().into_iter().flatten() {
                let Some(dst) = r["dst"].as_str() else {
                    continue;
                };
                if let Some(p) = Prefix::parse(dst) {
                    v.push(p);
                }
            }
        }
        v.retain(|p| p.len > 0 && !shared(p));
        HostPrefixes(v)
    }

    /// Is any address of `p` used on the host?
    pub fn overlaps(&self, p: &Prefix) -> bool {
        self.0.iter().any(|h| h.overlaps(p))
    }
}

/// Prefixes every namespace has, which say nothing about the lab's subnets.
fn shared(p: &Prefix) -> bool {
    match p.addr {
        IpAddr::V4(a) => a.is_loopback() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => {
            a.is_loopback() || a.is_multicast() || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        Prefix::parse(s).unwrap()
    }

    #[test]
    fn prefixes_overlap_when_they_share_an_address() {
        assert!(p("10.32.0.0/24").overlaps(&p("10.32.0.7")));
        assert!(p("10.0.0.0/8").overlaps(&p("10.32.5.0/24")));
        assert!(!p("10.32.0.0/24").overlaps(&p("10.32.1.0/24")));
        assert!(!p("10.32.0.0/24").overlaps(&p("fd00::/64")));
        assert!(p("fd00:706c:6162:4::/64").overlaps(&p("fd00:706c:6162:4::9")));
        assert!(!p("fd00::/64").overlaps(&p("fd00:706c:6162:4::/64")));
        assert_eq!(Prefix::parse("10.1.2.3/33"), None);
        assert_eq!(Prefix::parse("nonsense"), None);
    }

    #[test]
    fn reads_ip_json_and_ignores_defaults_and_shared_prefixes() {
        // Trimmed from real `ip -j` output.
        let addrs: serde_json::Value = serde_json::from_str(
            r#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8},{"family":"inet6","local":"::1","prefixlen":128}]},
                {"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24},{"family":"inet6","local":"fd00::2","prefixlen":64},{"family":"inet6","local":"fe80::fc:ff:fe00:1","prefixlen":64}]}]"#,
        )
        .unwrap();
        let r4: serde_json::Value = serde_json::from_str(
            r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0"},{"dst":"10.96.0.0/12","dev":"cni0"},{"type":"local","dst":"192.0.2.2","dev":"eth0","table":"local"}]"#,
        )
        .unwrap();
        let r6: serde_json::Value = serde_json::from_str(
            r#"[{"dst":"fd00::/64","dev":"eth0"},{"dst":"fe80::/64","dev":"eth0"},{"dst":"default","gateway":"fd00::1"},{"type":"multicast","dst":"ff00::/8","table":"local"}]"#,
        )
        .unwrap();
        let h = HostPrefixes::from_json(&addrs, &[r4, r6]);
        assert!(h.overlaps(&p("192.0.2.0/24")));
        assert!(h.overlaps(&p("10.100.0.0/24")), "inside 10.96.0.0/12");
        assert!(
            !h.overlaps(&p("10.32.0.0/24")),
            "default routes do not count"
        );
        assert!(h.overlaps(&p("fd00::/64")));
        assert!(!h.overlaps(&p("fd00:706c:6162::/64")));
        assert!(!h.overlaps(&p("fe80::/64")), "link-local is everywhere");
    }
}
