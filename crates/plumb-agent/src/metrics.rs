//! The agent's Prometheus exposition: kernel counters read at scrape time,
//! attributed to pods, plus the agent's own health.
//!
//! Counters are summed from the kernel maps on every scrape and exposed as
//! constant counters, so nothing is aggregated twice. Each network
//! namespace or cgroup is turned into `namespace`/`pod` labels once and the
//! answer is kept, so a series never moves from one pod to another between
//! scrapes. Beyond `max_pods` distinct pods, new ones are folded into
//! `pod="other"` for good (a counter must never go backwards) and counted.

use crate::auth::AuthStats;
use crate::counters::{NodeCounters, Snapshot, TcpWhat};
use plumb_core::enrich::Enricher;
use plumb_core::kernel;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Labels = Vec<(String, String)>;

/// What the agent's sessions did, for its own health metrics.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// gadget → (events delivered, events lost)
    pub gadgets: Mutex<BTreeMap<String, (u64, u64)>>,
    pub sessions: AtomicI64,
    /// BPF programs loaded by running sessions.
    pub session_programs: AtomicI64,
    pub auth: Arc<AuthStats>,
    pub enrich_entries: AtomicU64,
}

impl AgentStats {
    pub fn add_events(&self, gadget: &str, seen: u64, lost: u64) {
        if let Ok(mut g) = self.gadgets.lock() {
            let e = g.entry(gadget.to_string()).or_default();
            e.0 += seen;
            e.1 += lost;
        }
    }
}

/// Who a namespace or cgroup belongs to, with the cardinality cap.
pub struct Attribution {
    enricher: Enricher,
    max_pods: usize,
    admitted: HashSet<(String, String)>,
    folded: u64,
    netns: HashMap<u32, (String, String)>,
    cgroups: HashMap<u64, (String, String)>,
}

impl Attribution {
    pub const DEFAULT_MAX_PODS: usize = 500;

    pub fn new(enricher: Enricher, max_pods: usize) -> Self {
        Attribution {
            enricher,
            max_pods,
            admitted: HashSet::new(),
            folded: 0,
            netns: HashMap::new(),
            cgroups: HashMap::new(),
        }
    }

    /// Apply the cap to a (namespace, pod) pair. Node-level series (no pod)
    /// are never folded.
    pub fn cap(&mut self, ns: String, pod: String) -> (String, String) {
        if pod.is_empty() || self.admitted.contains(&(ns.clone(), pod.clone())) {
            return (ns, pod);
        }
        if self.admitted.len() < self.max_pods {
            self.admitted.insert((ns.clone(), pod.clone()));
            return (ns, pod);
        }
        self.folded += 1;
        ("other".to_string(), "other".to_string())
    }

    fn of_netns(&mut self, inode: u32) -> (String, String) {
        if let Some(l) = self.netns.get(&inode) {
            return l.clone();
        }
        let w = self
            .enricher
            .netns(inode)
            .map(|i| i.workload)
            .unwrap_or_default();
        let pair = (
            w.namespace.clone().unwrap_or_default(),
            w.pod.clone().unwrap_or_default(),
        );
        // Keep only answers that name a pod: an unknown namespace may be
        // a pod whose metadata arrives later.
        if pair.1.is_empty() {
            return pair;
        }
        let l = self.cap(pair.0, pair.1);
        self.netns.insert(inode, l.clone());
        l
    }

    fn of_cgroup(&mut self, id: u64) -> (String, String) {
        if let Some(l) = self.cgroups.get(&id) {
            return l.clone();
        }
        let (_, w) = self.enricher.resolve(id, 0);
        let pair = (
            w.namespace.clone().unwrap_or_default(),
            w.pod.clone().unwrap_or_default(),
        );
        if pair.1.is_empty() {
            return pair;
        }
        let l = self.cap(pair.0, pair.1);
        self.cgroups.insert(id, l.clone());
        l
    }
}

