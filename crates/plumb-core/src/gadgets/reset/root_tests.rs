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
            let s = socket2_connect(target);
            (s.0, s.1)
        })
        .expect("run in client");
    assert_eq!(res, Some(libc::ECONNREFUSED));
    let wait = Duration::from_secs(10);
    let is = |e: &crate::event::Event, dir: Direction| match &e.body {
        Body::Reset(r) => {
            r.direction == dir && r.flow.sport == Some(9) && r.flow.daddr == Some(client.ip.into())
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

/// Connect from a bound socket so the local port is known even on failure.
fn socket2_connect(target: SocketAddr) -> (Option<i32>, u16) {
    let l = std::net::TcpListener::bind("0.0.0.0:0").expect("pick a port");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    // SAFETY: plain socket calls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const _,
            4,
        );
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as u16;
        a.sin_port = port.to_be();
        libc::bind(
            fd,
            &a as *const _ as *const _,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        let SocketAddr::V4(t) = target else {
            panic!("v4 only")
        };
        let mut d: libc::sockaddr_in = std::mem::zeroed();
        d.sin_family = libc::AF_INET as u16;
        d.sin_port = t.port().to_be();
        d.sin_addr.s_addr = u32::from(*t.ip()).to_be();
        let rc = libc::connect(
            fd,
            &d as *const _ as *const _,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        let err = (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        libc::close(fd);
        (err, port)
    }
}
