//! `plumb doctor`: the incident question in one command. For `--duration`
//! it watches drops, retransmits and resets; meanwhile it audits every
//! network namespace (first counter readings at the start, second at the
//! end) and, once the audit's slow part is done, takes a CPU profile (of
//! everything but doctor's own threads, unless `--include-self`). Then
//! it prints one prioritised report in which every item points to the
//! command that shows more. The whole run takes about `--duration`.
//!
//! The JSON report holds everything; the table keeps each section short
//! and says how many more items there are.

use plumb_audit::finding::{Finding, Severity};
use plumb_audit::Skipped;
use plumb_core::enrich::Enricher;
use plumb_core::event::Event;
use plumb_core::gadgets::{self, net::Flow, Body};
use plumb_core::runner::{self, Control, RunOptions};
use plumb_core::sink::Sink;
use serde::Serialize;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// How long to watch drops, retransmits and resets (the audit and the
    /// CPU profile run within it).
    #[arg(long, default_value = "10s", value_parser = super::common::parse_duration)]
    pub duration: Duration,
    /// Output format.
    #[arg(short, long, value_parser = ["table", "json"], default_value = "table")]
    pub output: String,
    /// Keep plumb's own threads in the hottest functions (left out by
    /// default, in the kernel).
    #[arg(long)]
    pub include_self: bool,
}

/// One party a count is about, and its part of the count.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hit {
    pub who: String,
    pub count: u64,
}

/// A count with what it is about.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Count {
    pub key: String,
    pub count: u64,
    /// Percent of all CPU samples (profile rows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// The pods / namespaces / processes it hit, busiest first.
    pub hit: Vec<Hit>,
    pub more: String,
}

#[derive(Debug, Default, Serialize)]
pub struct DoctorReport {
    pub duration_s: f64,
    /// Network namespaces the audit covered.
    pub namespaces: usize,
    /// Every finding above info level, most severe first.
    pub findings: Vec<Finding>,
    /// Info-level findings left out (`plumb audit --all-netns -v`).
    pub info_findings: usize,
    /// Every drop reason seen, most frequent first.
    pub drops: Vec<Count>,
    pub retransmits: Vec<Count>,
    pub resets: Vec<Count>,
    pub hot_kernel_functions: Vec<Count>,
    pub hot_user_functions: Vec<Count>,
    pub profile_samples: u64,
    /// What could not be looked at, and why.
    pub skipped: Vec<Skipped>,
    /// Events the tracers' ring buffers could not hold.
    pub lost_events: u64,
    /// CPU samples the kernel could not deliver.
    pub lost_samples: u64,
}

/// Who a side of a flow is, as briefly as it can be said.
pub fn side(flow: &Flow, dst: bool) -> String {
    let (pod, ns, netns) = if dst {
        (&flow.dst_pod, &flow.dst_namespace, flow.dst_netns)
    } else {
        (&flow.src_pod, &flow.src_namespace, flow.src_netns)
    };
    let sides = &flow.sides[dst as usize];
    match (pod, ns) {
        (Some(p), Some(n)) => format!("pod {n}/{p}"),
        _ => match (&sides.netns_name, netns) {
            (Some(name), _) => format!("netns {name}"),
            (None, Some(i)) => format!("netns {i}"),
            _ => {
                let addr = if dst { flow.daddr } else { flow.saddr };
                addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
            }
        },
    }
}

/// Counts per key and, within each, per affected party.
#[derive(Default)]
struct Tally(HashMap<String, (u64, HashMap<String, u64>)>);

impl Tally {
    fn add(&mut self, key: String, hit: String) {
        let e = self.0.entry(key).or_default();
        e.0 += 1;
        *e.1.entry(hit).or_default() += 1;
    }

    /// Every key, most frequent first.
    fn rows(&self, more: impl Fn(&str) -> String) -> Vec<Count> {
        let mut v: Vec<Count> = self
            .0
            .iter()
            .map(|(k, (c, hits))| {
                let mut hit: Vec<Hit> = hits
                    .iter()
                    .map(|(who, count)| Hit {
                        who: who.clone(),
                        count: *count,
                    })
                    .collect();
                hit.sort_by(|a, b| b.count.cmp(&a.count).then(a.who.cmp(&b.who)));
                Count {
                    key: k.clone(),
                    count: *c,
                    share: None,
                    hit,
                    more: more(k),
                }
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.key.cmp(&b.key)));
        v
    }
}

struct TallySink {
    tally: Arc<Mutex<Tally>>,
    lost: Arc<Mutex<u64>>,
}

