//! End to end: the agent's metrics and health, on this machine's kernel.
//!
//! - Processes in fake kubepods cgroups, holding lab network namespaces,
//!   make connections, execs, drops and resets; without a pod watcher the
//!   series carry each pod's uid, with counts equal to the kernel's own
//!   counters (nstat, the DROP rule's counter).
//! - With a stand-in pod index the series are named; a pod deleted leaves
//!   its final count, its kernel keys are removed, and once it has been
//!   gone long enough the cardinality cap admits the next pod (the metrics
//!   pipeline on the real kernel counters, seeing only the test's pods).
//! - A client that stops reading (SIGSTOP) loses its own events, is told
//!   how many, and cannot hold up SIGTERM; a session over the limit is
//!   refused; the ring buffer's fill is read from the kernel's positions;
//!   `/healthz` sees a removed API socket.
//!
//! The root tests run one at a time (`support::serial`): the slow-client
//! test runs a busy load, which would slow the others' timing-sensitive
//! steps. Root tests fail without root.

mod support;

use plumb_core::testing::{assert_no_programs_left, marker, require_root};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use support::fake_pod::FakePod;
use support::http::{get, sample, scrape};
use support::*;

/// Scrape until `name{labels}` equals `want` (or time runs out); the last
/// value seen.
fn wait_sample(addr: &str, name: &str, labels: &[(&str, &str)], want: f64) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = sample(&scrape(addr), name, labels);
        if v == Some(want) || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `plumb agent` on loopback with a token, a metrics listener and `extra`.
