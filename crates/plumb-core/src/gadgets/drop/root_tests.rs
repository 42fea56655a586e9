//! Root tests in the network lab, with k8s-style pods (a process in a
//! kubepods cgroup holds each pod's namespace), so both sides of every drop
//! are attributed to a pod UID and container id:
//!
//! - an iptables DROP rule: reason NETFILTER_DROP, in the server's
//!   namespace, exact tuple, as many as the rule's own counter; the SYN
//!   retransmits are reported against the client pod;
//! - three different reasons from real drops (NETFILTER_DROP, NO_SOCKET,
//!   IP_NOPROTO), with names checked against the kernel's tracefs table;
//! - IPv6 (ip6tables) and ICMP (echo requests) drops, and IPv6 ports read
//!   behind hop-by-hop and destination options headers;
//! - a drop on a second node, from a pod on the first.
//!
//! On a kernel without drop reasons (before 5.17: the 5.10 guest of the
//! kernel matrix runs these tests) `--reason` is refused and every drop is
//! UNKNOWN: the tests then select by namespace and tuple alone, tell the
//! drops apart by protocol, and expect UNKNOWN ([`kernel_reasons`]).

use super::tests::print_symbolic;
use super::ReasonNames;
use crate::gadgets::net::lab_checks::assert_side;
use crate::gadgets::Body;
use crate::testing::{self, iptables_packets, require_root, with_params};
use plumb_netlab::{Lab, Pod};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// Does this kernel give drop reasons (the program variant with a
/// reason)? Read from its BTF once.
pub(super) fn kernel_reasons() -> bool {
    static REASONS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REASONS.get_or_init(|| {
        crate::kernel::with_vmlinux(super::support)
            .expect("the kernel's BTF")
            .expect("drop runs here")
            .variant
            == super::Variant::Reason
    })
}

/// Run options selecting `reasons`, where the kernel has reasons.
pub(super) fn reason_params(reasons: &str) -> crate::runner::RunOptions {
    if kernel_reasons() {
        with_params(&[("reason", reasons)])
    } else {
        Default::default()
    }
}

/// The reason a drop the kernel calls `name` is reported with here.
pub(super) fn reported(name: &'static str) -> &'static str {
    if kernel_reasons() {
        name
    } else {
        super::UNKNOWN_REASON
    }
}

/// The drops in `ns`'s namespace.
fn drops_in<'a>(events: &'a [crate::event::Event], ns: &Pod) -> Vec<&'a super::Drop> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Drop(d) if d.flow.netns == ns.ns.inode => Some(d),
            _ => None,
        })
        .collect()
}

/// Connect from `client` to `addr` (a dropping rule makes it time out).
fn connect_fails(client: &Pod, addr: SocketAddr) {
    let r = client
        .ns
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(2500)))
        .expect("run in client");
    assert!(r.is_err(), "the DROP rule must stop the connection");
}

#[test]
fn netfilter_drop_counts_match_the_rule_and_syn_retransmits_hit_the_client() {
    require_root();
    let mut lab = Lab::new("drop").expect("lab");
    let client = lab.add_k8s_pod("cli").expect("client");
    let server = lab.add_k8s_pod("srv").expect("server");
    let port = 8081;
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {port} -j DROP"
        ))
        .expect("iptables rule");

    let drops = testing::start(&super::DESC, reason_params("NETFILTER_DROP"));
    let retrans = testing::start(&crate::gadgets::retrans::DESC, Default::default());
    connect_fails(&client, SocketAddr::from((server.ip, port)));
    // The last dropped SYN may still be in the ring buffer.
    std::thread::sleep(Duration::from_millis(300));
    let listing = server.ns.sh("iptables -w -vnxL INPUT").expect("list");
    let rule = iptables_packets(&listing, &format!("dpt:{port}")).expect("rule counter");
    assert!(
        rule >= 2,
        "a SYN and at least one retransmit hit the rule: {listing}"
    );

    let (drop_events, stats) = drops.finish();
    assert_eq!(stats.lost, 0);
    let ours = drops_in(&drop_events, &server);
    assert_eq!(
        ours.len() as u64,
        rule,
        "drops we report == the rule's packet counter"
    );
    for d in &ours {
        assert_eq!(d.reason, reported("NETFILTER_DROP"));
        assert_eq!(d.flow.proto, "tcp");
        assert_eq!(d.flow.saddr, Some(client.ip.into()));
        assert_eq!(d.flow.daddr, Some(server.ip.into()));
        assert_eq!(d.flow.dport, Some(port));
        assert_eq!(d.flow.netns_name.as_deref(), Some(server.ns.name.as_str()));
        assert_side(&d.flow, true, &client);
        assert_side(&d.flow, false, &server);
        let nf = ["nf_hook_slow", "nft_do_chain", "ipt_do_table"];
        assert!(
            nf.iter().any(|f| d.location.starts_with(f)),
            "dropped in netfilter: {}",
            d.location
        );
    }

    let (rt_events, _) = retrans.finish();
    let syn_rt: Vec<_> = rt_events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Retrans(r)
                if r.flow.dport == Some(port) && r.flow.daddr == Some(server.ip.into()) =>
            {
                Some(r)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        syn_rt.len() as u64,
        rule - 1,
        "every dropped SYN but the first was a retransmit"
    );
    for r in syn_rt {
        assert_eq!(r.state, "SYN_SENT");
        assert_eq!(r.tcp_flags, "SYN");
        assert_eq!(
            r.flow.netns, client.ns.inode,
            "retransmitted by the client's socket"
        );
        assert_eq!(r.flow.saddr, Some(client.ip.into()));
        assert_side(&r.flow, true, &client);
        assert_side(&r.flow, false, &server);
    }
}

