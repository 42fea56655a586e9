//! Root tests in the network lab: a connect to a port nobody listens on in
//! another pod is reported as a reset sent by the server side and received
//! by the client side, with the same tuple, both naming the server's pod as
//! the source and the client's as the destination (k8s-style lab pods); an
//! aborted connection's RST is reported as sent by its socket.
//!
//! What a kernel can show differs (see [`super::support`]): before Linux
//! 6.9 an RST sent without a socket (the closed port's) is not traced, and
//! before 6.10 no reason comes with it. The tests ask the running kernel's
//! BTF which case they are in and assert exactly what that kernel gives;
//! the kernel-matrix guests (scripts/guest-suite.sh) run them on 5.10, 6.1
//! and 6.12, this machine on 6.18.

use super::{Direction, Variant};
use crate::gadgets::net::lab_checks::assert_side;
use crate::gadgets::Body;
use crate::testing::{self, require_root};
use plumb_netlab::Lab;
use std::net::SocketAddr;
use std::time::Duration;

/// What the running kernel shows: reasons, and RSTs sent without a socket
/// (read from its BTF once).
fn kernel_shows() -> (bool, bool) {
    static SHOWS: std::sync::OnceLock<(bool, bool)> = std::sync::OnceLock::new();
    *SHOWS.get_or_init(|| {
        crate::kernel::with_vmlinux(|b| {
            let s = super::support(b).expect("reset runs here");
            (s.variant == Variant::Reason, super::socketless_rsts(b))
        })
        .expect("the kernel's BTF")
    })
}

/// The reason expected for an RST the kernel names `name`.
fn reason(name: &str) -> Option<&str> {
    kernel_shows().0.then_some(name)
}

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
    let recv = t
        .wait_for(wait, |e| is(e, Direction::Received))
        .expect("reset received not seen");
    let Body::Reset(r) = &recv.body else {
        unreachable!()
    };
    if !kernel_shows().1 {
        // Sent without a socket: this kernel has no event for it.
        std::thread::sleep(testing::patience(Duration::from_millis(300)));
        assert!(
            t.matching(|e| is(e, Direction::Sent)).is_empty(),
            "a socketless RST seen on a kernel that cannot show it"
        );
        assert_eq!(r.flow.saddr, Some(server.ip.into()));
        assert_side(&r.flow, true, &server);
        assert_side(&r.flow, false, &client);
        assert_eq!(r.flow.netns, client.ns.inode);
        assert_eq!(r.state.as_deref(), Some("SYN_SENT"));
        t.finish();
        return;
    }
    let sent = t
        .wait_for(wait, |e| is(e, Direction::Sent))
        .expect("reset sent not seen");
    let Body::Reset(s) = &sent.body else {
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
    assert_eq!(s.reason.as_deref(), reason("NO_SOCKET"));
    assert_eq!(s.state, None, "no socket on the server side");
    assert_eq!(
        r.flow.netns, client.ns.inode,
        "received in the client's namespace"
    );
    assert_eq!(r.state.as_deref(), Some("SYN_SENT"));
    t.finish();
}

/// `--netns` of one server keeps the RST it sent and leaves out, in the
/// kernel, the RST its client received and both RSTs of another pair. On
/// a kernel that cannot show the servers' (socketless) RSTs, `--netns` of
/// the client keeps the RST it received and leaves out the other pair's.
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
    let socketless = kernel_shows().1;
    let kept = if socketless { &srv } else { &cli };
    let opts = crate::runner::RunOptions {
        filter: Filter::parse(
            &FilterArgs {
                netns: vec![kept.ns.path().display().to_string()],
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
    std::thread::sleep(testing::patience(Duration::from_millis(300)));
    let (events, stats) = t.finish();
    assert_eq!(
        events.len(),
        1,
        "only the RST sent or received in the namespace asked for: {events:?}"
    );
    let Body::Reset(r) = &events[0].body else {
        panic!("not a reset")
    };
    let dir = if socketless {
        Direction::Sent
    } else {
        Direction::Received
    };
    assert_eq!(r.direction, dir);
    assert_eq!(r.flow.netns, kept.ns.inode);
    assert_eq!(
        (r.flow.saddr, r.flow.sport, r.flow.daddr, r.flow.dport),
        (
            Some(srv.ip.into()),
            Some(9),
            Some(cli.ip.into()),
            Some(local)
        )
    );
    let want = if socketless {
        reason("NO_SOCKET")
    } else {
        None
    };
    assert_eq!(r.reason.as_deref(), want);
    assert_reserved_only(&stats);
    assert_eq!(stats.filtered, 0);
    assert!(
        left_out_in_kernel(&stats) >= if socketless { 3 } else { 1 },
        "the received RST and the other pair's two: {:?}",
        stats.counters
    );
}

/// An established connection closed with a zero linger sends an RST from
/// its socket, which every kernel traces: sent by the client's socket and
/// received by the server's, with the connection's tuple, pods and state.
#[test]
fn an_aborted_connection_resets_from_its_socket_on_every_kernel() {
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
    require_root();
    let mut lab = Lab::new("rsa").expect("lab");
    let client = lab.add_k8s_pod("cli").expect("client");
    let server = lab.add_k8s_pod("srv").expect("server");
    let listener = server
        .ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("listen"))
        .expect("run in server");
    let port = listener.local_addr().expect("addr").port();
    let t = testing::start(&super::DESC, Default::default());
    let to = SocketAddrV4::new(server.ip, port);
    let conn = client
        .ns
        .run(move || TcpStream::connect(to).expect("connect"))
        .expect("run in client");
    let local = conn.local_addr().expect("local").port();
    let (accepted, _) = listener.accept().expect("accept");
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this test owns, with a linger it made.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "linger 0");
    drop(conn);
    let is = |e: &crate::event::Event, dir: Direction| match &e.body {
        Body::Reset(r) => {
            r.direction == dir
                && (r.flow.saddr, r.flow.sport, r.flow.daddr, r.flow.dport)
                    == (
                        Some(client.ip.into()),
                        Some(local),
                        Some(server.ip.into()),
                        Some(port),
                    )
        }
        _ => false,
    };
    let wait = Duration::from_secs(10);
    let sent = t
        .wait_for(wait, |e| is(e, Direction::Sent))
        .expect("reset sent not seen");
    let recv = t
        .wait_for(wait, |e| is(e, Direction::Received))
        .expect("reset received not seen");
    drop(accepted);
    let (Body::Reset(s), Body::Reset(r)) = (&sent.body, &recv.body) else {
        unreachable!()
    };
    for x in [s, r] {
        assert_side(&x.flow, true, &client);
        assert_side(&x.flow, false, &server);
    }
    assert_eq!(
        s.flow.netns, client.ns.inode,
        "sent in the client's namespace"
    );
    assert_eq!(r.flow.netns, server.ns.inode, "received in the server's");
    // tcp_disconnect moves the socket to CLOSE, then sends the RST.
    assert_eq!(s.state.as_deref(), Some("CLOSE"));
    assert_eq!(s.reason.as_deref(), reason("TCP_STATE"));
    assert_eq!(r.state.as_deref(), Some("ESTABLISHED"));
    assert_eq!(r.reason, None, "a received RST has no reason");
    t.finish();
}
