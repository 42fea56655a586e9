//! `plumb doctor`: the incident question in one command. Audits every
//! network namespace, watches drops, retransmits and resets for a while,
//! takes a short CPU profile, and prints one prioritised report in which
//! every item points to the command that shows more.

use plumb_audit::finding::{Finding, Severity};
use plumb_core::enrich::Enricher;
use plumb_core::event::Event;
use plumb_core::gadgets::{self, net::Flow, Body};
use plumb_core::runner::{self, Control, RunOptions};
use plumb_core::sink::Sink;
use serde::Serialize;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// How long to watch drops, retransmits and resets (and to profile).
    #[arg(long, default_value = "10s", value_parser = super::common::parse_duration)]
    pub duration: Duration,
    /// Output format.
    #[arg(short, long, value_parser = ["table", "json"], default_value = "table")]
    pub output: String,
}

/// A count with what it is about.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Count {
    pub key: String,
    pub count: u64,
    /// The pods / namespaces it hit, busiest first.
    pub hit: Vec<String>,
    pub more: String,
}

#[derive(Debug, Default, Serialize)]
pub struct DoctorReport {
    pub findings: Vec<Finding>,
    pub drops: Vec<Count>,
    pub retransmits: Vec<Count>,
    pub resets: Vec<Count>,
    pub hot_functions: Vec<Count>,
    pub skipped: Vec<String>,
    pub lost_events: u64,
    pub duration_s: f64,
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

    fn top(&self, n: usize, more: impl Fn(&str) -> String) -> Vec<Count> {
        let mut v: Vec<Count> = self
            .0
            .iter()
            .map(|(k, (c, hits))| {
                let mut h: Vec<(&String, &u64)> = hits.iter().collect();
                h.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                Count {
                    key: k.clone(),
                    count: *c,
                    hit: h
                        .into_iter()
                        .take(3)
                        .map(|(k, c)| format!("{k} ({c})"))
                        .collect(),
                    more: more(k),
                }
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.key.cmp(&b.key)));
        v.truncate(n);
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

/// Run one gadget for `d` on its own thread, tallying what it sees.
/// A gadget watching on its thread: its tally, its lost count, its thread.
type Watcher = (
    Arc<Mutex<Tally>>,
    Arc<Mutex<u64>>,
    std::thread::JoinHandle<Result<(), String>>,
);

fn watch(name: &'static str, d: Duration, stop: Arc<AtomicBool>) -> Watcher {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let lost = Arc::new(Mutex::new(0));
    let (t2, l2) = (tally.clone(), lost.clone());
    let h = std::thread::spawn(move || {
        let desc = gadgets::find(name).map_err(|e| e.to_string())?;
        gadgets::availability(desc)?;
        let opts = RunOptions {
            duration: Some(d),
            ..RunOptions::default()
        };
        let mut enricher = Enricher::new(super::trace::local_sources());
        let mut sink = TallySink {
            tally: t2,
            lost: l2,
        };
        runner::run(
            desc,
            &opts,
            &mut enricher,
            &mut sink,
            Control {
                stop,
                on_ready: None,
            },
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    (tally, lost, h)
}

fn progress(msg: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{msg}");
    }
}

pub fn collect(a: &DoctorArgs) -> anyhow::Result<DoctorReport> {
    plumb_core::preflight::check_all()?;
    let started = Instant::now();
    let stop = super::common::stop_on_signals()?;
    let mut report = DoctorReport::default();
    let watchers: Vec<_> = ["drop", "retrans", "reset"]
        .into_iter()
        .map(|g| (g, watch(g, a.duration, stop.clone())))
        .collect();
    progress("plumb doctor: auditing netfilter, conntrack, BPF maps, interfaces...");
    let audit = plumb_audit::run(&plumb_audit::Options {
        all_netns: true,
        ..Default::default()
    })?;
    report.findings = audit
        .findings
        .into_iter()
        .filter(|f| f.severity > Severity::Info)
        .take(10)
        .collect();
    progress("plumb doctor: profiling CPUs...");
    match super::profile_hook::hot_functions(a.duration.min(Duration::from_secs(5)), &stop) {
        Ok(hot) => report.hot_functions = hot,
        Err(why) => report.skipped.push(format!("CPU profile: {why}")),
    }
    while started.elapsed() < a.duration && !stop.load(Ordering::Relaxed) {
        progress(&format!(
            "plumb doctor: watching drops, retransmits and resets ({:.0}s of {:.0}s)...",
            started.elapsed().as_secs_f64(),
            a.duration.as_secs_f64()
        ));
        std::thread::sleep(Duration::from_millis(250));
    }
    for (name, (tally, lost, h)) in watchers {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => report.skipped.push(format!("{name}: {why}")),
            Err(_) => report.skipped.push(format!("{name}: tracer thread failed")),
        }
        report.lost_events += *lost.lock().unwrap_or_else(|e| e.into_inner());
        let t = tally.lock().unwrap_or_else(|e| e.into_inner());
        match name {
            "drop" => report.drops = t.top(5, |k| format!("plumb trace drop --reason {k} --stack")),
            "retrans" => {
                report.retransmits = t.top(5, |_| "plumb trace retrans --summary 5s".into())
            }
            _ => report.resets = t.top(5, |_| "plumb trace reset".into()),
        }
    }
    progress("");
    report.duration_s = started.elapsed().as_secs_f64();
    Ok(report)
}

pub fn render(r: &DoctorReport) -> String {
    let mut s = format!("plumb doctor: {:.0}s on this node\n", r.duration_s);
    s.push_str("\nFINDINGS\n");
    if r.findings.is_empty() {
        s.push_str("  none above info level (plumb audit -v shows everything)\n");
    }
    for f in &r.findings {
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
    let section = |s: &mut String, title: &str, v: &[Count], empty: &str| {
        s.push_str(&format!("\n{title}\n"));
        if v.is_empty() {
            s.push_str(&format!("  {empty}\n"));
        }
        for c in v {
            s.push_str(&format!("  {:>7}  {}", c.count, c.key));
            if !c.hit.is_empty() {
                s.push_str(&format!("  → {}", c.hit.join(", ")));
            }
            s.push_str(&format!("\n           more: {}\n", c.more));
        }
    };
    section(
        &mut s,
        "PACKET DROPS (by kernel reason → who they hit)",
        &r.drops,
        "no drops seen",
    );
    section(
        &mut s,
        "TCP RETRANSMITS (by sender → peer)",
        &r.retransmits,
        "no retransmits seen",
    );
    section(&mut s, "TCP RESETS", &r.resets, "no resets seen");
    section(
        &mut s,
        "HOTTEST FUNCTIONS (share of CPU samples)",
        &r.hot_functions,
        "no samples",
    );
    if !r.skipped.is_empty() {
        s.push_str("\nSKIPPED\n");
        for k in &r.skipped {
            s.push_str(&format!("  {k}\n"));
        }
    }
    if r.lost_events > 0 {
        s.push_str(&format!(
            "\n{} events were lost (ring buffer full); counts above are lower bounds\n",
            r.lost_events
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