#[test]
fn reason_names_equal_the_kernels_own_tracefs_table() {
    require_root();
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|r| std::fs::read_to_string(format!("{r}/events/skb/kfree_skb/format")).ok())
        .expect("tracefs format of skb:kfree_skb");
    let ours = ReasonNames::vmlinux();
    if !kernel_reasons() {
        // No reason field in the tracepoint, no enum in the BTF.
        assert!(!format.contains("reason"), "{format}");
        assert!(ours.core.is_empty(), "{:?}", ours.core);
        return;
    }
    let oracle = print_symbolic(&format, "reason");
    assert!(oracle.len() > 10, "a symbolic table: {format}");
    for (v, name) in &oracle {
        if name == "MAX" {
            // The table's end marker, not a reason: never named by us.
            assert_eq!(ours.core.get(v), None);
            continue;
        }
        assert_eq!(ours.core.get(v), Some(name), "reason {v}");
    }
    // Every reason we name is in the kernel's table, but for the two that
    // kfree_skb never reports (it reports CONSUMED as consume_skb).
    for (v, name) in &ours.core {
        if matches!(name.as_str(), "NOT_DROPPED_YET" | "CONSUMED") {
            continue;
        }
        assert!(
            oracle.iter().any(|(ov, on)| ov == v && on == name),
            "{v} {name} is not in the kernel's table"
        );
    }
}

/// Send one datagram of IP protocol 253 (reserved for experiments: no
/// handler, and nobody listens raw) from the calling thread's namespace.
fn send_raw_253(to: std::net::Ipv4Addr) {
    // SAFETY: plain socket calls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, 253);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let mut d: libc::sockaddr_in = std::mem::zeroed();
        d.sin_family = libc::AF_INET as u16;
        d.sin_addr.s_addr = u32::from(to).to_be();
        let msg = b"plumb-noproto";
        let n = libc::sendto(
            fd,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            &d as *const _ as *const _,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(n, msg.len() as isize, "{}", std::io::Error::last_os_error());
        libc::close(fd);
    }
}