/// Where the kernel counters come from: the loaded programs, or (tests)
/// values set by hand.
pub enum CounterSource {
    None,
    Kernel(NodeCounters),
    Fixed(Snapshot),
}

impl CounterSource {
    fn snapshot(&self) -> Option<Snapshot> {
        match self {
            CounterSource::None => None,
            CounterSource::Kernel(c) => Some(c.snapshot()),
            CounterSource::Fixed(s) => Some(s.clone()),
        }
    }

    fn prog_ids(&self) -> Vec<u32> {
        match self {
            CounterSource::Kernel(c) => c.prog_ids.clone(),
            _ => Vec::new(),
        }
    }
}

/// Everything scraped from `/metrics`.
pub struct NodeCollector {
    counters: CounterSource,
    attribution: Mutex<Attribution>,
    stats: Arc<AgentStats>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

fn pod_labels(ns: &str, pod: &str) -> Labels {
    vec![
        ("namespace".to_string(), ns.to_string()),
        ("pod".to_string(), pod.to_string()),
    ]
}

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &BTreeMap<Labels, u64>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    if let Some(v) = series.get(&Labels::new()).filter(|_| series.len() == 1) {
        // A single unlabelled series: `name_total 3`, not `name_total{} 3`.
        return ConstCounter::new(*v).encode(m);
    }
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &Labels,
    v: i64,
) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let mut m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    if labels.is_empty() {
        return g.encode(m);
    }
    g.encode(m.encode_family(labels)?)
}

impl NodeCollector {
    pub fn new(counters: CounterSource, attribution: Attribution, stats: Arc<AgentStats>) -> Self {
        NodeCollector {
            counters,
            attribution: Mutex::new(attribution),
            stats,
        }
    }

    /// Programs of the always-on counters.
    pub fn prog_ids(&self) -> Vec<u32> {
        self.counters.prog_ids()
    }

    fn encode_kernel(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some(snap) = self.counters.snapshot() else {
            return Ok(());
        };
        let reasons = kernel::vmlinux_enum("skb_drop_reason", "SKB_DROP_REASON_");
        let mut att = match self.attribution.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        let mut drops = BTreeMap::new();
        for (ns, reason, n) in &snap.drops {
            let (k8s_ns, pod) = att.of_netns(*ns);
            let mut l = pod_labels(&k8s_ns, &pod);
            l.push(("reason".into(), kernel::name_or_number(reasons, *reason)));
            *drops.entry(l).or_insert(0) += n;
        }
        let (mut retrans, mut resets, mut conns) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (ns, what, n) in &snap.tcp {
            let (k8s_ns, pod) = att.of_netns(*ns);
            let mut l = pod_labels(&k8s_ns, &pod);
            let map = match what {
                TcpWhat::Retransmit => &mut retrans,
                TcpWhat::ResetSent | TcpWhat::ResetReceived => {
                    let d = if *what == TcpWhat::ResetSent {
                        "sent"
                    } else {
                        "received"
                    };
                    l.push(("direction".into(), d.into()));
                    &mut resets
                }
                TcpWhat::Connect | TcpWhat::Accept => {
                    let d = if *what == TcpWhat::Connect {
                        "outbound"
                    } else {
                        "inbound"
                    };
                    l.push(("direction".into(), d.into()));
                    &mut conns
                }
            };
            *map.entry(l).or_insert(0) += n;
        }
        let mut execs = BTreeMap::new();
        for (cg, n) in &snap.execs {
            let (k8s_ns, pod) = att.of_cgroup(*cg);
            *execs.entry(pod_labels(&k8s_ns, &pod)).or_insert(0) += n;
        }
        let folded = att.folded;
        self.stats
            .enrich_entries
            .store(att.enricher.stats().entries as u64, Ordering::Relaxed);
        drop(att);
        counter_family(enc, "plumb_packet_drops", "Packets the kernel dropped, by drop reason (ordinary frees left out); pod empty when not attributable to one", &drops)?;
        counter_family(
            enc,
            "plumb_tcp_retransmits",
            "TCP segments retransmitted",
            &retrans,
        )?;
        counter_family(
            enc,
            "plumb_tcp_resets",
            "TCP resets sent or received",
            &resets,
        )?;
        counter_family(
            enc,
            "plumb_tcp_connections",
            "TCP connections established, outbound (connect) or inbound (accept)",
            &conns,
        )?;
        counter_family(enc, "plumb_execs", "Programs executed", &execs)?;
        let none = BTreeMap::from([(Labels::new(), snap.map_full)]);
        counter_family(
            enc,
            "plumb_counter_map_full",
            "Kernel counter increments lost because a map was full",
            &none,
        )?;
        let folded = BTreeMap::from([(Labels::new(), folded)]);
        counter_family(
            enc,
            "plumb_metrics_pods_folded",
            "Pods folded into pod=\"other\" by the cardinality cap",
            &folded,
        )?;
        Ok(())
    }

