//! Root tests of drop's in-kernel filter, in the network lab: two server
//! pods drop UDP in an iptables DROP rule while two clients send to them.
//! Selecting one server (by container, by `--netns`, by `--port`, by
//! `--addr`) delivers exactly its drops, with the exact tuple and reason,
//! and the other pod's drops are neither delivered nor reserved: the
//! gadget's own counters show that every record the kernel wrote was
//! delivered, and that the other pod's drops were left out in the kernel.

use super::root_tests::{reason_params, reported};
use crate::event::Event;
use crate::filter::{Filter, FilterArgs};
use crate::gadgets::net::lab_checks::{assert_reserved_only, left_out_in_kernel, udp_burst};
use crate::gadgets::Body;
use crate::runner::RunStats;
use crate::testing::{self, iptables_packets, require_root};
use plumb_netlab::{Lab, Pod};
use std::time::Duration;

const N: usize = 40;
const M: usize = 60;

struct Setup {
    _lab: Lab,
    cli: Pod,
    cli2: Pod,
    srv: Pod,
    other: Pod,
    port: u16,
    port2: u16,
}

/// Two clients, two servers; each server drops UDP to `port` and `port2`.
fn setup(tag: &str) -> Setup {
    let mut lab = Lab::new(tag).expect("lab");
    let cli = lab.add_k8s_pod("cli").expect("client");
    let cli2 = lab.add_k8s_pod("cli2").expect("second client");
    let srv = lab.add_k8s_pod("srv").expect("server");
    let other = lab.add_k8s_pod("oth").expect("other server");
    let (port, port2) = (7301, 7302);
    for p in [&srv, &other] {
        for port in [port, port2] {
            p.ns.sh(&format!(
                "iptables -w -A INPUT -p udp --dport {port} -j DROP"
            ))
            .expect("iptables rule");
        }
    }
    Setup {
        _lab: lab,
        cli,
        cli2,
        srv,
        other,
        port,
        port2,
    }
}

fn rule(p: &Pod, port: u16) -> u64 {
    let listing = p.ns.sh("iptables -w -vnxL INPUT").expect("list");
    iptables_packets(&listing, &format!("dpt:{port}")).expect("rule counter")
}

/// Run drop (NETFILTER_DROP only) with `args` while `load` runs.
fn traced(args: FilterArgs, load: impl FnOnce()) -> (Vec<Event>, RunStats) {
    let mut opts = reason_params("NETFILTER_DROP");
    opts.filter = Filter::parse(&args, None).expect("filter");
    let t = testing::start(&super::DESC, opts);
    load();
    // The last drops may still be in the ring buffer.
    std::thread::sleep(Duration::from_millis(300));
    t.finish()
}

/// Every delivered event is a NETFILTER_DROP of udp `from:sport` →
/// `to:port` in `to`'s namespace; returns how many.
fn assert_all(events: &[Event], from: &Pod, sport: u16, to: &Pod, port: u16) -> usize {
    for e in events {
        let Body::Drop(d) = &e.body else {
            panic!("not a drop: {e:?}")
        };
        assert_eq!(d.reason, reported("NETFILTER_DROP"));
        assert_eq!(d.flow.netns, to.ns.inode, "in the selected pod's namespace");
        assert_eq!(d.flow.proto, "udp");
        assert_eq!(
            (d.flow.saddr, d.flow.sport, d.flow.daddr, d.flow.dport),
            (
                Some(from.ip.into()),
                Some(sport),
                Some(to.ip.into()),
                Some(port)
            ),
            "exact tuple"
        );
    }
    events.len()
}

#[test]
fn a_containers_drops_are_delivered_and_another_pods_are_neither_delivered_nor_reserved() {
    require_root();
    let s = setup("dflt");
    let k = s.srv.k8s.as_ref().expect("k8s pod");
    let mut sports = (0, 0);
    let (events, stats) = traced(
        FilterArgs {
            container: Some(k.container_id.clone()),
            ..Default::default()
        },
        || {
            sports.0 = udp_burst(&s.cli, s.srv.ip, s.port, N);
            sports.1 = udp_burst(&s.cli2, s.other.ip, s.port, M);
        },
    );
    assert_eq!(rule(&s.srv, s.port), N as u64);
    assert_eq!(rule(&s.other, s.port), M as u64);
    assert_eq!(assert_all(&events, &s.cli, sports.0, &s.srv, s.port), N);
    assert_reserved_only(&stats);
    assert_eq!(stats.filtered, 0, "the kernel alone kept the other pod out");
    assert!(
        left_out_in_kernel(&stats) >= M as u64,
        "the other pod's {M} drops were left out in the kernel: {:?}",
        stats.counters
    );
}

