//! plumb-audit: find what is wrong with a node's datapath.
//!
//! Each check (netfilter, conntrack, bpf-maps, datapath, interfaces) reads
//! the kernel's state and turns it into [`finding::Finding`]s, and the
//! report also carries what was measured (chain sizes, every BPF map) so a
//! reader can see what "no finding" was based on. Checks that depend on a
//! network namespace run inside it (commands through `nsenter --net=`), so
//! one audit covers the host, a pod's namespace, or every namespace on the
//! node.
//!
//! Counters that only mean something when they move (interface drops,
//! conntrack drops) are read twice. An [`Audit`] takes the first reading
//! of every namespace when it starts, does the slow reading (rulesets,
//! maps) in between, and the second reading when it finishes, so the
//! whole audit takes about its sample interval however many namespaces
//! there are, and a caller (`plumb doctor`) can run it alongside tracing.

pub mod bpfmaps;
pub mod conntrack;
pub mod datapath;
pub mod exec;
pub mod finding;
pub mod interfaces;
pub mod netfilter;
pub mod owner;
pub mod render;

pub use exec::{Exec, Runner};
pub use render::render;

use finding::{Finding, Skip};
use plumb_core::enrich::MetadataSource;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown check '{0}'; checks are: netfilter, conntrack, bpf-maps, datapath, interfaces"
    )]
    UnknownCheck(String),
    #[error("cannot open network namespace {}: {source}", .path.display())]
    NetnsOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a network namespace", .path.display())]
    NotNetns { path: PathBuf },
}

pub const CHECKS: &[&str] = &[
    "netfilter",
    "conntrack",
    "bpf-maps",
    "datapath",
    "interfaces",
];

#[derive(Clone)]
pub struct Options {
    pub only: Vec<String>,
    /// Audit this namespace instead of the host's.
    pub netns: Option<PathBuf>,
    /// Audit every network namespace on the node.
    pub all_netns: bool,
    /// Interval between the two readings of interface and conntrack
    /// counters.
    pub sample: Duration,
    /// Time bound for counting one map's entries.
    pub map_budget: Duration,
    /// Where pod and container names come from (container runtimes, the
    /// agent's pod watcher).
    pub sources: Vec<Arc<dyn MetadataSource>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("only", &self.only)
            .field("netns", &self.netns)
            .field("all_netns", &self.all_netns)
            .field("sample", &self.sample)
            .field("map_budget", &self.map_budget)
            .field(
                "sources",
                &self.sources.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            only: Vec::new(),
            netns: None,
            all_netns: false,
            sample: Duration::from_secs(1),
            map_budget: Duration::from_millis(200),
            sources: Vec::new(),
        }
    }
}

