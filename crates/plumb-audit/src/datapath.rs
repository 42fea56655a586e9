//! Which datapath a namespace runs and how big it is: kube-proxy in
//! iptables mode (its KUBE-SVC/KUBE-SEP chains), IPVS mode (the kernel's
//! virtual servers) or nftables mode (its table's service and endpoint
//! chains and maps), and BPF datapaths such as Cilium (programs on TC/XDP
//! hooks of this namespace's interfaces, its maps and their fill).

use crate::bpfmaps::MapSummary;
use crate::exec::{CmdError, Exec};
use crate::finding::{Finding, Severity, Skip};
use crate::netfilter::{rule_count, Ruleset};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Datapath {
    /// "iptables", "ipvs", "nftables", or none.
    pub kube_proxy: Option<&'static str>,
    pub netfilter_rules: usize,
    pub netfilter_chains: usize,
    /// Elements of nft sets and maps.
    pub nft_set_elements: usize,
    /// kube-proxy's services and endpoints, counted from its chains
    /// (KUBE-SVC-*/KUBE-SEP-* or nftables' service-*/endpoint-*).
    pub services: usize,
    pub endpoints: usize,
    /// IPVS virtual servers and their real servers (/proc/net/ip_vs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<Ipvs>,
    /// BPF programs attached to TC or XDP hooks of this namespace's
    /// interfaces; `None` when they could not be listed.
    pub tc_xdp_programs: Option<Vec<String>>,
    pub cilium: bool,
    /// Cilium's maps with their fill (host namespace only: maps are
    /// node-wide).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cilium_maps: Vec<MapFill>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Ipvs {
    pub virtual_servers: usize,
    pub real_servers: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MapFill {
    pub id: u32,
    pub name: String,
    pub entries: Option<u64>,
    pub max_entries: u32,
}

/// Programs on TC/XDP hooks from `bpftool -j net show`, named from
/// `names` (program id → name) where bpftool gives only an id (it does for
/// XDP).
pub fn parse_bpftool_net(
    json: &str,
    names: &HashMap<u32, String>,
) -> Result<Vec<String>, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let mut out = Vec::new();
    for section in v.as_array().into_iter().flatten() {
        for key in ["xdp", "tc", "tcx", "netkit"] {
            for p in section[key].as_array().into_iter().flatten() {
                let dev = p["devname"].as_str().unwrap_or("?");
                let id = p["id"]
                    .as_u64()
                    .or_else(|| p["prog_id"].as_u64())
                    .and_then(|i| u32::try_from(i).ok());
                let name = p["name"]
                    .as_str()
                    .map(String::from)
                    .or_else(|| id.and_then(|i| names.get(&i).cloned()))
                    .unwrap_or_else(|| "?".into());
                let kind = match (p["kind"].as_str(), p["mode"].as_str()) {
                    (Some(k), _) => k.to_string(),
                    (None, Some(m)) => format!("{key} {m}"),
                    (None, None) => key.to_string(),
                };
                out.push(match id {
                    Some(i) => format!("{name} (id {i}) on {dev} ({kind})"),
                    None => format!("{name} on {dev} ({kind})"),
                });
            }
        }
    }
    Ok(out)
}

/// Every loaded program's name by id.
pub fn program_names() -> HashMap<u32, String> {
    libbpf_rs::query::ProgInfoIter::default()
        .map(|p| (p.id, p.name.to_string_lossy().into_owned()))
        .collect()
}

/// /proc/net/ip_vs: a header, then `TCP  0A600001:01BB rr` lines for
/// virtual servers, each followed by `  -> ADDR:PORT ...` real servers.
pub fn parse_ip_vs(text: &str) -> Ipvs {
    let mut v = Ipvs::default();
    for l in text.lines() {
        let t = l.trim_start();
        if t.starts_with("->") {
            if !t.contains("RemoteAddress") {
                v.real_servers += 1;
            }
        } else if ["TCP ", "UDP ", "SCTP ", "FWM "]
            .iter()
            .any(|p| t.starts_with(p))
        {
            v.virtual_servers += 1;
        }
    }
    v
}