fn start_with_metrics(node: &str, token: &Path, extra: &[&str]) -> Agent {
    let mut args = vec!["--metrics-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    start_agent(node, "127.0.0.1:0", Some(token), &args)
}

fn pod_uid(p: &FakePod) -> [(&str, &str); 3] {
    [("namespace", ""), ("pod", ""), ("pod_uid", p.uid.as_str())]
}

/// Does this kernel give drop reasons, and trace RSTs sent without a socket?
fn kernel_shows() -> (bool, bool) {
    use plumb_core::gadgets::{drop, reset};
    let d = plumb_core::kernel::with_vmlinux(drop::support)
        .expect("BTF")
        .expect("drop runs here");
    let socketless = plumb_core::kernel::with_vmlinux(reset::socketless_rsts).expect("BTF");
    (d.variant == drop::Variant::Reason, socketless)
}

#[test]
fn series_carry_the_pod_uid_with_the_kernels_own_counts() {
    require_root();
    let _serial = serial();
    let token = token();
    let mut lab = plumb_netlab::Lab::new("metr").expect("lab");
    let cli = lab.add_pod("cli").expect("client pod");
    let srv = lab.add_pod("srv").expect("server pod");
    // Each lab namespace is held by a process of a fake pod, before the
    // agent starts, so the agent's first answer names the pod.
    let pod_c = FakePod::new(Some(&cli.ns.path()));
    let pod_s = FakePod::new(Some(&srv.ns.path()));
    let (reasons, socketless) = kernel_shows();
    let (open_port, drop_port, closed_port) = (8101u16, 8102u16, 8103u16);
    srv.ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {drop_port} -j DROP"
        ))
        .expect("DROP rule");
    let agent = start_with_metrics("node-metrics", token.path(), &[]);
    let m = agent.metrics().to_string();

    // Execs in the client pod: counted under its uid, nothing else.
    let execs = 4;
    for _ in 0..execs {
        assert!(pod_c.run("/bin/true", &[&marker("exec")]).success());
    }
    let got = wait_sample(&m, "plumb_execs_total", &pod_uid(&pod_c), execs as f64);
    assert_eq!(got, Some(execs as f64), "{}", scrape(&m));

    // N connections from the client pod to a listener in the server pod.
    let (active0, passive0) = (
        cli.ns.snmp("Tcp", "ActiveOpens").expect("ActiveOpens"),
        srv.ns.snmp("Tcp", "PassiveOpens").expect("PassiveOpens"),
    );
    let listener = srv
        .ns
        .run(move || TcpListener::bind(("0.0.0.0", open_port)))
        .expect("in the server pod")
        .expect("listen");
    let n = 5u64;
    let accepter = std::thread::spawn(move || {
        for _ in 0..n {
            let _ = listener.accept();
        }
    });
    for _ in 0..n {
        let target = SocketAddr::from((srv.ip, open_port));
        let c = cli
            .ns
            .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(5)))
            .expect("in the client pod");
        assert!(c.is_ok(), "{c:?}");
    }
    accepter.join().expect("accepts");
    let active = cli.ns.snmp("Tcp", "ActiveOpens").expect("ActiveOpens") - active0;
    let passive = srv.ns.snmp("Tcp", "PassiveOpens").expect("PassiveOpens") - passive0;
    assert_eq!((active, passive), (n, n), "the kernel's own counts");
    let mut out = pod_uid(&pod_c).to_vec();
    out.push(("direction", "outbound"));
    let mut inb = pod_uid(&pod_s).to_vec();
    inb.push(("direction", "inbound"));
    assert_eq!(
        wait_sample(&m, "plumb_tcp_connections_total", &out, active as f64),
        Some(active as f64)
    );
    assert_eq!(
        wait_sample(&m, "plumb_tcp_connections_total", &inb, passive as f64),
        Some(passive as f64)
    );

    // Connects into the DROP rule, and to a closed port (one reset each way).
    let out_rsts0 = srv.ns.snmp("Tcp", "OutRsts").expect("OutRsts");
    let retrans0 = cli.ns.snmp("Tcp", "RetransSegs").expect("RetransSegs");
    let k = 2u64;
    for _ in 0..k {
        let target = SocketAddr::from((srv.ip, drop_port));
        let r = cli
            .ns
            .run(move || TcpStream::connect_timeout(&target, Duration::from_millis(1500)))
            .expect("in the client pod");
        assert!(r.is_err(), "the DROP rule lets nothing through");
        let target = SocketAddr::from((srv.ip, closed_port));
        let r = cli
            .ns
            .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(2)))
            .expect("in the client pod");
        assert_eq!(
            r.expect_err("nothing listens").kind(),
            std::io::ErrorKind::ConnectionRefused
        );
    }
    let listing = srv.ns.sh("iptables -w -vnxL INPUT").expect("iptables");
    let rule = plumb_core::testing::iptables_packets(&listing, &format!("dpt:{drop_port}"))
        .expect("the rule's counter");
    let out_rsts = srv.ns.snmp("Tcp", "OutRsts").expect("OutRsts") - out_rsts0;
    let retrans = cli.ns.snmp("Tcp", "RetransSegs").expect("RetransSegs") - retrans0;
    assert!(rule >= k, "{listing}");
    assert_eq!(out_rsts, k);
    // What this kernel can show (the kernel-matrix guests run this test
    // on 5.10, 6.1 and 6.12): without drop reasons (before 5.17) every
    // kfree_skb in the pod is counted as UNKNOWN: the rule's drops, the
    // SYNs to the closed port (no socket), and the IPv6 neighbour discovery
    // and MLD packets such a kernel frees with kfree_skb after handling
    // them, which the pods send on their own: at least the first two there.
    // Without socketless RSTs (before 6.9) the server's RSTs for the closed
    // port are not seen.
    let mut dropped = pod_uid(&pod_s).to_vec();
    if reasons {
        dropped.push(("reason", "NETFILTER_DROP"));
        assert_eq!(
            wait_sample(&m, "plumb_packet_drops_total", &dropped, rule as f64),
            Some(rule as f64),
            "drops in the server pod == the DROP rule's counter"
        );
    } else {
        dropped.push(("reason", "UNKNOWN"));
        let got = settled(&m, "plumb_packet_drops_total", &dropped);
        assert!(
            got >= (rule + k) as f64,
            "drops in the server pod {got} >= the DROP rule's {rule} and the closed port's {k}"
        );
    }
    let mut sent = pod_uid(&pod_s).to_vec();
    sent.push(("direction", "sent"));
    let mut recv = pod_uid(&pod_c).to_vec();
    recv.push(("direction", "received"));
    assert_eq!(
        wait_sample(&m, "plumb_tcp_resets_total", &recv, k as f64),
        Some(k as f64)
    );
    if socketless {
        assert_eq!(
            wait_sample(&m, "plumb_tcp_resets_total", &sent, out_rsts as f64),
            Some(out_rsts as f64),
            "resets sent by the server pod == its Tcp OutRsts"
        );
    } else {
        assert_eq!(
            sample(&scrape(&m), "plumb_tcp_resets_total", &sent),
            None,
            "a socketless RST counted on a kernel that cannot show it"
        );
    }
    assert_eq!(
        wait_sample(
            &m,
            "plumb_tcp_retransmits_total",
            &pod_uid(&pod_c),
            retrans as f64
        ),
        Some(retrans as f64),
        "retransmits of the client pod == its Tcp RetransSegs"
    );

    // Health: the counter maps' fill, the caches, the served content type.
    let (code, ctype, text) = get(&m, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(
        sample(
            &text,
            "plumb_counter_map_max_entries",
            &[("map", "tcp_counts")]
        ),
        Some(16384.0)
    );
    let entries = sample(
        &text,
        "plumb_counter_map_entries",
        &[("map", "exec_counts")],
    )
    .expect("exec map entries");
    assert!(entries >= 1.0, "{text}");
    assert!(
        sample(
            &text,
            "plumb_enrich_cache_entries",
            &[("cache", "metrics_netns")]
        )
        .is_some_and(|v| v >= 2.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "plumb_enrich_cache_entries",
            &[("cache", "pod_index")]
        )
        .is_none(),
        "no pod watcher here: {text}"
    );
    assert_eq!(get(&m, "/healthz").0, 200);
    assert_eq!(
        get(&m, "/readyz"),
        (200, "text/plain; charset=utf-8".into(), "ok\n".into())
    );

    agent.stop();
}