    fn encode_health(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let s = &self.stats;
        let (mut seen, mut lost) = (BTreeMap::new(), BTreeMap::new());
        if let Ok(g) = s.gadgets.lock() {
            for (name, (a, b)) in g.iter() {
                let l = vec![("gadget".to_string(), name.clone())];
                seen.insert(l.clone(), *a);
                lost.insert(l, *b);
            }
        }
        counter_family(
            enc,
            "plumb_gadget_events",
            "Events delivered by remote gadget runs",
            &seen,
        )?;
        counter_family(
            enc,
            "plumb_gadget_events_lost",
            "Events lost in the kernel (ring buffer full) by remote gadget runs",
            &lost,
        )?;
        let auth = BTreeMap::from([
            (
                vec![("reason".to_string(), "missing".to_string())],
                s.auth.missing.load(Ordering::Relaxed),
            ),
            (
                vec![("reason".to_string(), "invalid".to_string())],
                s.auth.invalid.load(Ordering::Relaxed),
            ),
        ]);
        counter_family(
            enc,
            "plumb_api_auth_failures",
            "API calls refused for missing or wrong credentials",
            &auth,
        )?;
        let none = Labels::new();
        gauge(
            enc,
            "plumb_api_sessions",
            "Gadget runs in progress for API clients",
            &none,
            s.sessions.load(Ordering::Relaxed),
        )?;
        let progs =
            self.counters.prog_ids().len() as i64 + s.session_programs.load(Ordering::Relaxed);
        gauge(
            enc,
            "plumb_bpf_programs",
            "BPF programs this agent has loaded",
            &none,
            progs,
        )?;
        gauge(
            enc,
            "plumb_enrich_cache_entries",
            "Entries in the metrics' cgroup enrichment cache",
            &none,
            s.enrich_entries.load(Ordering::Relaxed) as i64,
        )?;
        let build = vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())];
        gauge(
            enc,
            "plumb_build_info",
            "Always 1; the version that runs",
            &build,
            1,
        )?;
        Ok(())
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        self.encode_kernel(&mut enc)?;
        self.encode_health(&mut enc)
    }
}

/// A registry holding the collector; every series carries `node`.
pub fn registry(collector: Arc<NodeCollector>, node: &str) -> Registry {
    let node = std::iter::once((Cow::Borrowed("node"), Cow::Owned(node.to_string())));
    let mut r = Registry::with_labels(node);
    r.register_collector(Box::new(collector));
    r
}

