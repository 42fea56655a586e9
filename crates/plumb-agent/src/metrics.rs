//! The agent's Prometheus exposition: kernel counters folded into per-pod
//! totals ([`crate::ledger`]), attributed by [`crate::attribution`], plus
//! the agent's own health.
//!
//! The kernel maps are read at every scrape and by a timer, so keys of
//! vanished pods are removed even when nobody scrapes. Counters keep
//! growing across those removals; the series of a pod gone long enough
//! leave the exposition, and their place under the cardinality cap goes
//! to new pods.

use crate::attribution::{Attribution, Owner};
use crate::auth::AuthStats;
use crate::counters::{CounterStore, TcpWhat};
use crate::k8s::PodIndex;
use crate::ledger::{Ledger, Series};
use plumb_core::kernel;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

type Labels = Vec<(String, String)>;

/// What one gadget's remote runs did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GadgetCounts {
    /// Events handed to API clients' streams.
    pub delivered: u64,
    /// Lost in the kernel (ring buffer full).
    pub lost: u64,
    /// Dropped because the client read too slowly (its queue was full).
    pub dropped: u64,
    /// Decoded but not matching the run's filter.
    pub filtered: u64,
}

/// How full a running session's ring buffer is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RingGauge {
    pub gadget: &'static str,
    /// The highest fill seen at the last poll (when reading started).
    pub fill: f64,
    /// The highest fill seen since the run started.
    pub peak: f64,
}

/// What the agent's sessions did, for its own health metrics.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub gadgets: Mutex<BTreeMap<String, GadgetCounts>>,
    pub sessions: AtomicI64,
    /// Trace calls refused because `--max-sessions` were running.
    pub sessions_refused: AtomicU64,
    /// BPF programs loaded by running sessions.
    pub session_programs: AtomicI64,
    pub auth: Arc<AuthStats>,
    /// Running sessions' ring buffers, by session number.
    pub rings: Mutex<BTreeMap<u64, RingGauge>>,
    next_session: AtomicU64,
}

impl AgentStats {
    pub fn add(&self, gadget: &str, c: GadgetCounts) {
        if let Ok(mut g) = self.gadgets.lock() {
            let e = g.entry(gadget.to_string()).or_default();
            e.delivered += c.delivered;
            e.lost += c.lost;
            e.dropped += c.dropped;
            e.filtered += c.filtered;
        }
    }

    /// A number for a new session (its ring gauge's key).
    pub fn session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn set_ring(&self, session: u64, g: Option<RingGauge>) {
        if let Ok(mut r) = self.rings.lock() {
            match g {
                Some(g) => r.insert(session, g),
                None => r.remove(&session),
            };
        }
    }
}

/// Everything scraped from `/metrics`.
pub struct NodeCollector {
    store: Option<Box<dyn CounterStore>>,
    state: Mutex<(Attribution, Ledger)>,
    stats: Arc<AgentStats>,
    pods: Option<PodIndex>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

fn pod_labels(o: &Owner) -> Labels {
    vec![
        ("namespace".to_string(), o.namespace.clone()),
        ("pod".to_string(), o.pod.clone()),
        ("pod_uid".to_string(), o.pod_uid.clone()),
    ]
}

fn one(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
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

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    counter_family(enc, name, help, &BTreeMap::from([(Labels::new(), v)]))
}

fn gauge_family<N: EncodeGaugeValue + Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &BTreeMap<Labels, N>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl NodeCollector {
    pub fn new(
        store: Option<Box<dyn CounterStore>>,
        attribution: Attribution,
        ledger: Ledger,
        stats: Arc<AgentStats>,
        pods: Option<PodIndex>,
    ) -> Self {
        NodeCollector {
            store,
            state: Mutex::new((attribution, ledger)),
            stats,
            pods,
        }
    }

    /// Programs of the always-on counters.
    pub fn prog_ids(&self) -> Vec<u32> {
        self.store
            .as_ref()
            .map(|s| s.prog_ids())
            .unwrap_or_default()
    }

    /// Loaded and attached (true when the counters are turned off).
    pub fn healthy(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.healthy())
    }