/// Names for pod uids, as the agent's pod watcher gives them.
#[derive(Default)]
struct StandInIndex(Mutex<std::collections::HashMap<String, (String, String)>>);

impl plumb_core::enrich::MetadataSource for StandInIndex {
    fn name(&self) -> &'static str {
        "stand-in pod index"
    }
    fn fill(&self, w: &mut plumb_core::event::Workload) {
        let Some(uid) = w.pod_uid.as_deref() else {
            return;
        };
        if let Some((ns, name)) = self.0.lock().unwrap().get(uid) {
            w.namespace.get_or_insert(ns.clone());
            w.pod.get_or_insert(name.clone());
        }
    }
}

/// The host's attribution, seeing only this test's pods: pods of other
/// tests running on the host at the same time would take places under the
/// cap and make its counts depend on them.
struct OnlyOurs {
    host: plumb_agent::attribution::HostLookup,
    uids: Vec<String>,
}

impl plumb_agent::attribution::Lookup for OnlyOurs {
    fn owner(&mut self, s: plumb_agent::counters::Subject) -> plumb_agent::attribution::Owner {
        let o = self.host.owner(s);
        if self.uids.contains(&o.pod_uid) {
            o
        } else {
            Default::default()
        }
    }
    fn names_pod(&self, uid: &str) -> bool {
        self.host.names_pod(uid)
    }
    fn existing(&mut self, subjects: &[plumb_agent::counters::Subject]) -> Vec<bool> {
        self.host.existing(subjects)
    }
    fn cache_entries(&self) -> Vec<(&'static str, usize)> {
        self.host.cache_entries()
    }
}