/// Work out the datapath of one namespace. `host` says whether node-wide
/// facts (BPF maps) belong to it.
pub fn detect(
    rs: &Ruleset,
    maps: &[MapSummary],
    programs: &HashMap<u32, String>,
    run: &dyn Exec,
    host: bool,
) -> (Datapath, Vec<Skip>) {
    let mut skipped = Vec::new();
    let chains = || rs.tables.iter().flat_map(|t| t.chains.iter());
    let has_chain = |n: &str| chains().any(|c| c.name == n);
    let count_prefix = |p: &str| chains().filter(|c| c.name.starts_with(p)).count();
    let nft_kp = rs
        .tables
        .iter()
        .find(|t| t.tool == "nft" && t.name == "kube-proxy");
    let (kube_proxy, services, endpoints) = if let Some(t) = nft_kp {
        let svc = t
            .chains
            .iter()
            .filter(|c| c.name.starts_with("service-"))
            .count();
        let ep = t
            .chains
            .iter()
            .filter(|c| c.name.starts_with("endpoint-"))
            .count();
        (Some("nftables"), svc, ep)
    } else if has_chain("KUBE-IPVS-FILTER") || has_chain("KUBE-IPVS-OUT-FILTER") {
        (Some("ipvs"), 0, 0)
    } else if has_chain("KUBE-SERVICES") {
        (
            Some("iptables"),
            count_prefix("KUBE-SVC-"),
            count_prefix("KUBE-SEP-"),
        )
    } else {
        (None, 0, 0)
    };
    let ipvs = match run.output("cat /proc/net/ip_vs") {
        Ok(t) => Some(parse_ip_vs(&t)),
        Err(e) => {
            if kube_proxy == Some("ipvs") {
                skipped.push(Skip::new("IPVS virtual servers", e.to_string()));
            }
            None
        }
    };
    let tc_xdp_programs = match run.output("bpftool -j net show") {
        Ok(j) => match parse_bpftool_net(&j, programs) {
            Ok(p) => Some(p),
            Err(e) => {
                skipped.push(Skip::new(
                    "TC/XDP programs",
                    format!("bpftool printed JSON we cannot read: {e}"),
                ));
                None
            }
        },
        Err(CmdError::NotFound(tool)) => {
            skipped.push(Skip::new(
                "TC/XDP programs",
                format!("{tool} is not installed"),
            ));
            None
        }
        Err(e) => {
            skipped.push(Skip::new("TC/XDP programs", e.to_string()));
            None
        }
    };
    let cilium_maps: Vec<MapFill> = if host {
        maps.iter()
            .filter(|m| m.name.starts_with("cilium_"))
            .map(|m| MapFill {
                id: m.id,
                name: m.name.clone(),
                entries: m.entries,
                max_entries: m.max_entries,
            })
            .collect()
    } else {
        Vec::new()
    };
    let cilium = !cilium_maps.is_empty()
        || tc_xdp_programs
            .iter()
            .flatten()
            .any(|p| p.starts_with("cil_"));
    let d = Datapath {
        kube_proxy,
        netfilter_rules: rule_count(rs),
        netfilter_chains: chains().count(),
        nft_set_elements: rs
            .tables
            .iter()
            .flat_map(|t| &t.sets)
            .map(|s| s.elements)
            .sum(),
        services,
        endpoints,
        ipvs,
        tc_xdp_programs,
        cilium,
        cilium_maps,
    };
    (d, skipped)
}

/// Whether there is anything to say about this namespace's datapath.
pub fn is_empty(d: &Datapath) -> bool {
    d.kube_proxy.is_none()
        && d.netfilter_rules == 0
        && d.nft_set_elements == 0
        && !d.cilium
        && d.ipvs.as_ref().is_none_or(|v| v.virtual_servers == 0)
        && d.tc_xdp_programs.as_ref().is_none_or(Vec::is_empty)
}

/// Rules above which kube-proxy's iptables mode is a finding.
pub const LARGE_IPTABLES: usize = 10_000;

pub fn analyse(d: &Datapath) -> Vec<Finding> {
    let mut f = Finding::new(Severity::Info, "datapath", describe(d))
        .evidence(size(d))
        .advice("`plumb audit --only netfilter -v` lists the chains.");
    if let Some(p) = d.tc_xdp_programs.as_ref().filter(|p| !p.is_empty()) {
        f = f.evidence(format!("BPF on TC/XDP: {}", p.join(", ")));
    }
    if let Some(v) = &d.ipvs {
        if v.virtual_servers > 0 {
            f = f.evidence(format!(
                "IPVS: {} virtual servers, {} real servers",
                v.virtual_servers, v.real_servers
            ));
        }
    }
    for m in &d.cilium_maps {
        f = f.evidence(format!(
            "{} (id {}): {}/{} entries",
            m.name,
            m.id,
            m.entries.map_or("?".to_string(), |n| n.to_string()),
            m.max_entries
        ));
    }
    let mut out = vec![f.data(serde_json::to_value(d).unwrap_or_default())];
    if d.kube_proxy == Some("iptables") && d.netfilter_rules >= LARGE_IPTABLES {
        out.push(
            Finding::new(
                Severity::Warning,
                "datapath",
                format!(
                    "kube-proxy in iptables mode with {} rules in {} chains",
                    d.netfilter_rules, d.netfilter_chains
                ),
            )
            .evidence(size(d))
            .advice(
                "Rule updates rewrite the whole table and packets walk the service chains linearly; \
                 both grow with services. Consider kube-proxy's IPVS or nftables mode, or an eBPF datapath.",
            )
            .data(serde_json::json!({
                "rules": d.netfilter_rules, "chains": d.netfilter_chains,
                "services": d.services, "endpoints": d.endpoints,
            })),
        );
    }
    out
}

fn size(d: &Datapath) -> String {
    let mut s = format!(
        "{} netfilter rules in {} chains",
        d.netfilter_rules, d.netfilter_chains
    );
    if d.nft_set_elements > 0 {
        s.push_str(&format!(", {} nft set/map elements", d.nft_set_elements));
    }
    if d.kube_proxy.is_some() && d.kube_proxy != Some("ipvs") {
        s.push_str(&format!(
            ", {} service chains, {} endpoint chains",
            d.services, d.endpoints
        ));
    }
    s
}

