//! Root test in the network lab: a connect to a port nobody listens on in
//! another pod is reported as a reset sent by the server side and received
//! by the client side, with the same tuple, both naming the server's pod as
//! the source and the client's as the destination (k8s-style lab pods).

use super::Direction;
use crate::gadgets::net::lab_checks::assert_side;
use crate::gadgets::Body;
use crate::testing::{self, require_root};
use plumb_netlab::Lab;
use std::net::SocketAddr;
use std::time::Duration;

#[test]
fn closed_port_reset_is_sent_by_server_and_received_by_client() {
    require_root();
    let mut lab = Lab::new("rst").expect("lab");
    let client = lab.add_k8s_pod("cli").expect("client");
    let server = lab.add_k8s_pod("srv").expect("server");
    let t = testing::start(&super::DESC, Default::default());
    let target = SocketAddr::from((server.ip, 9));
    let (res, local) = client
        .ns
        .run(move || {
            // Bound first, so the local port is known although the
            // connect fails.
            let s = testing::BoundPort::new(std::net::Ipv4Addr::UNSPECIFIED).expect("bind");
            let SocketAddr::V4(t) = target else {
                unreachable!("the lab's pods have IPv4 addresses")
            };
            (s.connect(t), s.port)
        })
        .expect("run in client");
    assert_eq!(res, Some(libc::ECONNREFUSED));
    let wait = Duration::from_secs(10);
    let is = |e: &crate::event::Event, dir: Direction| match &e.body {
        Body::Reset(r) => {
            r.direction == dir
                && r.flow.sport == Some(9)
                && r.flow.daddr == Some(client.ip.into())
                && r.flow.dport == Some(local)
        }
        _ => false,
    };
    let sent = t
        .wait_for(wait, |e| is(e, Direction::Sent))
        .expect("reset sent not seen");
    let recv = t
        .wait_for(wait, |e| is(e, Direction::Received))
        .expect("reset received not seen");
    let (Body::Reset(s), Body::Reset(r)) = (&sent.body, &recv.body) else {
        unreachable!()
    };
    for x in [s, r] {
        assert_eq!(x.flow.saddr, Some(server.ip.into()));
        assert_eq!(x.flow.sport, Some(9));
        assert_eq!(x.flow.daddr, Some(client.ip.into()));
        assert_eq!(x.flow.dport, Some(local));
        assert_side(&x.flow, true, &server);
        assert_side(&x.flow, false, &client);
    }
    assert_eq!(
        s.flow.netns, server.ns.inode,
        "sent in the server's namespace"
    );
    assert_eq!(s.reason.as_deref(), Some("NO_SOCKET"));
    assert_eq!(s.state, None, "no socket on the server side");
    assert_eq!(
        r.flow.netns, client.ns.inode,
        "received in the client's namespace"
    );
    assert_eq!(r.state.as_deref(), Some("SYN_SENT"));
    t.finish();
}

/// `--netns` of one server keeps the RST it sent and leaves out, in the
/// kernel, the RST its client received and both RSTs of another pair.
#[test]
fn netns_filter_keeps_one_servers_resets_in_the_kernel() {
    use crate::filter::{Filter, FilterArgs};
    use crate::gadgets::net::lab_checks::{assert_reserved_only, left_out_in_kernel};
    require_root();
    let mut lab = Lab::new("rsf").expect("lab");
    let cli = lab.add_k8s_pod("cli").expect("client");
    let cli2 = lab.add_k8s_pod("cli2").expect("second client");
    let srv = lab.add_k8s_pod("srv").expect("server");
    let other = lab.add_k8s_pod("oth").expect("other server");
    let opts = crate::runner::RunOptions {
        filter: Filter::parse(
            &FilterArgs {
                netns: vec![srv.ns.path().display().to_string()],
                ..Default::default()
            },
            None,
        )
        .expect("filter"),
        ..Default::default()
    };
    let t = testing::start(&super::DESC, opts);
    let refused = |p: &plumb_netlab::Pod, to: std::net::Ipv4Addr| {
        p.ns.run(move || {
            let s = testing::BoundPort::new(std::net::Ipv4Addr::UNSPECIFIED).expect("bind");
            (s.connect(std::net::SocketAddrV4::new(to, 9)), s.port)
        })
        .expect("run in client")
    };
    let (res, local) = refused(&cli, srv.ip);
    assert_eq!(res, Some(libc::ECONNREFUSED));
    assert_eq!(refused(&cli2, other.ip).0, Some(libc::ECONNREFUSED));
    std::thread::sleep(Duration::from_millis(300));
    let (events, stats) = t.finish();
    assert_eq!(
        events.len(),
        1,
        "only the RST sent in the server's namespace: {events:?}"
    );
    let Body::Reset(r) = &events[0].body else {
        panic!("not a reset")
    };
    assert_eq!(r.direction, Direction::Sent);
    assert_eq!(r.flow.netns, srv.ns.inode);
    assert_eq!(
        (r.flow.saddr, r.flow.sport, r.flow.daddr, r.flow.dport),
        (
            Some(srv.ip.into()),
            Some(9),
            Some(cli.ip.into()),
            Some(local)
        )
    );
    assert_eq!(r.reason.as_deref(), Some("NO_SOCKET"));
    assert_reserved_only(&stats);
    assert_eq!(stats.filtered, 0);
    assert!(
        left_out_in_kernel(&stats) >= 3,
        "the received RST and the other pair's two: {:?}",
        stats.counters
    );
}
