//! The `*-save` format of iptables, ip6tables and ebtables (nft-backed and
//! legacy), and the normalisation that makes two spellings of one rule
//! compare equal: option aliases, implied matches, option order, and
//! addresses masked by their prefix as the kernel stores them
//! (`10.2.207.1/24` is `10.2.207.0/24`).

use super::{Chain, Rule, Ruleset, Table};
use std::net::IpAddr;

/// Split a rule line into words, honouring double quotes.
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn alias(opt: &str) -> &str {
    match opt {
        "--source" | "--src" => "-s",
        "--destination" | "--dst" => "-d",
        "--protocol" => "-p",
        "--in-interface" => "-i",
        "--out-interface" => "-o",
        "--jump" => "-j",
        "--goto" => "-g",
        "--match" => "-m",
        "--destination-port" => "--dport",
        "--source-port" => "--sport",
        "--destination-ports" => "--dports",
        "--source-ports" => "--sports",
        "--ip-source" => "--ip-src",
        "--ip-destination" => "--ip-dst",
        "--ip6-source" => "--ip6-src",
        "--ip6-destination" => "--ip6-dst",
        "--ip-protocol" => "--ip-proto",
        "--ip-destination-port" | "--ip-dport" => "--ip-dport",
        "--ip-source-port" | "--ip-sport" => "--ip-sport",
        o => o,
    }
}

/// `a.b.c.d[/len]` masked to its prefix; a bare address gets its full length.
pub fn mask_addr(s: &str) -> Option<String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u32 = match len {
        None => max,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if n <= max => n,
            // A dotted netmask: count its bits.
            _ => match l.parse::<IpAddr>().ok()? {
                IpAddr::V4(m) => u32::from(m).count_ones(),
                IpAddr::V6(m) => u128::from(m).count_ones(),
            },
        },
    };
    Some(match ip {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            format!("{}/{len}", std::net::Ipv6Addr::from(u128::from(a) & m))
        }
    })
}

const ADDR_OPTS: &[&str] = &[
    "-s",
    "-d",
    "--ip-src",
    "--ip-dst",
    "--ip6-src",
    "--ip6-dst",
    "--arp-ip-src",
    "--arp-ip-dst",
];

/// The normalised form of a rule's match and target (without `-A CHAIN`
/// and counters): equal strings mean the kernel holds the same rule.
pub fn normalize(args: &[String]) -> String {
    // Group options with their values; "!" belongs to the option after it.
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut negate = false;
    for w in args {
        if w == "!" {
            negate = true;
            continue;
        }
        if w.starts_with('-') && w.len() > 1 && w.parse::<f64>().is_err() {
            let mut g = vec![alias(w).to_string()];
            if negate {
                g.insert(0, "!".into());
                negate = false;
            }
            groups.push(g);
        } else if let Some(g) = groups.last_mut() {
            if negate {
                g.push("!".into());
                negate = false;
            }
            g.push(w.clone());
        }
    }
    let proto = groups
        .iter()
        .find(|g| g.first().map(String::as_str) == Some("-p"))
        .and_then(|g| g.get(1).cloned());
    let mut matches = Vec::new();
    let mut target = Vec::new();
    let mut in_target = false;
    for mut g in groups {
        let opt = g.iter().find(|x| *x != "!").cloned().unwrap_or_default();
        if opt == "-j" || opt == "-g" {
            in_target = true;
        }
        // `-m tcp` with `-p tcp` is implied: iptables-save prints it, users often don't.
        if opt == "-m" && g.get(1).is_some() && g.get(1) == proto.as_ref() {
            continue;
        }
        if ADDR_OPTS.contains(&opt.as_str()) {
            if let Some(v) = g.last_mut() {
                if let Some(m) = mask_addr(v) {
                    *v = m;
                }
            }
        }
        if opt == "-p" {
            if let Some(v) = g.last_mut() {
                *v = v.to_ascii_lowercase();
            }
        }
        let s = g.join(" ");
        if in_target {
            target.push(s);
        } else {
            matches.push(s);
        }
    }
    matches.sort();
    matches.extend(target);
    matches.join(" ")
}