/// NS_GET_NSTYPE: the type of namespace an nsfs file descriptor refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Whether `path` is a network namespace file.
fn check_netns(path: &std::path::Path) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).map_err(|source| Error::NetnsOpen {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the ioctl only reads the descriptor's namespace type.
    let t = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    if t != libc::CLONE_NEWNET {
        return Err(Error::NotNetns {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

impl Options {
    pub fn check(&self) -> Result<(), Error> {
        for o in &self.only {
            if !CHECKS.contains(&o.as_str()) {
                return Err(Error::UnknownCheck(o.clone()));
            }
        }
        if let Some(p) = &self.netns {
            check_netns(p)?;
        }
        Ok(())
    }

    fn wants(&self, check: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == check)
    }
}

pub(crate) fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// An nft set or map of a namespace, with its element count.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SetSize {
    pub family: &'static str,
    pub table: String,
    pub name: String,
    pub kind: &'static str,
    pub elements: usize,
}

/// A network namespace that was audited, and what was measured in it.
#[derive(Debug, Clone, Serialize)]
pub struct Scope {
    /// "host", a /run/netns name, "netns INODE", or the path given.
    pub name: String,
    pub inode: u32,
    pub host: bool,
    /// The pod, container or process that owns it, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<owner::Owner>,
    pub netfilter_rules: usize,
    /// Every chain with its rule count.
    pub chains: Vec<netfilter::ChainSize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sets: Vec<SetSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datapath: Option<datapath::Datapath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<conntrack::Conntrack>,
    /// What could not be looked at here, and why.
    pub skipped: Vec<Skip>,
}

impl Scope {
    /// How findings name the namespace: its label and its owner.
    pub fn display(&self) -> String {
        match &self.owner {
            Some(o) => format!("{} ({})", self.name, o.text),
            None => self.name.clone(),
        }
    }
}

/// One skipped capability and the namespaces it was skipped in.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Skipped {
    pub what: String,
    pub why: String,
    pub netns: Vec<String>,
}

impl Skipped {
    pub fn line(&self) -> String {
        let mut s = format!("skipped: {}, {}", self.what, self.why);
        match self.netns.len() {
            0 => {}
            1 => s.push_str(&format!(" (in {})", self.netns[0])),
            n => s.push_str(&format!(" (in {n} namespaces)")),
        }
        s
    }
}

/// What an audit found and measured; findings most severe first.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scopes: Vec<Scope>,
    pub findings: Vec<Finding>,
    /// Every BPF map on the node.
    pub maps: Vec<bpfmaps::MapSummary>,
    /// Possible CPUs (the LRU eviction slack depends on it).
    pub cpus: u64,
    /// How long the audit took; each namespace's two counter readings
    /// are about this far apart (its conntrack `interval` says exactly).
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Skipped capabilities over all namespaces.
    pub skipped: Vec<Skipped>,
}

/// A namespace to audit.
struct Target {
    label: String,
    path: Option<PathBuf>,
    inode: u32,
    host: bool,
    owner: Option<owner::Owner>,
}

impl Target {
    fn runner(&self) -> Runner {
        match &self.path {
            Some(p) => Runner::netns(p.clone()),
            None => Runner::host(),
        }
    }
}

fn ns_inode(link: &std::path::Path) -> Option<u32> {
    std::fs::read_link(link).ok().and_then(|l| {
        l.to_string_lossy()
            .strip_prefix("net:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
}

fn targets(opts: &Options) -> Vec<Target> {
    // The host's namespace is init's; where /proc/1 cannot be read (a
    // sandbox whose pid 1 belongs to someone else), the one we run in.
    let host_inode = ns_inode(std::path::Path::new("/proc/1/ns/net"))
        .or_else(|| ns_inode(std::path::Path::new("/proc/self/ns/net")))
        .unwrap_or(0);
    if let Some(p) = &opts.netns {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(p).map(|m| m.ino() as u32).unwrap_or(0);
        return vec![Target {
            label: p.display().to_string(),
            path: Some(p.clone()),
            inode,
            host: inode == host_inode,
            owner: None,
        }];
    }
    let mut out = vec![Target {
        label: "host".into(),
        path: None,
        inode: host_inode,
        host: true,
        owner: None,
    }];
    if opts.all_netns {
        let mut net = plumb_core::enrich::netns::NetResolver::new();
        net.rescan();
        let mut infos = net.all();
        infos.sort_by_key(|i| i.inode);
        for i in infos
            .into_iter()
            .filter(|i| !i.host && i.inode != host_inode)
        {
            let path = match (&i.name, i.pid) {
                (Some(n), _) => PathBuf::from("/run/netns").join(n),
                (None, Some(pid)) => PathBuf::from(format!("/proc/{pid}/ns/net")),
                _ => continue,
            };
            out.push(Target {
                label: i
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("netns {}", i.inode)),
                path: Some(path),
                inode: i.inode,
                host: false,
                owner: owner::of_netns(&i, &opts.sources),
            });
        }
    }
    out
}

/// First readings of one namespace's moving counters.
struct FirstReading {
    at: Instant,
    interfaces: Option<Result<interfaces::Counters, Skip>>,
    conntrack: Option<Result<conntrack::Sample, Skip>>,
}

/// What the slow part of the audit read in one namespace.
struct Collected {
    ruleset: Option<netfilter::Ruleset>,
    datapath: Option<datapath::Datapath>,
    skipped: Vec<Skip>,
}

/// An audit in progress: started (first readings taken), collected
/// (rulesets and maps read), finished (second readings, findings).
pub struct Audit {
    opts: Options,
    targets: Vec<Target>,
    started: Instant,
    first: Vec<FirstReading>,
    maps: Vec<bpfmaps::MapSummary>,
    collected: Vec<Collected>,
}

impl Audit {
    /// Check the options, find the namespaces and take the first readings.
    pub fn start(opts: &Options) -> Result<Audit, Error> {
        opts.check()?;
        let targets = targets(opts);
        let started = Instant::now();
        let first = targets
            .iter()
            .map(|t| {
                let run = t.runner();
                FirstReading {
                    at: Instant::now(),
                    interfaces: opts.wants("interfaces").then(|| interfaces::sample(&run)),
                    conntrack: opts.wants("conntrack").then(|| conntrack::sample(&run)),
                }
            })
            .collect();
        Ok(Audit {
            opts: opts.clone(),
            targets,
            started,
            first,
            maps: Vec::new(),
            collected: Vec::new(),
        })
    }

    /// Namespaces being audited.
    pub fn namespaces(&self) -> usize {
        self.targets.len()
    }

    /// Read the rulesets, the BPF maps and the datapath of every namespace.
    pub fn collect(&mut self) {
        let o = &self.opts;
        if o.wants("bpf-maps") || o.wants("datapath") {
            self.maps = bpfmaps::collect(o.map_budget);
        }
        let programs = if o.wants("datapath") {
            datapath::program_names()
        } else {
            Default::default()
        };
        self.collected = self
            .targets
            .iter()
            .map(|t| {
                let run = t.runner();
                let mut skipped = Vec::new();
                let mut ruleset = None;
                let mut dp = None;
                if o.wants("netfilter") || o.wants("datapath") {
                    let (rs, s) = netfilter::collect(&run);
                    skipped.extend(s);
                    if o.wants("datapath") {
                        let (d, s) = datapath::detect(&rs, &self.maps, &programs, &run, t.host);
                        skipped.extend(s);
                        dp = Some(d);
                    }
                    ruleset = Some(rs);
                }
                Collected {
                    ruleset,
                    datapath: dp,
                    skipped,
                }
            })
            .collect();
    }

    /// Wait until the sample interval has passed since [`Audit::start`] (or
    /// `stop` is set), take the second readings and write the report.
    pub fn finish(mut self, stop: &AtomicBool) -> Report {
        if self.collected.len() != self.targets.len() {
            self.collect();
        }
        while self.started.elapsed() < self.opts.sample && !stop.load(Ordering::Relaxed) {
            let left = self.opts.sample.saturating_sub(self.started.elapsed());
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        let o = &self.opts;
        let cpus = bpfmaps::possible_cpus();
        let mut findings = Vec::new();
        if o.wants("bpf-maps") {
            findings.extend(bpfmaps::analyse(&self.maps, cpus));
        }
        let mut scopes = Vec::new();
        let parts = self.targets.into_iter().zip(self.first).zip(self.collected);
        for ((t, first), col) in parts {
            let run = t.runner();
            let mut local = Vec::new();
            let mut skipped = col.skipped;
            let mut scope = Scope {
                name: t.label.clone(),
                inode: t.inode,
                host: t.host,
                owner: t.owner.clone(),
                netfilter_rules: 0,
                chains: Vec::new(),
                sets: Vec::new(),
                datapath: None,
                conntrack: None,
                skipped: Vec::new(),
            };
            if let Some(rs) = &col.ruleset {
                scope.netfilter_rules = netfilter::rule_count(rs);
                scope.chains = netfilter::chain_sizes(rs);
                scope.sets = rs
                    .tables
                    .iter()
                    .flat_map(|tb| {
                        tb.sets.iter().map(move |s| SetSize {
                            family: tb.family,
                            table: tb.name.clone(),
                            name: s.name.clone(),
                            kind: s.kind,
                            elements: s.elements,
                        })
                    })
                    .collect();
                if o.wants("netfilter") {
                    local.extend(netfilter::analyse(rs));
                }
            }
            if let Some(d) = col.datapath {
                if t.host || !datapath::is_empty(&d) {
                    local.extend(datapath::analyse(&d));
                }
                scope.datapath = Some(d);
            }
            match first.conntrack {
                Some(Ok(before)) => match conntrack::sample(&run) {
                    Ok(after) => {
                        let c = conntrack::Conntrack {
                            before,
                            after,
                            interval: first.at.elapsed(),
                        };
                        local.extend(conntrack::analyse(&c));
                        scope.conntrack = Some(c);
                    }
                    Err(s) => skipped.push(s),
                },
                Some(Err(s)) => skipped.push(s),
                None => {}
            }
            match first.interfaces {
                Some(Ok(before)) => match interfaces::sample(&run) {
                    Ok(after) => {
                        local.extend(interfaces::analyse(&before, &after, first.at.elapsed()))
                    }
                    Err(s) => skipped.push(s),
                },
                Some(Err(s)) => skipped.push(s),
                None => {}
            }
            // A namespace deleted while we looked (a pod that went away)
            // fails every command: say that once instead.
            if t.path.as_ref().is_some_and(|p| !p.exists()) {
                local.clear();
                skipped = vec![Skip::new(
                    "this namespace",
                    "it was deleted during the audit",
                )];
            }
            let where_ = scope.display();
            for f in &mut local {
                f.netns = Some(where_.clone());
            }
            findings.extend(local);
            skipped.sort();
            skipped.dedup();
            scope.skipped = skipped;
            scopes.push(scope);
        }
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        let skipped = summarise_skips(&scopes);
        Report {
            scopes,
            findings,
            maps: self.maps,
            cpus,
            duration: self.started.elapsed(),
            skipped,
        }
    }
}

/// The same skip in many namespaces is one line naming them.
fn summarise_skips(scopes: &[Scope]) -> Vec<Skipped> {
    let mut out: Vec<Skipped> = Vec::new();
    for s in scopes {
        for k in &s.skipped {
            match out.iter_mut().find(|o| o.what == k.what && o.why == k.why) {
                Some(o) => o.netns.push(s.name.clone()),
                None => out.push(Skipped {
                    what: k.what.clone(),
                    why: k.why.clone(),
                    netns: vec![s.name.clone()],
                }),
            }
        }
    }
    out
}

/// Run a whole audit.
pub fn run(opts: &Options) -> Result<Report, Error> {
    let mut a = Audit::start(opts)?;
    a.collect();
    Ok(a.finish(&AtomicBool::new(false)))
}
