//! Root tests in the network lab: a DROP rule's packets are reported with
//! reason NETFILTER_DROP, in the server's namespace, with the exact tuple,
//! as many as the rule's own counter; the client's SYN retransmits are
//! reported against the client.

use crate::gadgets::Body;
use crate::testing::{self, iptables_packets, require_root, with_params};
use plumb_netlab::Lab;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[test]
fn netfilter_drop_counts_match_the_rule_and_syn_retransmits_hit_the_client() {
    require_root();
    let mut lab = Lab::new("drop").expect("lab");
    let client = lab.add_pod("cli").expect("client");
    let server = lab.add_pod("srv").expect("server");
    let port = 8081;
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {port} -j DROP"
        ))
        .expect("iptables rule");

    let drops = testing::start(&super::DESC, with_params(&[("reason", "NETFILTER_DROP")]));
    let retrans = testing::start(&crate::gadgets::retrans::DESC, Default::default());
    let target = SocketAddr::from((server.ip, port));
    let r = client
        .ns
        .run(move || TcpStream::connect_timeout(&target, Duration::from_millis(2500)))
        .expect("run in client");
    assert!(r.is_err(), "the DROP rule must stop the connection");
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
    let ours: Vec<_> = drop_events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Drop(d) if d.flow.netns == server.ns.inode => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        ours.len() as u64,
        rule,
        "drops we report == the rule's packet counter"
    );
    for d in &ours {
        assert_eq!(d.reason, "NETFILTER_DROP");
        assert_eq!(d.flow.proto, "tcp");
        assert_eq!(d.flow.saddr, Some(client.ip.into()));
        assert_eq!(d.flow.daddr, Some(server.ip.into()));
        assert_eq!(d.flow.dport, Some(port));
        assert_eq!(d.flow.netns_name.as_deref(), Some(server.ns.name.as_str()));
        assert_eq!(
            d.flow.src_netns,
            Some(client.ns.inode),
            "source side is the client"
        );
        assert_eq!(
            d.flow.dst_netns,
            Some(server.ns.inode),
            "destination side is the server"
        );
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
        assert_eq!(r.flow.src_netns, Some(client.ns.inode));
    }
}

#[test]
fn reason_names_of_the_live_kernel() {
    // Three reasons every kernel with drop reasons names, checked against
    // the running kernel's BTF as the gadget reads it.
    let names = crate::kernel::vmlinux_enum("skb_drop_reason", "SKB_DROP_REASON_");
    for n in ["NETFILTER_DROP", "NO_SOCKET", "NOT_SPECIFIED", "TCP_CSUM"] {
        assert!(names.values().any(|v| v == n), "kernel BTF has no {n}");
    }
    let value = names
        .iter()
        .find(|(_, v)| v.as_str() == "NO_SOCKET")
        .map(|(k, _)| *k)
        .unwrap();
    assert!(value > 0);
}