    /// Fold the kernel's counters into the totals (and collect the keys
    /// of vanished pods when due).
    pub fn refresh(&self) {
        let Some(store) = &self.store else { return };
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let (att, ledger) = &mut *st;
        ledger.refresh(store.as_ref(), att, Instant::now());
    }

    fn encode_kernel(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        if self.store.is_none() {
            return Ok(());
        }
        self.refresh();
        let reasons = kernel::vmlinux_enum("skb_drop_reason", "SKB_DROP_REASON_");
        let st = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let (att, ledger) = &*st;
        let (mut drops, mut retrans, mut resets, mut conns, mut execs) = Default::default();
        let add = |m: &mut BTreeMap<Labels, u64>, l: Labels, v: u64| {
            *m.entry(l).or_insert(0) += v;
        };
        for (series, owner, v) in ledger.series() {
            let mut l = pod_labels(owner);
            match series {
                Series::Drop(reason) => {
                    // A kernel without drop reasons has no enum of them.
                    let name = if reasons.is_empty() {
                        plumb_core::gadgets::drop::UNKNOWN_REASON.to_string()
                    } else {
                        kernel::name_or_number(reasons, *reason)
                    };
                    l.push(("reason".into(), name));
                    add(&mut drops, l, v);
                }
                Series::Tcp(TcpWhat::Retransmit) => add(&mut retrans, l, v),
                Series::Tcp(w @ (TcpWhat::ResetSent | TcpWhat::ResetReceived)) => {
                    let d = if *w == TcpWhat::ResetSent {
                        "sent"
                    } else {
                        "received"
                    };
                    l.push(("direction".into(), d.into()));
                    add(&mut resets, l, v);
                }
                Series::Tcp(w @ (TcpWhat::Connect | TcpWhat::Accept)) => {
                    let d = if *w == TcpWhat::Connect {
                        "outbound"
                    } else {
                        "inbound"
                    };
                    l.push(("direction".into(), d.into()));
                    add(&mut conns, l, v);
                }
                Series::Exec => add(&mut execs, l, v),
            }
        }
        let (mut entries, mut max) = (BTreeMap::new(), BTreeMap::new());
        for m in &ledger.maps {
            entries.insert(one("map", m.map), m.entries as i64);
            max.insert(one("map", m.map), m.max_entries as i64);
        }
        let (map_full, removed, folded, admitted) = (
            ledger.map_full,
            ledger.removed,
            att.folded(),
            att.admitted(),
        );
        let mut caches: BTreeMap<Labels, i64> = att
            .cache_entries()
            .into_iter()
            .map(|(c, n)| (one("cache", c), n as i64))
            .collect();
        drop(st);
        if let Some(p) = &self.pods {
            caches.insert(one("cache", "pod_index"), p.len() as i64);
        }
        counter_family(enc, "plumb_packet_drops", "Packets the kernel dropped, by drop reason (ordinary frees left out); pod labels empty when not attributable to one", &drops)?;
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
        counter(
            enc,
            "plumb_counter_map_full",
            "Kernel counter increments lost because a map was full",
            map_full,
        )?;
        gauge_family(
            enc,
            "plumb_counter_map_entries",
            "Slots in use in a kernel counter map (per-CPU hash)",
            &entries,
        )?;
        gauge_family(
            enc,
            "plumb_counter_map_max_entries",
            "Capacity of a kernel counter map",
            &max,
        )?;
        counter(
            enc,
            "plumb_counter_map_removed",
            "Counter map slots removed because their network namespace or cgroup was gone (their counts stay in the totals)",
            removed,
        )?;
        counter(
            enc,
            "plumb_metrics_pods_folded",
            "Pods folded into pod=\"other\" by the cardinality cap",
            folded,
        )?;
        gauge(
            enc,
            "plumb_metrics_pods",
            "Pods with series of their own (at most --max-pods)",
            admitted as i64,
        )?;
        gauge_family(
            enc,
            "plumb_enrich_cache_entries",
            "Entries in the agent's enrichment caches, by cache",
            &caches,
        )?;
        Ok(())
    }

