//! The flow filters `--port N` and `--addr IP|CIDR`: parsing what the user
//! typed, the user-space check (either side of a flow matches), and their
//! kernel form (`struct plumb_cidr` prefixes and a port list, see
//! bpf/include/plumb_net_filter.h).
//!
//! An IPv4 prefix also matches IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`,
//! what a dual-stack socket shows), in user space and in the kernel.

use crate::error::{Error, Result};
use crate::raw::{RawCidr, MAX_CIDRS, MAX_PORTS};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Ports and prefixes a user may give at most (the kernel holds an IPv4
/// prefix twice: as itself and IPv4-mapped).
pub const MAX_PORT_ARGS: usize = MAX_PORTS;
pub const MAX_ADDR_ARGS: usize = MAX_CIDRS / 2;

/// An address prefix, `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

fn bad(flag: &'static str, reason: String) -> Error {
    Error::BadFilter { flag, reason }
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr> {
        let t = s.trim();
        let (ip, len) = match t.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (t, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| {
            bad(
                "addr",
                format!("'{s}' is not an IP address or prefix (like 10.0.0.0/8 or fd00::1)"),
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(bad(
                        "addr",
                        format!("'{s}': the prefix length must be a number from 0 to {max}"),
                    ))
                }
            },
        };
        let c = Cidr { addr, len };
        if c.network() != addr {
            return Err(bad(
                "addr",
                format!(
                    "'{s}' has bits set past its prefix length (did you mean {}/{len}?)",
                    c.network()
                ),
            ));
        }
        Ok(c)
    }

    fn mask_bits(&self) -> u128 {
        let bits = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.len == 0 {
            0
        } else {
            (!0u128 << (bits - self.len as u32)) & (!0u128 >> (128 - bits))
        }
    }

    /// The address with the host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
                (u32::from(a) as u128 & self.mask_bits()) as u32,
            )),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & self.mask_bits())),
        }
    }

    /// Is `ip` inside? An IPv4-mapped IPv6 address counts as its IPv4 one.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let m = self.mask_bits();
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) as u128 & m == u32::from(n) as u128,
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & m == u128::from(n),
            _ => false,
        }
    }

    /// The kernel's form: one prefix, and for IPv4 also its IPv4-mapped
    /// IPv6 twin.
    pub fn kernel(&self) -> Vec<RawCidr> {
        fn words(v: u128) -> [u32; 4] {
            let b = v.to_be_bytes();
            let mut w = [0u32; 4];
            for (i, c) in b.chunks_exact(4).enumerate() {
                // Network order in memory, as the kernel stores addresses.
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            w
        }
        match self.addr {
            IpAddr::V4(a) => {
                let m = self.mask_bits() as u32;
                let mapped = a.to_ipv6_mapped();
                let m6 = if self.len == 0 {
                    !0u128 << 32
                } else {
                    (!0u128 << (32 - self.len as u32)) | (!0u128 << 32)
                };
                vec![
                    RawCidr {
                        addr: [u32::from(a).to_be(), 0, 0, 0],
                        mask: [m.to_be(), 0, 0, 0],
                        family: libc::AF_INET as u32,
                    },
                    RawCidr {
                        addr: words(u128::from(mapped) & m6),
                        mask: words(m6),
                        family: libc::AF_INET6 as u32,
                    },
                ]
            }
            IpAddr::V6(a) => vec![RawCidr {
                addr: words(u128::from(a)),
                mask: words(self.mask_bits()),
                family: libc::AF_INET6 as u32,
            }],
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.len == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

/// `--port`: 1 to 65535.
pub fn parse_port(s: &str) -> Result<u16> {
    match s.trim().parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        Ok(_) => Err(bad(
            "port",
            format!("'{s}' is out of range (a port is 1 to 65535)"),
        )),
        Err(_) => Err(bad("port", format!("'{s}' is not a port number"))),
    }
}

/// Parse the repeatable `--port` and `--addr` values.
pub fn parse(ports: &[String], addrs: &[String]) -> Result<(Vec<u16>, Vec<Cidr>)> {
    if ports.len() > MAX_PORT_ARGS {
        return Err(bad("port", format!("at most {MAX_PORT_ARGS} ports")));
    }
    if addrs.len() > MAX_ADDR_ARGS {
        return Err(bad("addr", format!("at most {MAX_ADDR_ARGS} addresses")));
    }
    let ports = ports.iter().map(|p| parse_port(p)).collect::<Result<_>>()?;
    let addrs = addrs
        .iter()
        .map(|a| Cidr::parse(a))
        .collect::<Result<_>>()?;
    Ok((ports, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_contain() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        let one = Cidr::parse("fd00::1").unwrap();
        assert_eq!(one.len, 128);
        assert!(one.contains("fd00::1".parse().unwrap()));
        assert!(!one.contains("fd00::2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(!Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert_eq!(Cidr::parse("fd00::/8").unwrap().to_string(), "fd00::/8");
    }

    #[test]
    fn bad_prefixes_and_ports_say_why_in_one_line() {
        let e = |r: Result<Cidr>| r.unwrap_err().to_string();
        assert_eq!(
            e(Cidr::parse("10.0.0.300")),
            "bad value for --addr: '10.0.0.300' is not an IP address or prefix (like 10.0.0.0/8 or fd00::1)"
        );
        assert_eq!(
            e(Cidr::parse("10.0.0.0/33")),
            "bad value for --addr: '10.0.0.0/33': the prefix length must be a number from 0 to 32"
        );
        assert_eq!(
            e(Cidr::parse("10.0.0.1/8")),
            "bad value for --addr: '10.0.0.1/8' has bits set past its prefix length (did you mean 10.0.0.0/8?)"
        );
        assert_eq!(
            parse_port("70000").unwrap_err().to_string(),
            "bad value for --port: '70000' is out of range (a port is 1 to 65535)"
        );
        assert_eq!(
            parse_port("http").unwrap_err().to_string(),
            "bad value for --port: 'http' is not a port number"
        );
        assert!(parse_port("0").is_err());
    }

    #[test]
    fn kernel_prefixes_are_in_network_order_with_a_mapped_twin() {
        let k = Cidr::parse("10.1.0.0/16").unwrap().kernel();
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].addr[0].to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(k[0].mask[0].to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(k[1].family, libc::AF_INET6 as u32);
        assert_eq!(k[1].addr[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
        assert_eq!(k[1].addr[3].to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(k[1].mask[3].to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(k[1].mask[0], !0);
        let v6 = Cidr::parse("fd00::/8").unwrap().kernel();
        assert_eq!(v6[0].mask[0].to_ne_bytes(), [0xff, 0, 0, 0]);
        assert_eq!(v6[0].mask[1], 0);
    }
}
