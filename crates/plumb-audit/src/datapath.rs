//! Which datapath a node runs: kube-proxy in iptables, IPVS or nftables
//! mode (from the chains present), or a BPF datapath such as Cilium (BPF
//! programs on TC/XDP hooks, its maps), and how big each is.

use crate::bpfmaps::MapSummary;
use crate::finding::{Finding, Severity};
use crate::netfilter::{rule_count, Ruleset};
use crate::Runner;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Datapath {
    /// "iptables", "ipvs", "nftables", or none.
    pub kube_proxy: Option<&'static str>,
    pub netfilter_rules: usize,
    /// BPF programs attached to TC or XDP hooks of this namespace's interfaces.
    pub tc_xdp_programs: Vec<String>,
    pub cilium: bool,
}

/// Names of programs on TC/XDP hooks from `bpftool -j net show`.
pub fn parse_bpftool_net(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let mut out = Vec::new();
    for section in v.as_array().into_iter().flatten() {
        for key in ["xdp", "tc"] {
            for p in section[key].as_array().into_iter().flatten() {
                let dev = p["devname"].as_str().unwrap_or("?");
                let name = p["name"].as_str().unwrap_or("?");
                let kind = p["kind"].as_str().unwrap_or(key);
                out.push(format!("{name} on {dev} ({kind})"));
            }
        }
    }
    out
}

pub fn detect(rs: &Ruleset, maps: &[MapSummary], run: &Runner) -> Datapath {
    let has_chain = |n: &str| {
        rs.tables
            .iter()
            .any(|t| t.chains.iter().any(|c| c.name == n))
    };
    let kube_proxy = if rs
        .tables
        .iter()
        .any(|t| t.tool == "nft" && t.name == "kube-proxy")
    {
        Some("nftables")
    } else if has_chain("KUBE-IPVS-FILTER") || has_chain("KUBE-IPVS-OUT-FILTER") {
        Some("ipvs")
    } else if has_chain("KUBE-SERVICES") {
        Some("iptables")
    } else {
        None
    };
    let tc_xdp_programs = run
        .output("bpftool -j net show")
        .map(|j| parse_bpftool_net(&j))
        .unwrap_or_default();
    Datapath {
        kube_proxy,
        netfilter_rules: rule_count(rs),
        cilium: maps.iter().any(|m| m.name.starts_with("cilium_"))
            || tc_xdp_programs.iter().any(|p| p.starts_with("cil_")),
        tc_xdp_programs,
    }
}

pub fn analyse(d: &Datapath) -> Vec<Finding> {
    let mut f = Finding::new(Severity::Info, "datapath", describe(d));
    if !d.tc_xdp_programs.is_empty() {
        f = f.evidence(format!("BPF on TC/XDP: {}", d.tc_xdp_programs.join(", ")));
    }
    f = f
        .evidence(format!("{} netfilter rules", d.netfilter_rules))
        .advice("`plumb audit --only netfilter` lists the chains.");
    let mut out = vec![f.data(serde_json::to_value(d).unwrap_or_default())];
    if d.kube_proxy == Some("iptables") && d.netfilter_rules >= 10_000 {
        out.push(
            Finding::new(Severity::Warning, "datapath", format!("kube-proxy in iptables mode with {} rules", d.netfilter_rules))
                .advice("Rule updates and per-packet walks grow with services; consider IPVS/nftables mode or an eBPF datapath."),
        );
    }
    out
}

fn describe(d: &Datapath) -> String {
    let mut parts = Vec::new();
    match d.kube_proxy {
        Some(m) => parts.push(format!("kube-proxy in {m} mode")),
        None => parts.push("no kube-proxy chains".to_string()),
    }
    if d.cilium {
        parts.push("Cilium BPF datapath".into());
    } else if !d.tc_xdp_programs.is_empty() {
        parts.push(format!(
            "{} BPF programs on TC/XDP hooks",
            d.tc_xdp_programs.len()
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bpftool_net_json() {
        let j = r#"[{"xdp":[{"devname":"eth0","ifindex":2,"mode":"driver","id":7,"name":"xdp_prog"}],"tc":[{"devname":"lxc1","ifindex":9,"kind":"clsact/ingress","name":"cil_from_container","prog_id":12}],"flow_dissector":[]}]"#;
        assert_eq!(
            parse_bpftool_net(j),
            [
                "xdp_prog on eth0 (xdp)",
                "cil_from_container on lxc1 (clsact/ingress)"
            ]
        );
    }
}