#[test]
fn three_reasons_from_real_drops_with_exact_tuples() {
    require_root();
    let mut lab = Lab::new("why").expect("lab");
    let client = lab.add_k8s_pod("cli").expect("client");
    let server = lab.add_k8s_pod("srv").expect("server");
    let (tcp_port, udp_port) = (8083, 9999);
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {tcp_port} -j DROP"
        ))
        .expect("rule");
    let noproto_before = server.ns.snmp("Ip", "InUnknownProtos").expect("counter");
    let t = testing::start(
        &super::DESC,
        reason_params("NETFILTER_DROP,NO_SOCKET,IP_NOPROTO"),
    );
    connect_fails(&client, SocketAddr::from((server.ip, tcp_port)));
    let target = SocketAddr::from((server.ip, udp_port));
    let udp_sport = client
        .ns
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.send_to(b"plumb-closed-port", target).expect("send");
            s.local_addr().expect("addr").port()
        })
        .expect("run");
    let to = server.ip;
    client.ns.run(move || send_raw_253(to)).expect("run");
    std::thread::sleep(Duration::from_millis(300));
    let listing = server.ns.sh("iptables -w -vnxL INPUT").expect("list");
    let rule = iptables_packets(&listing, &format!("dpt:{tcp_port}")).expect("counter");
    let noproto = server.ns.snmp("Ip", "InUnknownProtos").expect("counter") - noproto_before;
    let (events, stats) = t.finish();
    assert_eq!(stats.lost, 0);
    let ours = drops_in(&events, &server);
    // By reason and protocol (without reasons, by protocol alone).
    let by = |r: &'static str, proto: &str| {
        ours.iter()
            .filter(|d| d.reason == reported(r) && d.flow.proto == proto)
            .collect::<Vec<_>>()
    };

    let nf = by("NETFILTER_DROP", "tcp");
    assert_eq!(nf.len() as u64, rule, "== the rule's counter");
    for d in nf {
        assert_eq!(
            (d.flow.proto.as_str(), d.flow.dport),
            ("tcp", Some(tcp_port))
        );
    }
    let udp = by("NO_SOCKET", "udp");
    assert_eq!(udp.len(), 1, "one datagram to a closed port: {ours:?}");
    let d = udp[0];
    assert_eq!(d.flow.proto, "udp");
    assert_eq!(
        (d.flow.saddr, d.flow.sport, d.flow.daddr, d.flow.dport),
        (
            Some(client.ip.into()),
            Some(udp_sport),
            Some(server.ip.into()),
            Some(udp_port)
        )
    );
    let raw = by("IP_NOPROTO", "253");
    assert_eq!(raw.len() as u64, noproto, "== the kernel's InUnknownProtos");
    assert_eq!(raw.len(), 1);
    let d = raw[0];
    assert_eq!(
        (d.flow.proto.as_str(), d.flow.sport, d.flow.dport),
        ("253", None, None)
    );
    assert_eq!(d.flow.saddr, Some(client.ip.into()));
    assert_eq!(d.flow.daddr, Some(server.ip.into()));
    for d in &ours {
        assert_eq!(d.flow.netns_name.as_deref(), Some(server.ns.name.as_str()));
        assert_side(&d.flow, true, &client);
        assert_side(&d.flow, false, &server);
    }
    assert_eq!(ours.len() as u64, rule + 2, "nothing else: {ours:?}");
}

#[test]
fn ipv6_and_icmp_drops_have_exact_tuples_and_icmp_type_code() {
    require_root();
    let mut lab = Lab::new("v6").expect("lab");
    let client = lab.add_k8s_pod("cli").expect("client");
    let server = lab.add_k8s_pod("srv").expect("server");
    let port = 8084;
    server
        .ns
        .sh(&format!(
            "ip6tables -w -A INPUT -p tcp --dport {port} -j DROP && \
             iptables -w -A INPUT -p icmp --icmp-type echo-request -j DROP"
        ))
        .expect("rules");
    let t = testing::start(&super::DESC, reason_params("NETFILTER_DROP"));
    connect_fails(&client, SocketAddr::from((server.ip6, port)));
    let ping = client
        .ns
        .cmd(&format!("ping -c 2 -i 0.2 -W 1 {}", server.ip))
        .expect("ping");
    assert!(!ping.status.success(), "echo requests are dropped");
    std::thread::sleep(Duration::from_millis(300));
    let v6_rule = iptables_packets(
        &server.ns.sh("ip6tables -w -vnxL INPUT").expect("list"),
        &format!("dpt:{port}"),
    )
    .expect("counter");
    let icmp_rule = iptables_packets(
        &server.ns.sh("iptables -w -vnxL INPUT").expect("list"),
        "icmptype 8",
    )
    .expect("counter");
    let (events, _) = t.finish();
    let ours = drops_in(&events, &server);
    let v6: Vec<_> = ours.iter().filter(|d| d.flow.proto == "tcp").collect();
    assert!(v6_rule >= 2, "a SYN and a retransmit");
    assert_eq!(v6.len() as u64, v6_rule, "== the ip6tables counter");
    for d in &v6 {
        assert_eq!(d.flow.family, Some("ipv6"));
        assert_eq!(d.flow.saddr, Some(IpAddr::from(client.ip6)));
        assert_eq!(d.flow.daddr, Some(IpAddr::from(server.ip6)));
        assert_eq!(d.flow.dport, Some(port));
        assert!(d.flow.sport.is_some_and(|p| p > 0));
        assert_side(&d.flow, true, &client);
        assert_side(&d.flow, false, &server);
    }
    let icmp: Vec<_> = ours.iter().filter(|d| d.flow.proto == "icmp").collect();
    assert_eq!(icmp.len() as u64, icmp_rule, "== the ICMP rule's counter");
    assert_eq!(icmp.len(), 2, "two echo requests");
    for d in &icmp {
        let j = serde_json::to_value(d).expect("json");
        assert_eq!(
            (&j["icmp_type"], &j["icmp_code"], &j["icmp"]),
            (
                &serde_json::json!(8),
                &serde_json::json!(0),
                &serde_json::json!("8/0")
            )
        );
        assert_eq!(
            (&j["sport"], &j["dport"]),
            (&serde_json::Value::Null, &serde_json::Value::Null)
        );
        assert_eq!(d.flow.saddr, Some(client.ip.into()));
        assert_eq!(d.flow.daddr, Some(server.ip.into()));
        assert_side(&d.flow, true, &client);
        assert_side(&d.flow, false, &server);
    }
    assert_eq!(ours.len(), v6.len() + icmp.len(), "nothing else: {ours:?}");
}