    fn encode_health(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let s = &self.stats;
        let (mut seen, mut lost, mut dropped, mut filtered) = Default::default();
        if let Ok(g) = s.gadgets.lock() {
            for (name, c) in g.iter() {
                let l = one("gadget", name);
                let put = |m: &mut BTreeMap<Labels, u64>, v| {
                    m.insert(l.clone(), v);
                };
                put(&mut seen, c.delivered);
                put(&mut lost, c.lost);
                put(&mut dropped, c.dropped);
                put(&mut filtered, c.filtered);
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
        counter_family(
            enc,
            "plumb_gadget_events_filtered",
            "Events of remote gadget runs that did not match their filter (added when each run ends)",
            &filtered,
        )?;
        counter_family(
            enc,
            "plumb_api_events_dropped",
            "Events dropped because the API client read too slowly (reported to it as lost)",
            &dropped,
        )?;
        let (mut fill, mut peak) = (BTreeMap::new(), BTreeMap::new());
        if let Ok(r) = s.rings.lock() {
            for g in r.values() {
                let l = one("gadget", g.gadget);
                let f = fill.entry(l.clone()).or_insert(0.0f64);
                *f = f.max(g.fill);
                let p = peak.entry(l).or_insert(0.0f64);
                *p = p.max(g.peak);
            }
        }
        gauge_family(
            enc,
            "plumb_ringbuf_fill_ratio",
            "Bytes waiting in a running gadget's ring buffer over its size, the highest seen at the last poll (of the gadget's sessions)",
            &fill,
        )?;
        gauge_family(
            enc,
            "plumb_ringbuf_peak_fill_ratio",
            "The highest ring buffer fill seen since the gadget's running sessions started",
            &peak,
        )?;
        let auth = BTreeMap::from([
            (
                one("reason", "missing"),
                s.auth.missing.load(Ordering::Relaxed),
            ),
            (
                one("reason", "invalid"),
                s.auth.invalid.load(Ordering::Relaxed),
            ),
        ]);
        counter_family(
            enc,
            "plumb_api_auth_failures",
            "API calls refused for missing or wrong credentials",
            &auth,
        )?;
        gauge(
            enc,
            "plumb_api_sessions",
            "Gadget runs in progress for API clients",
            s.sessions.load(Ordering::Relaxed),
        )?;
        counter(
            enc,
            "plumb_api_sessions_refused",
            "Gadget runs refused because --max-sessions were running",
            s.sessions_refused.load(Ordering::Relaxed),
        )?;
        let progs = self.prog_ids().len() as i64 + s.session_programs.load(Ordering::Relaxed);
        gauge(
            enc,
            "plumb_bpf_programs",
            "BPF programs this agent has loaded",
            progs,
        )?;
        let build = BTreeMap::from([(one("version", env!("CARGO_PKG_VERSION")), 1i64)]);
        gauge_family(
            enc,
            "plumb_build_info",
            "Always 1; the version that runs",
            &build,
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

/// What `/metrics` is served as: the body is OpenMetrics text (`# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
    use crate::attribution::tests::{pod, Fake};
    use crate::attribution::AttributionConfig;
    use crate::counters::{Key, Subject};
    use crate::ledger::tests::Table;
    use std::time::Duration;

    #[test]
    fn the_exposition_parses_as_prometheus_text() {
        let stats = Arc::new(AgentStats::default());
        stats.add(
            "exec",
            GadgetCounts {
                delivered: 5,
                lost: 2,
                dropped: 4,
                filtered: 9,
            },
        );
        stats.auth.invalid.fetch_add(3, Ordering::Relaxed);
        stats.sessions_refused.fetch_add(1, Ordering::Relaxed);
        let s = stats.session_id();
        stats.set_ring(
            s,
            Some(RingGauge {
                gadget: "exec",
                fill: 0.25,
                peak: 0.5,
            }),
        );
        let reasons = kernel::vmlinux_enum("skb_drop_reason", "SKB_DROP_REASON_");
        let (no_socket, _) = reasons
            .iter()
            .find(|(_, n)| n.as_str() == "NO_SOCKET")
            .expect("this kernel's BTF names NO_SOCKET");
        let table = Table::default();
        let bump = |k, n| table.bump(k, n);
        // Two namespaces nobody owns: both are node-level, so summed.
        bump(
            Key::Drop {
                netns: 1,
                reason: *no_socket,
            },
            7,
        );
        bump(
            Key::Drop {
                netns: 2,
                reason: *no_socket,
            },
            4,
        );
        bump(
            Key::Drop {
                netns: 1,
                reason: 99_999,
            },
            1,
        );
        for (what, n) in [
            (TcpWhat::Retransmit, 11),
            (TcpWhat::ResetSent, 12),
            (TcpWhat::ResetReceived, 13),
            (TcpWhat::Connect, 14),
            (TcpWhat::Accept, 15),
        ] {
            bump(Key::Tcp { netns: 1, what }, n);
        }
        bump(Key::Exec { cgroup: 123 }, 21);
        bump(Key::Exec { cgroup: 124 }, 22);
        let f = Fake::default();
        f.0.lock()
            .unwrap()
            .owners
            .insert(Subject::Cgroup(124), pod("shop", "web", "u-web"));
        f.0.lock().unwrap().named.insert("u-web".into());
        let att = Attribution::new(Box::new(f), AttributionConfig::default());
        let c = Arc::new(NodeCollector::new(
            Some(Box::new(table)),
            att,
            Ledger::new(Duration::from_secs(30)),
            stats,
            Some(PodIndex::default()),
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
        let node = [("namespace", ""), ("pod", ""), ("pod_uid", "")];
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
        assert_eq!(
            value(
                "plumb_execs_total",
                &[("namespace", "shop"), ("pod", "web"), ("pod_uid", "u-web")]
            ),
            Some(22.0)
        );
        assert_eq!(value("plumb_counter_map_full_total", &[]), Some(0.0));
        assert_eq!(
            value("plumb_counter_map_entries", &[("map", "tcp_counts")]),
            Some(10.0)
        );
        assert_eq!(
            value("plumb_counter_map_max_entries", &[("map", "tcp_counts")]),
            Some(16384.0)
        );
        assert_eq!(value("plumb_metrics_pods_folded_total", &[]), Some(0.0));
        assert_eq!(value("plumb_metrics_pods", &[]), Some(1.0));
        assert_eq!(
            value(
                "plumb_enrich_cache_entries",
                &[("cache", "metrics_cgroups")]
            ),
            Some(2.0)
        );
        assert_eq!(
            value("plumb_enrich_cache_entries", &[("cache", "metrics_netns")]),
            Some(2.0)
        );
        assert_eq!(
            value("plumb_enrich_cache_entries", &[("cache", "pod_index")]),
            Some(0.0)
        );
        for (name, v) in [
            ("plumb_gadget_events_total", 5.0),
            ("plumb_gadget_events_lost_total", 2.0),
            ("plumb_api_events_dropped_total", 4.0),
            ("plumb_gadget_events_filtered_total", 9.0),
            ("plumb_ringbuf_fill_ratio", 0.25),
            ("plumb_ringbuf_peak_fill_ratio", 0.5),
        ] {
            assert_eq!(value(name, &[("gadget", "exec")]), Some(v), "{name}");
        }
        assert_eq!(
            value("plumb_api_auth_failures_total", &[("reason", "invalid")]),
            Some(3.0)
        );
        assert_eq!(
            value("plumb_api_auth_failures_total", &[("reason", "missing")]),
            Some(0.0)
        );
        assert_eq!(value("plumb_api_sessions_refused_total", &[]), Some(1.0));
        assert_eq!(
            value(
                "plumb_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
        assert!(has_type("plumb_packet_drops", "counter"), "{text}");
        assert!(has_type("plumb_bpf_programs", "gauge"), "{text}");
        assert!(has_type("plumb_ringbuf_fill_ratio", "gauge"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Every series names the node.
        assert!(scrape
            .samples
            .iter()
            .all(|s| s.labels.get("node") == Some("n1")));
    }
}