/// The text exposition.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_folds_new_pods_into_other_and_counts_them() {
        let mut a = Attribution::new(Enricher::with_fs(None, vec![], 16), 2);
        let p = |n: &str| ("shop".to_string(), n.to_string());
        assert_eq!(a.cap(p("a").0, p("a").1), p("a"));
        assert_eq!(a.cap(p("b").0, p("b").1), p("b"));
        assert_eq!(a.cap(p("c").0, p("c").1), ("other".into(), "other".into()));
        // Already admitted pods and node-level series stay as they are.
        assert_eq!(a.cap(p("a").0, p("a").1), p("a"));
        assert_eq!(
            a.cap(String::new(), String::new()),
            (String::new(), String::new())
        );
        assert_eq!(a.folded, 1);
    }

    #[test]
    fn the_exposition_parses_as_prometheus_text() {
        let stats = Arc::new(AgentStats::default());
        stats.add_events("exec", 5, 2);
        stats.auth.invalid.fetch_add(3, Ordering::Relaxed);
        let reasons = kernel::vmlinux_enum("skb_drop_reason", "SKB_DROP_REASON_");
        let (no_socket, _) = reasons
            .iter()
            .find(|(_, n)| n.as_str() == "NO_SOCKET")
            .expect("this kernel's BTF names NO_SOCKET");
        let snap = Snapshot {
            // Two namespaces nobody owns: both are node-level, so summed.
            drops: vec![(1, *no_socket, 7), (2, *no_socket, 4), (1, 99_999, 1)],
            tcp: vec![
                (1, TcpWhat::Retransmit, 11),
                (1, TcpWhat::ResetSent, 12),
                (1, TcpWhat::ResetReceived, 13),
                (1, TcpWhat::Connect, 14),
                (1, TcpWhat::Accept, 15),
            ],
            execs: vec![(123, 21)],
            map_full: 6,
        };
        let c = Arc::new(NodeCollector::new(
            CounterSource::Fixed(snap),
            Attribution::new(Enricher::with_fs(None, vec![], 16), 10),
            stats,
        ));
        let text = render(&registry(c, "n1"));
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            let s = scrape.samples.iter().find(|s| {
                s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })?;
            // OpenMetrics names the family without `_total` in `# TYPE`;
            // a 0.0.4 parser then reports the sample as untyped.
            match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            }
        };
        let has_type = |family: &str, ty: &str| text.contains(&format!("# TYPE {family} {ty}\n"));
        let node = [("namespace", ""), ("pod", "")];
        assert_eq!(
            value("plumb_packet_drops_total", &[("reason", "NO_SOCKET")]),
            Some(11.0)
        );
        assert_eq!(
            value("plumb_packet_drops_total", &[("reason", "99999")]),
            Some(1.0)
        );
        assert_eq!(value("plumb_tcp_retransmits_total", &node), Some(11.0));
        assert_eq!(
            value("plumb_tcp_resets_total", &[("direction", "sent")]),
            Some(12.0)
        );
        assert_eq!(
            value("plumb_tcp_resets_total", &[("direction", "received")]),
            Some(13.0)
        );
        assert_eq!(
            value("plumb_tcp_connections_total", &[("direction", "outbound")]),
            Some(14.0)
        );
        assert_eq!(
            value("plumb_tcp_connections_total", &[("direction", "inbound")]),
            Some(15.0)
        );
        assert_eq!(value("plumb_execs_total", &node), Some(21.0));
        assert_eq!(value("plumb_counter_map_full_total", &[]), Some(6.0));
        assert_eq!(value("plumb_metrics_pods_folded_total", &[]), Some(0.0));
        assert_eq!(
            value("plumb_gadget_events_total", &[("gadget", "exec")]),
            Some(5.0)
        );
        assert_eq!(
            value("plumb_gadget_events_lost_total", &[("gadget", "exec")]),
            Some(2.0)
        );
        assert_eq!(
            value("plumb_api_auth_failures_total", &[("reason", "invalid")]),
            Some(3.0)
        );
        assert_eq!(
            value("plumb_api_auth_failures_total", &[("reason", "missing")]),
            Some(0.0)
        );
        assert_eq!(
            value(
                "plumb_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
        assert!(has_type("plumb_packet_drops", "counter"), "{text}");
        assert!(has_type("plumb_bpf_programs", "gauge"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Every series names the node.
        assert!(scrape
            .samples
            .iter()
            .all(|s| s.labels.get("node") == Some("n1")));
    }
}