/// Is there a slot for `cgroup` in the counters' `exec_counts` map? Asked
/// of the kernel with bpftool, by the map the counter programs use.
fn exec_slot(counter_progs: &[u32], cgroup: u64) -> bool {
    let map = plumb_agent::progs::facts(counter_progs)
        .map_ids
        .into_iter()
        .find(|id| {
            let out = Command::new("bpftool")
                .args(["-j", "map", "show", "id", &id.to_string()])
                .output()
                .expect("run bpftool");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["name"] == "exec_counts"
        })
        .expect("the exec_counts map");
    let key: Vec<String> = cgroup
        .to_ne_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Command::new("bpftool")
        .args(["map", "lookup", "id", &map.to_string(), "key", "hex"])
        .args(&key)
        .output()
        .expect("run bpftool")
        .status
        .success()
}

/// Render until `name{labels}` equals `want` (or time runs out).
fn wait_render(
    render: &dyn Fn() -> String,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = sample(&render(), name, labels);
        if v == Some(want) || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The metrics pipeline on the real kernel counters (what `/metrics`
/// renders), with a stand-in pod index and a cap of one pod.
#[test]
fn a_deleted_pod_keeps_its_count_frees_its_keys_and_its_place_under_the_cap() {
    use plumb_agent::attribution::{Attribution, AttributionConfig, HostLookup};
    require_root();
    let _serial = serial();
    let index = Arc::new(StandInIndex::default());
    let mut pod_a = FakePod::new(None);
    let pod_b = FakePod::new(None);
    {
        let mut i = index.0.lock().unwrap();
        i.insert(pod_a.uid.clone(), ("shop".into(), "web-a".into()));
        i.insert(pod_b.uid.clone(), ("shop".into(), "web-b".into()));
    }
    let counters = plumb_agent::counters::NodeCounters::start().expect("counters load");
    let progs = counters.prog_ids.clone();
    let lookup = OnlyOurs {
        host: HostLookup::new(vec![index.clone()]),
        uids: vec![pod_a.uid.clone(), pod_b.uid.clone()],
    };
    let cfg = AttributionConfig {
        max_pods: 1,
        ttl: Duration::from_secs(1),
        retention: Duration::from_secs(3),
    };
    let collector = Arc::new(plumb_agent::metrics::NodeCollector::new(
        Some(Box::new(counters)),
        Attribution::new(Box::new(lookup), cfg),
        plumb_agent::ledger::Ledger::new(Duration::from_millis(300)),
        Arc::default(),
        None,
    ));
    let registry = plumb_agent::metrics::registry(collector.clone(), "node-churn");
    let render = || plumb_agent::metrics::render(&registry);
    let a_uid = pod_a.uid.clone();
    let a = [
        ("namespace", "shop"),
        ("pod", "web-a"),
        ("pod_uid", a_uid.as_str()),
    ];
    let b = [
        ("namespace", "shop"),
        ("pod", "web-b"),
        ("pod_uid", pod_b.uid.as_str()),
    ];
    let other = [
        ("namespace", "other"),
        ("pod", "other"),
        ("pod_uid", "other"),
    ];
    for _ in 0..3 {
        assert!(pod_a.run("/bin/true", &[]).success());
    }
    assert_eq!(
        wait_render(&render, "plumb_execs_total", &a, 3.0),
        Some(3.0)
    );
    // The cap is one pod: b folds into other, and is counted once.
    for _ in 0..2 {
        assert!(pod_b.run("/bin/true", &[]).success());
    }
    assert_eq!(
        wait_render(&render, "plumb_execs_total", &other, 2.0),
        Some(2.0)
    );
    let text = render();
    assert_eq!(
        sample(&text, "plumb_metrics_pods_folded_total", &[]),
        Some(1.0)
    );
    assert_eq!(sample(&text, "plumb_metrics_pods", &[]), Some(1.0));
    assert_eq!(sample(&text, "plumb_execs_total", &b), None, "{text}");
    let a_cgroup = pod_a.cgroup_id();
    assert!(exec_slot(&progs, a_cgroup), "a's slot is in the map");

    // a is deleted: the watcher forgets it, its cgroup goes. Its slot is
    // removed from the kernel map and its count stays.
    index.0.lock().unwrap().remove(&pod_a.uid);
    pod_a.delete();
    let deadline = Instant::now() + Duration::from_secs(20);
    while exec_slot(&progs, a_cgroup) && Instant::now() < deadline {
        let _ = render();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!exec_slot(&progs, a_cgroup), "a's slot removed");
    let text = render();
    assert_eq!(sample(&text, "plumb_execs_total", &a), Some(3.0), "{text}");
    assert!(
        sample(&text, "plumb_counter_map_removed_total", &[]).is_some_and(|v| v >= 1.0),
        "{text}"
    );

    // Gone for the retention: a's series leave, and b gets its place for
    // what it counts from then on; other keeps what it had.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = render();
    while (sample(&text, "plumb_execs_total", &a).is_some()
        || sample(&text, "plumb_execs_total", &b).is_none())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
        text = render();
    }
    assert_eq!(sample(&text, "plumb_execs_total", &a), None, "{text}");
    assert_eq!(sample(&text, "plumb_execs_total", &b), Some(0.0), "{text}");
    for _ in 0..4 {
        assert!(pod_b.run("/bin/true", &[]).success());
    }
    assert_eq!(
        wait_render(&render, "plumb_execs_total", &b, 4.0),
        Some(4.0)
    );
    let text = render();
    assert_eq!(sample(&text, "plumb_execs_total", &other), Some(2.0));
    assert_eq!(
        sample(&text, "plumb_metrics_pods_folded_total", &[]),
        Some(1.0)
    );
    drop(registry);
    drop(collector);
    assert_no_programs_left(&progs);
}

/// A busy load in its own cgroup: opens a file in a loop.
fn open_loop(pod: &FakePod) -> Child {
    let mut c = Command::new("python3");
    c.args([
        "-c",
        "import os\nwhile True:\n    os.close(os.open('/etc/hostname', os.O_RDONLY))",
    ]);
    pod.spawn(c)
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Scrape until `name{labels}` has not changed for three scrapes a second
/// apart (one quiet second can be a stalled reader); its value.
fn settled(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut last = sample(&scrape(addr), name, labels).unwrap_or(0.0);
    let mut same = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let v = sample(&scrape(addr), name, labels).unwrap_or(0.0);
        same = if v == last { same + 1 } else { 0 };
        if same >= 3 || Instant::now() >= deadline {
            return v;
        }
        last = v;
    }
}

#[test]
fn a_client_that_stops_reading_loses_its_own_events_and_cannot_hold_up_sigterm() {
    require_root();
    let _serial = serial();
    let token = token();
    let load_pod = FakePod::new(None);
    let mut agent = start_with_metrics("node-slow", token.path(), &[]);
    let m = agent.metrics().to_string();
    let client = Proc::spawn(remote(
        &[&agent],
        Some(token.path()),
        &[
            "trace",
            "open",
            "--cgroup",
            &load_pod.cgroup_path(),
            "-o",
            "json",
        ],
    ));
    let mut seen = Vec::new();
    let attached = wait_line(&client.err, Duration::from_secs(30), &mut seen, |l| {
        l.contains("open attached, BPF program ids")
    })
    .unwrap_or_else(|| panic!("the remote run did not attach: {seen:?}"));
    let session_progs = ids(&attached);
    assert!(!session_progs.is_empty(), "{attached}");
    let load = open_loop(&load_pod);
    wait_line(&client.out, Duration::from_secs(20), &mut seen, |l| {
        l.contains("\"type\":\"open\"")
    })
    .unwrap_or_else(|| panic!("no open event arrived: {seen:?}"));

    // The client stops reading: its queue fills, and its events are dropped.
    client.signal(libc::SIGSTOP);
    let dropped_q = [("gadget", "open")];
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(&scrape(&m), "plumb_api_events_dropped_total", &dropped_q).unwrap_or(0.0) == 0.0 {
        assert!(Instant::now() < deadline, "nothing dropped: {}", scrape(&m));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(load);
    let dropped = settled(&m, "plumb_api_events_dropped_total", &dropped_q);
    let text = scrape(&m);
    let kernel_lost = sample(&text, "plumb_gadget_events_lost_total", &dropped_q).unwrap_or(0.0);
    let delivered = sample(&text, "plumb_gadget_events_total", &dropped_q).expect("delivered");
    assert!(
        sample(&text, "plumb_ringbuf_peak_fill_ratio", &dropped_q).is_some(),
        "{text}"
    );

    // Reading again, the client is told exactly what it lost, and gets
    // exactly what was delivered.
    client.signal(libc::SIGCONT);
    let (mut events, mut lost) = (1u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (events as f64) < delivered || (lost as f64) < dropped + kernel_lost {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(l) = client.out.recv_timeout(left) else {
            break;
        };
        let v: serde_json::Value = serde_json::from_str(&l).expect("a JSON line");
        if v["type"] == "lost" {
            lost += v["count"].as_u64().unwrap_or(0);
        } else {
            events += 1;
        }
    }
    assert_eq!(events as f64, delivered, "events the client received");
    assert_eq!(lost as f64, dropped + kernel_lost, "losses it was told of");

    // Stuck again, with a full queue, when the agent is told to stop.
    client.signal(libc::SIGSTOP);
    let load = open_loop(&load_pod);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(&scrape(&m), "plumb_api_events_dropped_total", &dropped_q).unwrap_or(0.0)
        <= dropped
    {
        assert!(Instant::now() < deadline, "not dropping again");
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = Instant::now();
    agent.proc.signal(libc::SIGTERM);
    let code = agent.proc.wait(Duration::from_secs(20));
    let took = t.elapsed();
    stop(load);
    client.signal(libc::SIGCONT);
    let err = drain(&agent.proc.err);
    assert_eq!(code, Some(0), "exit within 20 s of SIGTERM: {err:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let mut all = agent.counter_progs.clone();
    all.extend(session_progs);
    assert_no_programs_left(&all);
}

#[test]
fn a_session_over_the_limit_is_refused_in_one_line_and_counted() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = start_with_metrics("node-limit", token.path(), &["--max-sessions", "1"]);
    let mut first = Proc::spawn(remote(&[&agent], Some(token.path()), &["trace", "exec"]));
    let mut seen = Vec::new();
    wait_line(&first.err, Duration::from_secs(30), &mut seen, |l| {
        l.contains("exec attached")
    })
    .unwrap_or_else(|| panic!("the first run did not attach: {seen:?}"));
    let out = remote(
        &[&agent],
        Some(token.path()),
        &["trace", "exec", "--duration", "1s"],
    )
    .output()
    .expect("run plumb remote");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let first_line = err.lines().next().unwrap_or_default();
    assert_eq!(
        first_line,
        format!(
            "plumb: agent {}: node node-limit: 1 gadget sessions already run, the most this agent allows (--max-sessions) (ResourceExhausted)",
            agent.api
        ),
        "{err}"
    );
    let text = scrape(agent.metrics());
    assert_eq!(
        sample(&text, "plumb_api_sessions_refused_total", &[]),
        Some(1.0)
    );
    assert_eq!(sample(&text, "plumb_api_sessions", &[]), Some(1.0));
    first.signal(libc::SIGINT);
    assert_eq!(first.wait(Duration::from_secs(20)), Some(0));
    agent.stop();
}

#[test]
fn healthz_sees_the_api_socket_go() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("sock");
    let sock = dir.path().join("agent.sock");
    let listen = format!("unix:{}", sock.display());
    let agent = start_agent(
        "node-health",
        &listen,
        None,
        &["--metrics-listen", "127.0.0.1:0"],
    );
    assert_eq!(get(agent.metrics(), "/healthz").2, "ok\n");
    assert_eq!(get(agent.metrics(), "/readyz").2, "ok\n");
    std::fs::remove_file(&sock).expect("remove the socket");
    let want = format!(
        "the API socket {} was removed or replaced\n",
        sock.display()
    );
    assert_eq!(
        get(agent.metrics(), "/healthz"),
        (503, "text/plain; charset=utf-8".into(), want.clone())
    );
    assert_eq!(get(agent.metrics(), "/readyz").2, want);
    agent.stop();
}

/// A sink that holds the pipeline in its first event until told to go on.
struct Held {
    gate: mpsc::Receiver<()>,
    held: bool,
    events: Arc<Mutex<u64>>,
}

impl plumb_core::sink::Sink for Held {
    fn event(&mut self, _ev: &plumb_core::event::Event) -> std::io::Result<()> {
        if !self.held {
            self.held = true;
            let _ = self.gate.recv();
        }
        *self.events.lock().unwrap() += 1;
        Ok(())
    }
}

#[test]
fn the_ring_buffer_fill_is_what_waits_in_the_kernel() {
    require_root();
    let _serial = serial();
    let pod = FakePod::new(None);
    let root = plumb_core::enrich::cgroupfs::CgroupFs::discover().expect("cgroup v2");
    let args = plumb_core::filter::FilterArgs {
        cgroup: vec![pod.cgroup_path()],
        ..Default::default()
    };
    let opts = plumb_core::runner::RunOptions {
        filter: plumb_core::filter::Filter::parse(&args, Some(root.root())).expect("filter"),
        ..Default::default()
    };
    let desc = plumb_core::gadgets::find("exec").expect("exec gadget");
    let (ids_tx, ids_rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel();
    let events = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let control = plumb_core::runner::Control {
        stop: stop.clone(),
        on_ready: Some(Box::new(move |ids: &[u32]| {
            let _ = ids_tx.send(ids.to_vec());
        })),
    };
    let sink_events = events.clone();
    let run = std::thread::spawn(move || {
        let mut sink = Held {
            gate: gate_rx,
            held: false,
            events: sink_events,
        };
        let mut enricher = plumb_core::enrich::Enricher::new(vec![]);
        plumb_core::runner::run(desc, &opts, &mut enricher, &mut sink, control)
    });
    let ids: Vec<u32> = ids_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("attached");
    let facts = plumb_agent::progs::facts(&ids);
    let ring = plumb_agent::ringbuf::RingFill::of_maps(&facts.map_ids).expect("map the ring");
    assert!(!ring.is_empty(), "the exec gadget has a ring buffer");
    assert_eq!(ring.waiting(), vec![(0, 4 << 20)]);
    // The first exec's record holds the reader; the next ones wait.
    let k = 9u64;
    assert!(pod.run("/bin/true", &["held"]).success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while *events.lock().unwrap() == 0 && ring.waiting()[0].0 == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..k {
        assert!(pod.run("/bin/true", &["held"]).success());
    }
    // Identical execs: k + 1 records of one 8-byte-aligned size.
    let (waiting, size) = ring.waiting()[0];
    assert!(waiting.is_multiple_of(k + 1), "{waiting}");
    let record = waiting / (k + 1);
    assert!(record > 8 && record.is_multiple_of(8), "{record}");
    assert_eq!(ring.ratio(), waiting as f64 / size as f64);
    gate_tx.send(()).expect("release the reader");
    let deadline = Instant::now() + Duration::from_secs(10);
    while *events.lock().unwrap() < k + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*events.lock().unwrap(), k + 1);
    assert_eq!(ring.ratio(), 0.0, "all read");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    run.join().expect("run thread").expect("run");
    drop(ring);
    assert_no_programs_left(&ids);
}
