//! The audit report as text for a terminal: findings first, then what was
//! measured (the biggest chains, the fullest BPF maps), then what was
//! skipped. `-v` shows info findings and the full lists.

use crate::finding::Severity;
use crate::Report;

/// Rows of the measured lists shown without `-v`.
const SHORT: usize = 5;

/// The report as a table for a terminal.
pub fn render(r: &Report, verbose: bool) -> String {
    let mut s = String::new();
    let worth: Vec<_> = r
        .findings
        .iter()
        .filter(|f| verbose || f.severity > Severity::Info)
        .collect();
    let rules: usize = r.scopes.iter().map(|s| s.netfilter_rules).sum();
    s.push_str(&format!(
        "{} namespaces audited, {} netfilter rules, {} BPF maps; {} findings ({} shown{})\n",
        r.scopes.len(),
        rules,
        r.maps.len(),
        r.findings.len(),
        worth.len(),
        if verbose { "" } else { ", -v for info" }
    ));
    for f in worth {
        s.push_str(&format!("\n[{}] {}: {}\n", f.severity, f.check, f.title));
        if let Some(n) = &f.netns {
            s.push_str(&format!("    netns: {n}\n"));
        }
        for e in &f.evidence {
            s.push_str(&format!("    - {e}\n"));
        }
        if !f.advice.is_empty() {
            s.push_str(&format!("    → {}\n", f.advice));
        }
    }
    namespaces(&mut s, r);
    chains(&mut s, r, verbose);
    sets(&mut s, r, verbose);
    maps(&mut s, r, verbose);
    if !r.skipped.is_empty() {
        s.push_str("\nSKIPPED\n");
        for k in &r.skipped {
            s.push_str(&format!("  {}\n", k.line()));
        }
    }
    s
}

/// With more than one namespace, who owns each.
fn namespaces(s: &mut String, r: &Report) {
    if r.scopes.len() < 2 {
        return;
    }
    s.push_str("\nNAMESPACES\n");
    s.push_str(&format!(
        "  {:<20}  {:>10}  {:>6}  OWNER\n",
        "NETNS", "INODE", "RULES"
    ));
    for sc in &r.scopes {
        s.push_str(&format!(
            "  {:<20}  {:>10}  {:>6}  {}\n",
            sc.name,
            sc.inode,
            sc.netfilter_rules,
            sc.owner.as_ref().map_or("-", |o| o.text.as_str())
        ));
    }
}

fn limit_note(shown: usize, total: usize, what: &str) -> String {
    if shown < total {
        format!("the {shown} biggest of {total} {what}; -v for all")
    } else {
        format!("{total} {what}")
    }
}

fn chains(s: &mut String, r: &Report, verbose: bool) {
    let mut rows: Vec<(&str, &crate::netfilter::ChainSize)> = r
        .scopes
        .iter()
        .flat_map(|sc| sc.chains.iter().map(move |c| (sc.name.as_str(), c)))
        .filter(|(_, c)| c.rules > 0)
        .collect();
    if rows.is_empty() {
        return;
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.rules));
    let total = rows.len();
    if !verbose {
        rows.truncate(SHORT);
    }
    s.push_str(&format!(
        "\nCHAINS ({})\n",
        limit_note(rows.len(), total, "chains with rules")
    ));
    s.push_str(&format!(
        "  {:>6}  {:>10}  {:<20}  CHAIN\n",
        "RULES", "PACKETS", "NETNS"
    ));
    for (ns, c) in rows {
        s.push_str(&format!(
            "  {:>6}  {:>10}  {:<20}  {} {} {} ({})\n",
            c.rules,
            c.packets.map_or("-".to_string(), |p| p.to_string()),
            ns,
            c.family,
            c.table,
            c.chain,
            c.tool
        ));
    }
}

fn sets(s: &mut String, r: &Report, verbose: bool) {
    let mut rows: Vec<(&str, &crate::SetSize)> = r
        .scopes
        .iter()
        .flat_map(|sc| sc.sets.iter().map(move |x| (sc.name.as_str(), x)))
        .collect();
    if rows.is_empty() {
        return;
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.elements));
    let total = rows.len();
    if !verbose {
        rows.truncate(SHORT);
    }
    s.push_str(&format!(
        "\nNFT SETS AND MAPS ({})\n",
        limit_note(rows.len(), total, "sets and maps")
    ));
    s.push_str(&format!("  {:>8}  {:<20}  SET\n", "ELEMENTS", "NETNS"));
    for (ns, x) in rows {
        s.push_str(&format!(
            "  {:>8}  {:<20}  {} {} {} ({})\n",
            x.elements, ns, x.family, x.table, x.name, x.kind
        ));
    }
}

fn maps(s: &mut String, r: &Report, verbose: bool) {
    if r.maps.is_empty() {
        return;
    }
    let fill = |m: &crate::bpfmaps::MapSummary| match (m.entries, m.max_entries) {
        (Some(n), max) if max > 0 => n as f64 / f64::from(max),
        _ => -1.0,
    };
    let mut rows: Vec<_> = r.maps.iter().collect();
    if verbose {
        rows.sort_by_key(|m| m.id);
    } else {
        rows.sort_by(|a, b| fill(b).total_cmp(&fill(a)).then(a.id.cmp(&b.id)));
        rows.truncate(SHORT);
    }
    let note = if rows.len() < r.maps.len() {
        format!(
            "the {} fullest of {} on the node; -v for all",
            rows.len(),
            r.maps.len()
        )
    } else {
        format!("{} on the node", r.maps.len())
    };
    s.push_str(&format!("\nBPF MAPS ({note})\n"));
    s.push_str(&format!(
        "  {:>6}  {:<16}  {:<14}  {:>20}  USED BY\n",
        "ID", "NAME", "TYPE", "ENTRIES/MAX"
    ));
    for m in rows {
        let entries = match m.entries {
            Some(n) if m.max_entries > 0 => format!(
                "{}{n}/{} ({}%)",
                if m.partial { "≥" } else { "" },
                m.max_entries,
                n * 100 / u64::from(m.max_entries)
            ),
            _ => format!("-/{}", m.max_entries),
        };
        let users = if m.programs.is_empty() {
            "-".to_string()
        } else {
            m.programs.join(", ")
        };
        s.push_str(&format!(
            "  {:>6}  {:<16}  {:<14}  {:>20}  {users}\n",
            m.id, m.name, m.ty, entries
        ));
    }
}