impl Sink for TallySink {
    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        let (key, hit) = match &ev.body {
            Body::Drop(d) => (d.reason.clone(), side(&d.flow, true)),
            Body::Retrans(r) => (side(&r.flow, false), format!("to {}", side(&r.flow, true))),
            Body::Reset(r) => (
                format!(
                    "{} by {}",
                    serde_json::to_value(r.direction)
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or("?"),
                    side(&r.flow, false)
                ),
                format!("to {}", side(&r.flow, true)),
            ),
            _ => return Ok(()),
        };
        if let Ok(mut t) = self.tally.lock() {
            t.add(key, hit);
        }
        Ok(())
    }

    fn lost(&mut self, _g: &str, n: u64, _at: std::time::SystemTime) -> std::io::Result<()> {
        if let Ok(mut l) = self.lost.lock() {
            *l += n;
        }
        Ok(())
    }
}

/// A gadget watching on its thread: its tally, its lost count, its thread.
type Watcher = (
    Arc<Mutex<Tally>>,
    Arc<Mutex<u64>>,
    JoinHandle<Result<(), String>>,
);

/// Run gadget `name` until `end`, tallying what it sees. `settled` counts
/// up once it is attached or has failed.
fn watch(name: &'static str, end: Arc<AtomicBool>, settled: Arc<AtomicUsize>) -> Watcher {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let lost = Arc::new(Mutex::new(0));
    let (t2, l2) = (tally.clone(), lost.clone());
    let h = std::thread::spawn(move || {
        let on_ready = settled.clone();
        let r = (|| {
            let desc = gadgets::find(name).map_err(|e| e.to_string())?;
            gadgets::availability(desc)?;
            let mut enricher = Enricher::new(super::trace::local_sources());
            let mut sink = TallySink {
                tally: t2,
                lost: l2,
            };
            runner::run(
                desc,
                &RunOptions::default(),
                &mut enricher,
                &mut sink,
                Control {
                    stop: end,
                    on_ready: Some(Box::new(move |_| {
                        on_ready.fetch_add(1, Ordering::SeqCst);
                    })),
                },
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        })();
        if r.is_err() {
            settled.fetch_add(1, Ordering::SeqCst);
        }
        r
    });
    (tally, lost, h)
}

/// Progress on stderr: a line rewritten in place on a terminal; one line
/// per step otherwise (so logs and tests can follow it).
struct Progress {
    tty: bool,
}

impl Progress {
    fn status(&self, msg: &str) {
        if self.tty {
            eprint!("\r\x1b[2K{msg}");
        }
    }

    fn step(&self, msg: &str) {
        if self.tty {
            eprint!("\r\x1b[2K{msg}");
        } else {
            eprintln!("{msg}");
        }
    }

    fn done(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}

const GADGETS: [&str; 3] = ["drop", "retrans", "reset"];
/// The longest CPU profile doctor takes.
const PROFILE_MAX: Duration = Duration::from_secs(5);

/// When the profile starts: once the audit has read the rulesets and maps
/// (so its `iptables-save` runs are not what we profile), at the latest
/// halfway through; it ends half a second before the run does, leaving
/// time to symbolize.
fn profile_window(d: Duration, elapsed: Duration) -> Option<Duration> {
    let left = d
        .checked_sub(elapsed)?
        .checked_sub(Duration::from_millis(500))?;
    let len = left.min(PROFILE_MAX);
    (len >= Duration::from_secs(1)).then_some(len)
}

pub fn collect(a: &DoctorArgs) -> anyhow::Result<DoctorReport> {
    plumb_core::preflight::check_all()?;
    let signal = super::common::stop_on_signals()?;
    let progress = Progress {
        tty: std::io::stderr().is_terminal(),
    };
    let d = a.duration;
    let started = Instant::now();
    // Set when the time is up (or on a signal): every part stops.
    let end = Arc::new(AtomicBool::new(false));
    let settled = Arc::new(AtomicUsize::new(0));
    let watchers: Vec<_> = GADGETS
        .into_iter()
        .map(|g| (g, watch(g, end.clone(), settled.clone())))
        .collect();

    let audited = Arc::new(AtomicUsize::new(0));
    let collected = Arc::new(AtomicBool::new(false));
    let audit: JoinHandle<Result<plumb_audit::Report, plumb_audit::Error>> = {
        let (end, collected, audited) = (end.clone(), collected.clone(), audited.clone());
        let opts = plumb_audit::Options {
            all_netns: true,
            sample: d,
            sources: super::trace::local_sources(),
            ..Default::default()
        };
        std::thread::spawn(move || {
            let mut audit = plumb_audit::Audit::start(&opts);
            if let Ok(a) = audit.as_mut() {
                audited.store(a.namespaces(), Ordering::SeqCst);
                a.collect();
            }
            collected.store(true, Ordering::SeqCst);
            audit.map(|a| a.finish(&end))
        })
    };
    let profile: JoinHandle<Result<super::profile_hook::Hot, String>> = {
        let (end, collected, include_self) = (end.clone(), collected.clone(), a.include_self);
        std::thread::spawn(move || {
            while !collected.load(Ordering::SeqCst)
                && started.elapsed() < d / 2
                && !end.load(Ordering::SeqCst)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let Some(len) = profile_window(d, started.elapsed()) else {
                return Err(format!(
                    "no time left for it after the audit ({:.1}s of {:.1}s); use a longer --duration",
                    started.elapsed().as_secs_f64(),
                    d.as_secs_f64()
                ));
            };
            super::profile_hook::hot_functions(len, &end, 10, include_self)
        })
    };

    let mut said_attached = false;
    let mut said_collected = false;
    while started.elapsed() < d && !signal.load(Ordering::Relaxed) {
        if !said_attached && settled.load(Ordering::SeqCst) >= GADGETS.len() {
            said_attached = true;
            progress.step("plumb doctor: tracers attached, watching drops, retransmits and resets");
        }
        if !said_collected && collected.load(Ordering::SeqCst) {
            said_collected = true;
            progress.step(&format!(
                "plumb doctor: audit read {} network namespaces; profiling CPUs",
                audited.load(Ordering::SeqCst)
            ));
        }
        progress.status(&format!(
            "plumb doctor: {:.0}s of {:.0}s: watching drops, retransmits and resets; {}",
            started.elapsed().as_secs_f64(),
            d.as_secs_f64(),
            if collected.load(Ordering::SeqCst) {
                "profiling CPUs"
            } else {
                "auditing netfilter, conntrack, BPF maps, interfaces"
            }
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    end.store(true, Ordering::SeqCst);

    let mut report = DoctorReport::default();
    for (name, (tally, lost, h)) in watchers {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => report.skipped.push(skip(&format!("{name} tracing"), why)),
            Err(_) => report.skipped.push(skip(
                &format!("{name} tracing"),
                "its thread panicked".into(),
            )),
        }
        report.lost_events += *lost.lock().unwrap_or_else(|e| e.into_inner());
        let t = tally.lock().unwrap_or_else(|e| e.into_inner());
        match name {
            "drop" => report.drops = t.rows(|k| format!("plumb trace drop --reason {k} --stack")),
            "retrans" => report.retransmits = t.rows(|_| "plumb trace retrans --summary 5s".into()),
            _ => report.resets = t.rows(|_| "plumb trace reset".into()),
        }
    }
    match audit.join() {
        Ok(Ok(r)) => {
            report.namespaces = r.scopes.len();
            let (worth, info): (Vec<Finding>, Vec<Finding>) = r
                .findings
                .into_iter()
                .partition(|f| f.severity > Severity::Info);
            report.findings = worth;
            report.info_findings = info.len();
            report.skipped.extend(r.skipped);
        }
        Ok(Err(e)) => report.skipped.push(skip("audit", e.to_string())),
        Err(_) => report
            .skipped
            .push(skip("audit", "its thread panicked".into())),
    }
    match profile.join() {
        Ok(Ok(hot)) => {
            report.hot_kernel_functions = hot.kernel;
            report.hot_user_functions = hot.user;
            report.profile_samples = hot.samples;
            report.lost_samples = hot.lost;
        }
        Ok(Err(why)) => report.skipped.push(skip("CPU profile", why)),
        Err(_) => report
            .skipped
            .push(skip("CPU profile", "its thread panicked".into())),
    }
    progress.done();
    report.duration_s = started.elapsed().as_secs_f64();
    Ok(report)
}

fn skip(what: &str, why: String) -> Skipped {
    Skipped {
        what: what.to_string(),
        why,
        netns: Vec::new(),
    }
}

/// Findings the table shows: every critical one, then warnings up to ten.
const FINDINGS_SHOWN: usize = 10;
/// Rows per section in the table.
const ROWS: usize = 5;
/// Parties named per row.
const HITS: usize = 3;

fn hits(c: &Count) -> String {
    let mut parts: Vec<String> = c
        .hit
        .iter()
        .take(HITS)
        .map(|h| format!("{} ({})", h.who, h.count))
        .collect();
    if c.hit.len() > HITS {
        parts.push(format!("{} more", c.hit.len() - HITS));
    }
    parts.join(", ")
}

fn section(s: &mut String, title: &str, v: &[Count], empty: &str, more: &str) {
    s.push_str(&format!("\n{title}\n"));
    if v.is_empty() {
        s.push_str(&format!("  {empty}\n"));
    }
    for c in v.iter().take(ROWS) {
        let share = c.share.map(|p| format!(" {p:>5.1}%")).unwrap_or_default();
        s.push_str(&format!("  {:>7}{share}  {}", c.count, c.key));
        if !c.hit.is_empty() {
            s.push_str(&format!("  → {}", hits(c)));
        }
        s.push_str(&format!("\n           more: {}\n", c.more));
    }
    if v.len() > ROWS {
        s.push_str(&format!("  … {} more: {more}\n", v.len() - ROWS));
    }
}

pub fn render(r: &DoctorReport) -> String {
    let mut s = format!(
        "plumb doctor: {:.0}s on this node, {} network namespaces audited\n",
        r.duration_s, r.namespaces
    );
    s.push_str("\nFINDINGS\n");
    if r.findings.is_empty() {
        s.push_str("  none above info level (plumb audit --all-netns -v shows everything)\n");
    }
    let critical = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .count();
    let shown = critical.max(FINDINGS_SHOWN.min(r.findings.len()));
    for f in r.findings.iter().take(shown) {
        s.push_str(&format!("  [{}] {}\n", f.severity, f.title));
        if let Some(n) = &f.netns {
            s.push_str(&format!("      in {n}\n"));
        }
        for e in f.evidence.iter().take(2) {
            s.push_str(&format!("      {e}\n"));
        }
        s.push_str(&format!(
            "      more: plumb audit --only {}{}\n",
            f.check,
            if f.netns.is_some() {
                " --all-netns"
            } else {
                ""
            }
        ));
    }
    if r.findings.len() > shown {
        s.push_str(&format!(
            "  … {} more: plumb audit --all-netns\n",
            r.findings.len() - shown
        ));
    }
    section(
        &mut s,
        "PACKET DROPS (by kernel reason → who they hit)",
        &r.drops,
        "no drops seen",
        "plumb trace drop --summary 5s",
    );
    section(
        &mut s,
        "TCP RETRANSMITS (by sender → peer)",
        &r.retransmits,
        "no retransmits seen",
        "plumb trace retrans --summary 5s",
    );
    section(
        &mut s,
        "TCP RESETS",
        &r.resets,
        "no resets seen",
        "plumb trace reset --summary 5s",
    );
    let of = format!("share of {} CPU samples", r.profile_samples);
    section(
        &mut s,
        &format!("HOTTEST KERNEL FUNCTIONS ({of})"),
        &r.hot_kernel_functions,
        "no samples",
        "plumb profile cpu",
    );
    section(
        &mut s,
        &format!("HOTTEST USER FUNCTIONS ({of}, including the kernel's work for them)"),
        &r.hot_user_functions,
        "no samples with user code",
        "plumb profile cpu",
    );
    if !r.skipped.is_empty() {
        s.push_str("\nSKIPPED\n");
        for k in &r.skipped {
            s.push_str(&format!("  {}\n", k.line()));
        }
    }
    if r.lost_events > 0 {
        s.push_str(&format!(
            "\n{} events were lost (ring buffer full); counts above are lower bounds\n",
            r.lost_events
        ));
    }
    if r.lost_samples > 0 {
        s.push_str(&format!(
            "\n{} CPU samples were lost; shares above leave them out\n",
            r.lost_samples
        ));
    }
    s
}

pub fn run(a: DoctorArgs) -> anyhow::Result<()> {
    let r = collect(&a)?;
    let text = if a.output == "json" {
        format!("{}\n", serde_json::to_string(&r)?)
    } else {
        render(&r)
    };
    super::common::print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_fits_in_the_run() {
        let d = Duration::from_secs(10);
        assert_eq!(
            profile_window(d, Duration::from_secs(1)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            profile_window(d, Duration::from_secs(7)),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(profile_window(d, Duration::from_secs(9)), None);
    }

    fn finding(sev: Severity, n: usize) -> Finding {
        Finding::new(sev, "netfilter", format!("finding {n}"))
    }

    #[test]
    fn every_critical_finding_is_shown_and_the_rest_counted() {
        let mut r = DoctorReport {
            findings: (0..12).map(|i| finding(Severity::Critical, i)).collect(),
            ..Default::default()
        };
        r.findings
            .extend((12..20).map(|i| finding(Severity::Warning, i)));
        let text = render(&r);
        assert!(text.contains("finding 11\n"));
        assert!(!text.contains("finding 12\n"));
        assert!(
            text.contains("  … 8 more: plumb audit --all-netns\n"),
            "{text}"
        );
        r.findings.truncate(3);
        assert!(!render(&r).contains("more: plumb audit --all-netns\n"));
    }
}