/// Send one UDP datagram over IPv6 carrying a hop-by-hop and a
/// destination options header (PadN only) from the calling thread's
/// namespace; returns the source port.
fn send_udp6_with_options(to: std::net::SocketAddrV6) -> u16 {
    use std::os::fd::AsRawFd;
    let s = UdpSocket::bind("[::]:0").expect("bind");
    // next header (set by the kernel), length 0 (8 bytes), PadN of 4.
    let opts: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
    for name in [libc::IPV6_HOPOPTS, libc::IPV6_DSTOPTS] {
        // SAFETY: setsockopt with a buffer of the length given.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IPV6,
                name,
                opts.as_ptr().cast(),
                opts.len() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "setsockopt {name}: {}",
            std::io::Error::last_os_error()
        );
    }
    s.send_to(b"plumb-ext-headers", to).expect("send");
    s.local_addr().expect("addr").port()
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_ports() {
    require_root();
    let mut lab = Lab::new("ext").expect("lab");
    let client = lab.add_k8s_pod("cli").expect("client");
    let server = lab.add_k8s_pod("srv").expect("server");
    let port = 9998;
    // A counting rule (it accepts) that proves the headers are on the wire.
    server
        .ns
        .sh("ip6tables -w -A INPUT -p udp -m ipv6header --header hop,dst --soft -j ACCEPT")
        .expect("ip6tables ipv6header rule");
    let t = testing::start(&super::DESC, reason_params("NO_SOCKET"));
    let to = std::net::SocketAddrV6::new(server.ip6, port, 0, 0);
    let sport = client
        .ns
        .run(move || send_udp6_with_options(to))
        .expect("run");
    std::thread::sleep(Duration::from_millis(300));
    let seen = iptables_packets(
        &server.ns.sh("ip6tables -w -vnxL INPUT").expect("list"),
        "ipv6header",
    )
    .expect("counter");
    assert_eq!(seen, 1, "the datagram carried both extension headers");
    let (events, _) = t.finish();
    let ours = drops_in(&events, &server);
    assert_eq!(ours.len(), 1, "{ours:?}");
    let d = ours[0];
    assert_eq!(d.reason, reported("NO_SOCKET"));
    assert_eq!(
        (d.flow.proto.as_str(), d.flow.family),
        ("udp", Some("ipv6")),
        "the transport header behind the options"
    );
    assert_eq!(
        (d.flow.saddr, d.flow.sport, d.flow.daddr, d.flow.dport),
        (
            Some(IpAddr::from(client.ip6)),
            Some(sport),
            Some(IpAddr::from(server.ip6)),
            Some(port)
        )
    );
    assert_side(&d.flow, true, &client);
    assert_side(&d.flow, false, &server);
}

#[test]
fn a_drop_on_another_node_names_both_pods() {
    require_root();
    let mut lab = Lab::new("xnode").expect("lab");
    let node_b = lab.add_node().expect("second node");
    let client = lab.add_k8s_pod_on(0, "a").expect("pod on node A");
    let server = lab.add_k8s_pod_on(node_b, "b").expect("pod on node B");
    let port = 8085;
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {port} -j DROP"
        ))
        .expect("rule");
    let t = testing::start(&super::DESC, reason_params("NETFILTER_DROP"));
    connect_fails(&client, SocketAddr::from((server.ip, port)));
    std::thread::sleep(Duration::from_millis(300));
    let rule = iptables_packets(
        &server.ns.sh("iptables -w -vnxL INPUT").expect("list"),
        &format!("dpt:{port}"),
    )
    .expect("counter");
    let (events, _) = t.finish();
    let ours = drops_in(&events, &server);
    assert_eq!(ours.len() as u64, rule, "== the rule's counter on node B");
    for d in &ours {
        assert_eq!(d.reason, reported("NETFILTER_DROP"));
        assert_eq!(d.flow.saddr, Some(client.ip.into()));
        assert_eq!(d.flow.daddr, Some(server.ip.into()));
        assert_eq!(d.flow.netns_name.as_deref(), Some(server.ns.name.as_str()));
        assert_side(&d.flow, true, &client);
        assert_side(&d.flow, false, &server);
    }
    // The packets crossed the routed link: node B forwarded them.
    let fwd = lab
        .node(node_b)
        .snmp("Ip", "ForwDatagrams")
        .expect("counter");
    assert!(
        fwd >= rule,
        "node B forwarded {fwd} datagrams, {rule} dropped"
    );
}
