//! plumb-audit: find what is wrong with a node's datapath.
//!
//! Each check (netfilter, conntrack, bpf-maps, datapath, interfaces) reads
//! the kernel's state and turns it into [`finding::Finding`]s. Checks that
//! depend on a network namespace run inside it: commands through `nsenter
//! --net=`, so one audit can cover the host, a pod's namespace, or every
//! namespace on the node.

pub mod bpfmaps;
pub mod conntrack;
pub mod datapath;
pub mod finding;
pub mod interfaces;
pub mod netfilter;

use finding::{Finding, Severity};
use serde::Serialize;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown check '{0}'; checks are: netfilter, conntrack, bpf-maps, datapath, interfaces"
    )]
    UnknownCheck(String),
    #[error("cannot audit network namespace {}: {reason}", .path.display())]
    Netns { path: PathBuf, reason: String },
}

/// Runs shell commands in one network namespace (or the host's).
#[derive(Debug, Clone)]
pub struct Runner {
    netns: Option<PathBuf>,
}

impl Runner {
    pub fn host() -> Self {
        Runner { netns: None }
    }

    pub fn netns(path: PathBuf) -> Self {
        Runner { netns: Some(path) }
    }

    /// stdout of `cmd`, or its stderr's first line as the error.
    pub fn output(&self, cmd: &str) -> Result<String, String> {
        let mut c = match &self.netns {
            Some(p) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", p.display()))
                    .args(["sh", "-c", cmd]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.args(["-c", cmd]);
                c
            }
        };
        let out = c.output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(err.lines().next().unwrap_or("failed").to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub const CHECKS: &[&str] = &[
    "netfilter",
    "conntrack",
    "bpf-maps",
    "datapath",
    "interfaces",
];

#[derive(Debug, Clone)]
pub struct Options {
    pub only: Vec<String>,
    /// Audit this namespace instead of the host's.
    pub netns: Option<PathBuf>,
    /// Audit every network namespace on the node.
    pub all_netns: bool,
    /// Interval between the two samples of interface counters.
    pub sample: Duration,
    /// Time bound for counting one map's entries.
    pub map_budget: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            only: Vec::new(),
            netns: None,
            all_netns: false,
            sample: Duration::from_secs(1),
            map_budget: Duration::from_millis(200),
        }
    }
}

impl Options {
    pub fn check(&self) -> Result<(), Error> {
        for o in &self.only {
            if !CHECKS.contains(&o.as_str()) {
                return Err(Error::UnknownCheck(o.clone()));
            }
        }
        if let Some(p) = &self.netns {
            if !p.exists() {
                return Err(Error::Netns {
                    path: p.clone(),
                    reason: "no such file".into(),
                });
            }
        }
        Ok(())
    }

    fn wants(&self, check: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == check)
    }
}

/// A network namespace that was audited.
#[derive(Debug, Clone, Serialize)]
pub struct Scope {
    /// "host", a /run/netns name, or the path given.
    pub name: String,
    pub inode: u32,
    /// The pod or container that owns it, if known.
    pub owner: Option<String>,
    pub netfilter_rules: usize,
    pub notes: Vec<String>,
}

/// What an audit found, most severe first.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scopes: Vec<Scope>,
    pub findings: Vec<Finding>,
    pub maps: usize,
}

fn owner_name(w: &plumb_core::event::Workload) -> Option<String> {
    match (&w.namespace, &w.pod, &w.container_id) {
        (Some(ns), Some(p), _) => Some(format!("pod {ns}/{p}")),
        (_, _, Some(c)) => Some(format!("container {}", &c[..c.len().min(12)])),
        _ => w.pod_uid.as_ref().map(|u| format!("pod uid {u}")),
    }
}

/// The namespaces to audit: (label, path, inode, owner).
fn scopes(opts: &Options) -> Vec<(String, Option<PathBuf>, u32, Option<String>)> {
    let host_inode = std::fs::read_link("/proc/1/ns/net")
        .ok()
        .and_then(|l| {
            l.to_string_lossy()
                .trim_start_matches("net:[")
                .trim_end_matches(']')
                .parse()
                .ok()
        })
        .unwrap_or(0);
    if let Some(p) = &opts.netns {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(p).map(|m| m.ino() as u32).unwrap_or(0);
        return vec![(p.display().to_string(), Some(p.clone()), inode, None)];
    }
    let mut out = vec![("host".to_string(), None, host_inode, None)];
    if opts.all_netns {
        let mut net = plumb_core::enrich::netns::NetResolver::new();
        net.rescan();
        let mut infos = net.all();
        infos.sort_by_key(|i| i.inode);
        for i in infos.into_iter().filter(|i| !i.host) {
            let path = match (&i.name, i.pid) {
                (Some(n), _) => PathBuf::from("/run/netns").join(n),
                (None, Some(pid)) => PathBuf::from(format!("/proc/{pid}/ns/net")),
                _ => continue,
            };
            let label = i
                .name
                .clone()
                .unwrap_or_else(|| format!("netns {}", i.inode));
            out.push((label, Some(path), i.inode, owner_name(&i.workload)));
        }
    }
    out
}

/// Run the audit.
pub fn run(opts: &Options) -> Result<Report, Error> {
    opts.check()?;
    let maps = if opts.wants("bpf-maps") || opts.wants("datapath") {
        bpfmaps::collect(opts.map_budget)
    } else {
        Vec::new()
    };
    let mut findings = Vec::new();
    if opts.wants("bpf-maps") {
        findings.extend(bpfmaps::analyse(&maps));
    }
    let mut report_scopes = Vec::new();
    for (label, path, inode, owner) in scopes(opts) {
        let run = match &path {
            Some(p) => Runner::netns(p.clone()),
            None => Runner::host(),
        };
        let mut local = Vec::new();
        let mut notes = Vec::new();
        let mut rules = 0;
        if opts.wants("netfilter") || opts.wants("datapath") {
            let (rs, n) = netfilter::collect(&run);
            notes.extend(n);
            rules = netfilter::rule_count(&rs);
            if opts.wants("netfilter") {
                local.extend(netfilter::analyse(&rs));
            }
            if opts.wants("datapath") && (path.is_none() || rules > 0) {
                local.extend(datapath::analyse(&datapath::detect(&rs, &maps, &run)));
            }
        }
        if opts.wants("conntrack") {
            match conntrack::collect(&run) {
                Some(c) => local.extend(conntrack::analyse(&c)),
                None => notes.push("conntrack: not loaded in this namespace".into()),
            }
        }
        if opts.wants("interfaces") {
            if let Some((a, b)) = interfaces::collect(&run, opts.sample) {
                local.extend(interfaces::analyse(&a, &b, opts.sample));
            }
        }
        let where_ = match &owner {
            Some(o) => format!("{label} ({o})"),
            None => label.clone(),
        };
        for f in &mut local {
            f.netns = Some(where_.clone());
        }
        findings.extend(local);
        report_scopes.push(Scope {
            name: label,
            inode,
            owner,
            netfilter_rules: rules,
            notes,
        });
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Ok(Report {
        scopes: report_scopes,
        findings,
        maps: maps.len(),
    })
}

/// The report as a table for a terminal.
pub fn render(r: &Report, verbose: bool) -> String {
    let mut s = String::new();
    let worth: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| verbose || f.severity > Severity::Info)
        .collect();
    s.push_str(&format!(
        "{} namespaces audited, {} BPF maps; {} findings ({} shown{})\n",
        r.scopes.len(),
        r.maps,
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
    s
}
