//! Root test in the network lab: over a lossy path (random drops by an
//! iptables statistic rule; netem is not available), the segments we report
//! retransmitted equal the kernel's TcpRetransSegs delta in the sender's
//! namespace, and every retransmit names the sender's and the receiver's
//! pod (k8s-style lab pods: pod UID and container id).

use crate::gadgets::net::lab_checks::assert_side;
use crate::gadgets::Body;
use crate::testing::{self, require_root};
use plumb_netlab::Lab;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A 16 MiB transfer from a client pod to a server pod over a path that
/// drops 5% of the packets, traced with `opts`: the client's
/// TcpRetransSegs delta, and the retransmits reported in its namespace
/// (each checked for its tuple and pods).
fn lossy_transfer(tag: &str, opts: crate::runner::RunOptions) -> (u64, u64) {
    let mut lab = Lab::new(tag).expect("lab");
    let client = lab.add_k8s_pod("cli").expect("client");
    let server = lab.add_k8s_pod("srv").expect("server");
    let port = 5001;
    let listener = server
        .ns
        .run(move || TcpListener::bind(("0.0.0.0", port)))
        .expect("run")
        .expect("listen");
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    });
    // Over a veth, segments travel as large GSO packets (up to 64 KiB): a
    // few hundred packets carry the transfer, so the drop probability must
    // make "no drop at all" practically impossible (0.95^256 < 1e-5).
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {port} -m statistic --mode random --probability 0.05 -j DROP"
        ))
        .expect("lossy rule");
    let before = client.ns.snmp("Tcp", "RetransSegs").expect("counter");
    let t = testing::start(&super::DESC, opts);
    let target = SocketAddr::from((server.ip, port));
    let sent = client
        .ns
        .run(move || {
            let mut s =
                TcpStream::connect_timeout(&target, Duration::from_secs(10)).expect("connect");
            let chunk = vec![7u8; 64 << 10];
            for _ in 0..256 {
                s.write_all(&chunk).expect("write");
            }
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            256 * chunk.len()
        })
        .expect("run in client");
    let received = sink.join().expect("sink");
    assert_eq!(received, sent);
    std::thread::sleep(Duration::from_millis(300));
    let after = client.ns.snmp("Tcp", "RetransSegs").expect("counter");
    let (events, stats) = t.finish();
    assert_eq!(stats.lost, 0);
    let ours: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Retrans(r) if r.flow.netns == client.ns.inode => Some(r),
            _ => None,
        })
        .collect();
    let reported: u64 = ours.iter().map(|r| r.segs as u64).sum();
    for r in &ours {
        assert_eq!(r.flow.saddr, Some(client.ip.into()));
        assert_eq!(r.flow.daddr, Some(server.ip.into()));
        assert_eq!(r.flow.dport, Some(port));
        assert_side(&r.flow, true, &client);
        assert_side(&r.flow, false, &server);
    }
    assert!(after > before, "the lossy rule must cause retransmissions");
    (after - before, reported)
}

#[test]
fn retransmitted_segments_equal_the_kernels_counter() {
    require_root();
    let (counted, reported) = lossy_transfer("rtx", Default::default());
    assert_eq!(
        reported, counted,
        "segments we report == TcpRetransSegs delta"
    );
}