#[test]
fn netns_by_name_selects_one_pods_drops_in_the_kernel() {
    require_root();
    let s = setup("dns");
    let mut sports = (0, 0);
    let (events, stats) = traced(
        FilterArgs {
            netns: vec![s.srv.ns.name.clone()],
            ..Default::default()
        },
        || {
            sports.0 = udp_burst(&s.cli, s.srv.ip, s.port, N);
            sports.1 = udp_burst(&s.cli2, s.other.ip, s.port, M);
        },
    );
    assert_eq!(assert_all(&events, &s.cli, sports.0, &s.srv, s.port), N);
    assert_eq!(rule(&s.srv, s.port), N as u64);
    assert_reserved_only(&stats);
    assert_eq!(stats.filtered, 0);
    assert!(
        left_out_in_kernel(&stats) >= M as u64,
        "{:?}",
        stats.counters
    );

    // A path to the namespace file selects the same namespace.
    let f = Filter::parse(
        &FilterArgs {
            netns: vec![s.other.ns.path().display().to_string()],
            ..Default::default()
        },
        None,
    )
    .expect("filter");
    assert_eq!(f.netns[0].inode, s.other.ns.inode);
}

#[test]
fn port_and_addr_are_checked_in_the_kernel_on_either_side() {
    require_root();
    let s = setup("dpa");
    // --port: only port2 of both servers, whoever sends.
    let mut sp = 0;
    let (events, stats) = traced(
        FilterArgs {
            port: vec![s.port2.to_string()],
            netns: vec![s.srv.ns.name.clone()],
            ..Default::default()
        },
        || {
            udp_burst(&s.cli, s.srv.ip, s.port, M);
            sp = udp_burst(&s.cli, s.srv.ip, s.port2, N);
        },
    );
    assert_eq!(assert_all(&events, &s.cli, sp, &s.srv, s.port2), N);
    assert_reserved_only(&stats);
    assert_eq!(stats.filtered, 0);
    assert!(
        left_out_in_kernel(&stats) >= M as u64,
        "{:?}",
        stats.counters
    );

    // --addr: the source address of one client (either side matches), as
    // a prefix and as a bare address.
    for addr in [format!("{}/32", s.cli.ip), s.cli.ip.to_string()] {
        let mut sp = 0;
        let (events, stats) = traced(
            FilterArgs {
                addr: vec![addr.clone()],
                ..Default::default()
            },
            || {
                sp = udp_burst(&s.cli, s.other.ip, s.port, N);
                udp_burst(&s.cli2, s.other.ip, s.port, M);
            },
        );
        assert_eq!(
            assert_all(&events, &s.cli, sp, &s.other, s.port),
            N,
            "--addr {addr}"
        );
        assert_reserved_only(&stats);
        assert_eq!(stats.filtered, 0);
        assert!(
            left_out_in_kernel(&stats) >= M as u64,
            "{:?}",
            stats.counters
        );
    }
}

#[test]
fn summary_counts_in_the_kernel_and_writes_no_record() {
    require_root();
    let s = setup("dsum");
    let mut opts = reason_params("NETFILTER_DROP");
    opts.filter = Filter::parse(
        &FilterArgs {
            netns: vec![s.srv.ns.name.clone(), s.other.ns.name.clone()],
            ..Default::default()
        },
        None,
    )
    .expect("filter");
    let keys: Vec<String> = super::DESC
        .summary_keys
        .iter()
        .map(|k| k.to_string())
        .collect();
    let sink = crate::sink::OutputSink::new(
        crate::sink::SummarySink::new(Vec::new(), keys, Duration::from_secs(3600), true),
        std::sync::Arc::from("n"),
    );
    let (stats, out) = testing::run_with_sink(&super::DESC, opts, sink, || {
        udp_burst(&s.cli, s.srv.ip, s.port, N);
        udp_burst(&s.cli2, s.other.ip, s.port, M);
        udp_burst(&s.cli2, s.other.ip, s.port2, M);
    });
    assert_eq!(stats.kernel_written, Some(0), "no record written");
    assert_eq!(stats.seen, (N + 2 * M) as u64);
    let rows: Vec<serde_json::Value> = String::from_utf8(out.into_inner().into_inner())
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let row = |p: &Pod| {
        rows.iter()
            .find(|r| r["netns"] == p.ns.inode)
            .unwrap_or_else(|| panic!("a row for {}: {rows:?}", p.ns.name))
    };
    assert_eq!(rows.len(), 2, "{rows:?}");
    let srv = row(&s.srv);
    assert_eq!(srv["reason"], reported("NETFILTER_DROP"));
    assert_eq!(srv["count"], N as u64);
    let k = s.srv.k8s.as_ref().expect("k8s pod");
    assert_eq!(srv["dst_who"], format!("pod:{}", &k.pod_uid[..8]));
    let oth = row(&s.other);
    assert_eq!(oth["count"], 2 * M as u64, "one row for both ports");
}
