//! tcpdump's filter language, compiled by libpcap (through the `pcap`
//! crate) into classic BPF for the link type of the interface it will run
//! on, with its accept returns capped at the snap length, so that the
//! kernel drops unwanted packets and truncates wanted ones before they are
//! copied into the ring.

use crate::error::{Error, Result};

/// The link types plumb captures: what libpcap compiles for, and what the
/// pcapng interface block says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// Ethernet framing (veths, bridges, physical NICs, and loopback,
    /// whose header is an all-zero Ethernet header).
    Ethernet,
    /// Bare IP packets (tun devices, WireGuard).
    RawIp,
}

impl LinkType {
    /// The type of an interface by its ARPHRD_* hardware type; None for
    /// framings plumb cannot name yet.
    pub fn of_hardware(hatype: u16) -> Option<LinkType> {
        const ARPHRD_ETHER: u16 = 1;
        const ARPHRD_NONE: u16 = 0xfffe;
        const ARPHRD_LOOPBACK: u16 = 772;
        match hatype {
            ARPHRD_ETHER | ARPHRD_LOOPBACK => Some(LinkType::Ethernet),
            ARPHRD_NONE => Some(LinkType::RawIp),
            _ => None,
        }
    }

    /// The LINKTYPE_* number (tcpdump.org's registry).
    pub fn number(self) -> u16 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::RawIp => 101,
        }
    }
}

/// A compiled filter: the instructions `SO_ATTACH_FILTER` takes.
#[derive(Debug, Clone)]
pub struct Filter {
    pub insns: Vec<libc::sock_filter>,
}

const BPF_RET: u16 = 0x06;
const BPF_K: u16 = 0x00;

/// Compile `expression` (empty: every packet) for `link`, each accepted
/// packet cut to `snaplen` bytes. The error is libpcap's own message.
pub fn compile(expression: &str, link: LinkType, snaplen: u32) -> Result<Filter> {
    // pcap_open_dead takes a DLT_* number, which for bare IP is 12 on
    // Linux (the file's LINKTYPE_RAW is 101).
    let lt = pcap::Linktype(match link {
        LinkType::Ethernet => 1,
        LinkType::RawIp => 12,
    });
    let dead = pcap::Capture::dead(lt).map_err(|e| Error::Filter {
        expression: expression.to_string(),
        message: e.to_string(),
    })?;
    let prog = dead.compile(expression, true).map_err(|e| Error::Filter {
        expression: expression.to_string(),
        message: match e {
            pcap::Error::PcapError(m) => m,
            other => other.to_string(),
        },
    })?;
    // Each instruction prints as "code jt jf k" (the form nfbpf_compile
    // and iptables' bpf match use); read back from that, the crate keeps
    // the raw struct private.
    let mut insns = Vec::new();
    for i in prog.get_instructions() {
        let text = i.to_string();
        let f: Vec<u32> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [code, jt, jf, k] = f[..] else {
            return Err(Error::Filter {
                expression: expression.to_string(),
                message: format!("libpcap gave an instruction plumb cannot read: {text}"),
            });
        };
        let code = code as u16;
        let k = if code == BPF_RET | BPF_K && k != 0 {
            k.min(snaplen)
        } else {
            k
        };
        insns.push(libc::sock_filter {
            code,
            jt: jt as u8,
            jf: jf as u8,
            k,
        });
    }
    Ok(Filter { insns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_port_filter_compiles_and_its_accept_is_cut_to_the_snap_length() {
        let f = compile("udp port 5353", LinkType::Ethernet, 96).unwrap();
        let rets: Vec<u32> = f
            .insns
            .iter()
            .filter(|i| i.code == BPF_RET | BPF_K)
            .map(|i| i.k)
            .collect();
        assert!(rets.contains(&96), "{rets:?}");
        assert!(rets.contains(&0), "{rets:?}");
        // ldh [12]: the EtherType, first thing an Ethernet filter reads.
        assert_eq!((f.insns[0].code, f.insns[0].k), (0x28, 12));
    }

    #[test]
    fn raw_ip_filters_read_the_ip_header_at_offset_zero() {
        let f = compile("ip", LinkType::RawIp, 65535).unwrap();
        assert_ne!(f.insns[0].k, 12);
    }

    #[test]
    fn an_empty_expression_accepts_every_packet() {
        let f = compile("", LinkType::Ethernet, 128).unwrap();
        assert_eq!(f.insns.len(), 1);
        assert_eq!((f.insns[0].code, f.insns[0].k), (BPF_RET | BPF_K, 128));
    }

    #[test]
    fn a_bad_expression_is_refused_with_libpcaps_message() {
        let e = compile("tcp prot 80", LinkType::Ethernet, 65535).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("tcp prot 80"), "{text}");
        assert!(text.contains("syntax error"), "{text}");
    }
}