fn describe(d: &Datapath) -> String {
    let mut parts = Vec::new();
    match d.kube_proxy {
        Some(m) => parts.push(format!("kube-proxy in {m} mode")),
        None => parts.push("no kube-proxy chains".to_string()),
    }
    match &d.tc_xdp_programs {
        _ if d.cilium => parts.push("Cilium BPF datapath".into()),
        Some(p) if !p.is_empty() => parts.push(format!("{} BPF programs on TC/XDP hooks", p.len())),
        Some(_) => parts.push("no BPF programs on TC/XDP hooks".into()),
        None => {}
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::xtables;

    /// Real `bpftool -j net show` (v7) in a namespace with an XDP program
    /// (generic mode) on v0 and a tc program on v1's clsact ingress.
    const BPFTOOL_NET: &str = r#"[{"xdp":[{"devname":"v0","ifindex":3,"mode":"generic","id":1199}],"tc":[{"devname":"v1","ifindex":2,"kind":"clsact/ingress","name":"xdp.o:[xdp]","id":1204}],"flow_dissector":[]}]"#;

    #[test]
    fn reads_bpftool_net_json_naming_xdp_programs_by_id() {
        let names = HashMap::from([(1199, "plumb_t_xdp".to_string())]);
        assert_eq!(
            parse_bpftool_net(BPFTOOL_NET, &names).unwrap(),
            [
                "plumb_t_xdp (id 1199) on v0 (xdp generic)",
                "xdp.o:[xdp] (id 1204) on v1 (clsact/ingress)"
            ]
        );
        assert_eq!(
            parse_bpftool_net(BPFTOOL_NET, &HashMap::new()).unwrap()[0],
            "? (id 1199) on v0 (xdp generic)"
        );
        assert!(parse_bpftool_net("not json", &names).is_err());
    }

    #[test]
    fn reads_proc_net_ip_vs() {
        let t = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\nTCP  0A600001:01BB rr\n  -> AC120002:1A0A      Masq    1      0          0\n  -> AC120003:1A0A      Masq    1      0          0\nUDP  0A60000A:0035 rr\n  -> 0A000105:0035      Masq    1      0          0\n";
        assert_eq!(
            parse_ip_vs(t),
            Ipvs {
                virtual_servers: 2,
                real_servers: 3
            }
        );
    }

    fn kube_proxy_iptables(services: usize) -> Ruleset {
        let mut text = String::from("# Generated by iptables-save v1.8.9 (nf_tables)\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n");
        for i in 0..services {
            text.push_str(&format!(
                ":KUBE-SVC-{i:016X} - [0:0]\n:KUBE-SEP-{i:016X} - [0:0]\n"
            ));
            text.push_str(&format!(
                "-A KUBE-SERVICES -d 10.96.{}.{}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i:016X}\n",
                i / 256,
                i % 256
            ));
            text.push_str(&format!(
                "-A KUBE-SVC-{i:016X} -j KUBE-SEP-{i:016X}\n-A KUBE-SEP-{i:016X} -p tcp -m tcp -j DNAT --to-destination 10.244.0.{}:80\n",
                i % 250
            ));
        }
        text.push_str("COMMIT\n");
        xtables::parse(&text, "iptables", "ip")
    }

    #[test]
    fn sizes_kube_proxy_iptables_mode_and_flags_a_large_one_with_evidence() {
        let rs = kube_proxy_iptables(3400);
        let run = crate::exec::fake::Fake::default().ok("bpftool -j net show", "[]");
        let (d, skipped) = detect(&rs, &[], &HashMap::new(), &run, false);
        assert!(skipped.is_empty());
        assert_eq!(
            (
                d.kube_proxy,
                d.services,
                d.endpoints,
                d.netfilter_rules,
                d.netfilter_chains
            ),
            (Some("iptables"), 3400, 3400, 10_201, 6802)
        );
        assert_eq!(d.tc_xdp_programs, Some(vec![]));
        let f = analyse(&d);
        assert_eq!(
            f[1].title,
            "kube-proxy in iptables mode with 10201 rules in 6802 chains"
        );
        assert_eq!(
            f[1].evidence,
            ["10201 netfilter rules in 6802 chains, 3400 service chains, 3400 endpoint chains"]
        );
        assert_eq!(f[1].data["services"], 3400);
        assert_eq!(
            analyse(&detect(&kube_proxy_iptables(10), &[], &HashMap::new(), &run, false).0).len(),
            1
        );
    }

    #[test]
    fn a_missing_bpftool_is_said_not_taken_for_no_programs() {
        let (d, skipped) = detect(
            &Ruleset::default(),
            &[],
            &HashMap::new(),
            &crate::exec::fake::Fake::default(),
            false,
        );
        assert_eq!(d.tc_xdp_programs, None);
        assert_eq!(
            skipped,
            [Skip::new("TC/XDP programs", "bpftool is not installed")]
        );
        assert_eq!(describe(&d), "no kube-proxy chains");
    }
}