/// The variant for a tracepoint whose result is an enum (no kernel plumb
/// can obtain has one): the program is the one of the `int err` result,
/// reporting only results equal to the success value read from the enum.
/// Forced through the test-only override on a kernel with an `int err`
/// result (this machine's): with the enum fixture's success value (1),
/// which no real result has, nothing is reported while the kernel counted
/// retransmits; forced with this kernel's own success value (0), every
/// retransmit is. Kernels without a result cannot load it, so the guests
/// skip it (scripts/guest-suite.sh).
#[test]
fn forced_result_enum_variant_reports_only_its_success_value() {
    use crate::gadgets::net::btf_fixture as fixture;
    require_root();
    let natural = crate::kernel::with_vmlinux(super::support)
        .expect("BTF")
        .expect("retrans runs here")
        .variant;
    assert_eq!(
        natural,
        super::Variant::Result(0),
        "needs an int-err kernel"
    );
    let super::Variant::Result(ok) = super::support(&fixture!("btf_retrans_result_enum"))
        .expect("the enum fixture")
        .variant
    else {
        panic!("the enum fixture has a result")
    };
    assert_eq!(ok, 1);
    let opts = testing::with_params(&[(super::FORCE_RESULT, &ok.to_string())]);
    let (counted, reported) = lossy_transfer("rtf", opts);
    assert!(counted > 0);
    assert_eq!(reported, 0, "no retransmit's result is 1");
    let opts = testing::with_params(&[(super::FORCE_RESULT, "0")]);
    let (counted, reported) = lossy_transfer("rtz", opts);
    assert_eq!(reported, counted, "forced to 0, every sent retransmit");
}

/// `--netns` keeps one client's SYN retransmits and leaves another's out
/// in the kernel: every record written is delivered, each in the selected
/// namespace with the exact tuple.
#[test]
fn netns_filter_keeps_one_clients_retransmits_in_the_kernel() {
    use crate::filter::{Filter, FilterArgs};
    use crate::gadgets::net::lab_checks::{assert_reserved_only, left_out_in_kernel};
    require_root();
    let mut lab = plumb_netlab::Lab::new("rtf").expect("lab");
    let cli = lab.add_k8s_pod("cli").expect("client");
    let cli2 = lab.add_k8s_pod("cli2").expect("second client");
    let srv = lab.add_k8s_pod("srv").expect("server");
    let port = 8091;
    srv.ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {port} -j DROP"
        ))
        .expect("iptables rule");
    let opts = crate::runner::RunOptions {
        filter: Filter::parse(
            &FilterArgs {
                netns: vec![cli.ns.name.clone()],
                ..Default::default()
            },
            None,
        )
        .expect("filter"),
        ..Default::default()
    };
    let t = testing::start(&super::DESC, opts);
    let target = SocketAddr::from((srv.ip, port));
    let connect = |p: &plumb_netlab::Pod| {
        p.ns.run(move || {
            let s = testing::BoundPort::new(std::net::Ipv4Addr::UNSPECIFIED).expect("bind");
            s.set_syn_retries(1).expect("TCP_SYNCNT");
            let SocketAddr::V4(t) = target else {
                unreachable!("IPv4 lab")
            };
            (s.connect(t), s.port)
        })
        .expect("run in client")
    };
    let other = std::thread::scope(|sc| {
        let h = sc.spawn(|| connect(&cli2));
        let ours = connect(&cli);
        (ours, h.join().expect("second client"))
    });
    let ((_, local), _) = other;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (events, stats) = t.finish();
    let oracle = cli
        .ns
        .snmp("Tcp", "RetransSegs")
        .expect("the client's RetransSegs");
    assert!(oracle >= 1, "the client's SYN was retransmitted");
    assert_eq!(
        events.len() as u64,
        oracle,
        "one event per segment the client's namespace counts as retransmitted"
    );
    for e in &events {
        let Body::Retrans(r) = &e.body else {
            panic!("not a retransmit: {e:?}")
        };
        assert_eq!(r.flow.netns, cli.ns.inode);
        assert_eq!(
            (r.flow.saddr, r.flow.sport, r.flow.daddr, r.flow.dport),
            (
                Some(cli.ip.into()),
                Some(local),
                Some(srv.ip.into()),
                Some(port)
            )
        );
        assert_eq!(
            (r.state.as_str(), r.tcp_flags.as_str()),
            ("SYN_SENT", "SYN")
        );
    }
    assert_reserved_only(&stats);
    assert_eq!(stats.filtered, 0);
    assert!(
        left_out_in_kernel(&stats) >= events.len() as u64,
        "the other client's as many retransmits were left out: {:?}",
        stats.counters
    );
}