/// Parse `iptables-save -c` / `ebtables-save -c` output.
pub fn parse(text: &str, tool: &'static str, family: &'static str) -> Ruleset {
    let mut rs = Ruleset::default();
    let mut table: Option<Table> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            if let Some(t) = table.take() {
                rs.tables.push(t);
            }
            table = Some(Table {
                tool,
                family,
                name: name.to_string(),
                chains: Vec::new(),
            });
            continue;
        }
        let Some(t) = table.as_mut() else { continue };
        if let Some(decl) = line.strip_prefix(':') {
            let mut it = decl.split_whitespace();
            let name = it.next().unwrap_or_default().to_string();
            let policy = it.next().filter(|p| *p != "-").map(String::from);
            t.chains.push(Chain {
                name,
                policy,
                rules: Vec::new(),
            });
            continue;
        }
        let mut w = words(line);
        let mut packets = None;
        if let Some(first) = w.first() {
            if let Some(c) = first.strip_prefix('[').and_then(|c| c.strip_suffix(']')) {
                packets = c.split(':').next().and_then(|p| p.parse().ok());
                w.remove(0);
            }
        }
        // ebtables-save -c puts counters at the end: `-c PKTS BYTES`.
        if let Some(i) = w.iter().position(|x| x == "-c") {
            if w.len() >= i + 3 {
                packets = w[i + 1].parse().ok();
                w.drain(i..i + 3);
            }
        }
        if w.len() < 2 || (w[0] != "-A" && w[0] != "--append") {
            continue;
        }
        let chain = w[1].clone();
        let args = w[2..].to_vec();
        let rule = Rule {
            text: args.join(" "),
            key: normalize(&args),
            packets,
            jumps_to: jump_target(&args),
        };
        match t.chains.iter_mut().find(|c| c.name == chain) {
            Some(c) => c.rules.push(rule),
            None => t.chains.push(Chain {
                name: chain,
                policy: None,
                rules: vec![rule],
            }),
        }
    }
    if let Some(t) = table.take() {
        rs.tables.push(t);
    }
    rs
}

fn jump_target(args: &[String]) -> Option<String> {
    let i = args
        .iter()
        .position(|a| a == "-j" || a == "--jump" || a == "-g" || a == "--goto")?;
    let t = args.get(i + 1)?;
    let builtin = [
        "ACCEPT",
        "DROP",
        "REJECT",
        "RETURN",
        "CONTINUE",
        "LOG",
        "MASQUERADE",
        "SNAT",
        "DNAT",
        "MARK",
        "CONNMARK",
        "NOTRACK",
        "CT",
        "TPROXY",
        "QUEUE",
        "NFQUEUE",
    ];
    (!builtin.contains(&t.as_str())).then(|| t.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(&words(s))
    }

    #[test]
    fn host_bits_are_masked_as_the_kernel_does() {
        assert_eq!(mask_addr("10.2.207.1/24").unwrap(), "10.2.207.0/24");
        assert_eq!(mask_addr("10.2.207.1").unwrap(), "10.2.207.1/32");
        assert_eq!(
            mask_addr("10.2.207.1/255.255.255.0").unwrap(),
            "10.2.207.0/24"
        );
        assert_eq!(mask_addr("fd00::1:2/64").unwrap(), "fd00::/64");
        assert_eq!(
            n("-p IPv4 --ip-src 10.2.207.1/24 -j ACCEPT"),
            n("-p IPv4 --ip-source 10.2.207.0/24 -j ACCEPT")
        );
    }

    #[test]
    fn aliases_implied_matches_and_order_do_not_matter() {
        let a = n("-s 10.0.0.0/8 -p tcp -m tcp --dport 80 -j DROP");
        assert_eq!(
            a,
            n("--protocol tcp --destination-port 80 --source 10.1.2.3/8 -j DROP")
        );
        assert_eq!(a, n("-p tcp --dport 80 -s 10.0.0.0/255.0.0.0 --jump DROP"));
        assert_ne!(a, n("-p tcp --dport 81 -s 10.0.0.0/8 -j DROP"));
        assert_ne!(a, n("-p tcp ! --dport 80 -s 10.0.0.0/8 -j DROP"));
        assert_ne!(a, n("-p tcp --dport 80 -s 10.0.0.0/8 -j ACCEPT"));
    }

    #[test]
    fn parses_iptables_save_with_counters() {
        let text = "# Generated by iptables-save v1.8.9 (nf_tables)\n*filter\n:INPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n[5:300] -A INPUT -s 10.2.207.0/24 -p tcp -m tcp --dport 80 -j DROP\n[0:0] -A INPUT -j KUBE-SERVICES\n[1:60] -A INPUT -m comment --comment \"kube: a b\" -j ACCEPT\nCOMMIT\n";
        let rs = parse(text, "iptables", "ip");
        let t = &rs.tables[0];
        assert_eq!(t.name, "filter");
        let input = &t.chains[0];
        assert_eq!(
            (
                input.name.as_str(),
                input.policy.as_deref(),
                input.rules.len()
            ),
            ("INPUT", Some("ACCEPT"), 3)
        );
        assert_eq!(input.rules[0].packets, Some(5));
        assert_eq!(input.rules[1].jumps_to.as_deref(), Some("KUBE-SERVICES"));
        assert!(input.rules[2].text.contains("kube: a b"));
        assert_eq!(t.chains[1].policy, None);
    }

    #[test]
    fn parses_ebtables_save_counters_at_the_end() {
        let text = "*filter\n:FORWARD ACCEPT\n-A FORWARD -p IPv4 --ip-src 10.2.207.0/24 -j ACCEPT -c 7 420\n";
        let rs = parse(text, "ebtables", "bridge");
        assert_eq!(rs.tables[0].chains[0].rules[0].packets, Some(7));
        assert_eq!(
            rs.tables[0].chains[0].rules[0].text,
            "-p IPv4 --ip-src 10.2.207.0/24 -j ACCEPT"
        );
    }
}
