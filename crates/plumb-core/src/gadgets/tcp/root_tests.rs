//! Root tests: the tcp gadget against loopback connections made by this
//! process (loopback only; nothing leaves the machine).

use super::{Tcp, TcpEvent};
use crate::event::Event;
use crate::gadgets::Body;
use crate::runner::RunOptions;
use crate::testing::{self, require_root};
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn tcp_of(e: &Event) -> Option<&Tcp> {
    match &e.body {
        Body::Tcp(x) => Some(x),
        _ => None,
    }
}

fn lifecycle(bind: &str) {
    let t = testing::start(&super::DESC, RunOptions::default());
    let listener = TcpListener::bind(bind).expect("bind");
    let server: SocketAddr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(server).expect("connect");
    let local: SocketAddr = client.local_addr().expect("local");
    let (accepted, _) = listener.accept().expect("accept");
    std::thread::sleep(Duration::from_millis(20));
    drop(client);
    let mut buf = [0u8; 1];
    let _ = (&accepted).read(&mut buf); // sees the FIN
    drop(accepted);
    let ip: IpAddr = server.ip();
    let is = |e: &Event, ev: TcpEvent, sport: u16, dport: u16| {
        tcp_of(e).is_some_and(|x| {
            x.event == ev && x.sport == sport && x.dport == dport && x.saddr == ip && x.daddr == ip
        })
    };
    let wait = Duration::from_secs(10);
    let c = t
        .wait_for(wait, |e| {
            is(e, TcpEvent::Connect, local.port(), server.port())
        })
        .expect("connect not seen");
    let a = t
        .wait_for(wait, |e| {
            is(e, TcpEvent::Accept, server.port(), local.port())
        })
        .expect("accept not seen");
    let cc = t
        .wait_for(wait, |e| {
            is(e, TcpEvent::Close, local.port(), server.port())
        })
        .expect("client close not seen");
    let sc = t
        .wait_for(wait, |e| {
            is(e, TcpEvent::Close, server.port(), local.port())
        })
        .expect("server close not seen");
    let me = std::process::id();
    for e in [&c, &a, &cc, &sc] {
        assert_eq!(
            e.header.pid,
            Some(me),
            "owner of {:?}",
            tcp_of(e).map(|x| x.event)
        );
    }
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    assert_eq!(tcp_of(&c).unwrap().family, family);
    let d = tcp_of(&cc)
        .unwrap()
        .duration_ns
        .expect("client close has a duration");
    assert!(
        d >= 20_000_000,
        "duration {d} ns is shorter than the 20 ms the connection lived"
    );
    assert!(tcp_of(&sc).unwrap().duration_ns.is_some());
    t.finish();
}

#[test]
fn connect_accept_close_ipv4() {
    require_root();
    lifecycle("127.0.0.1:0");
}

#[test]
fn connect_accept_close_ipv6() {
    require_root();
    lifecycle("[::1]:0");
}

#[test]
fn connect_to_a_closed_port_is_connect_failed() {
    require_root();
    let t = testing::start(&super::DESC, RunOptions::default());
    // A port held by a socket that never listens: no parallel test can
    // take it while the connect runs.
    let closed = testing::BoundPort::new(std::net::Ipv4Addr::LOCALHOST).expect("bind");
    let port = closed.port;
    let err = TcpStream::connect(("127.0.0.1", port)).expect_err("nobody listens");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    let ev = t
        .wait_for(Duration::from_secs(10), |e| {
            tcp_of(e).is_some_and(|x| x.event == TcpEvent::ConnectFailed && x.dport == port)
        })
        .expect("connect_failed not seen");
    assert_eq!(tcp_of(&ev).unwrap().error.as_deref(), Some("ECONNREFUSED"));
    assert_eq!(ev.header.pid, Some(std::process::id()));
    t.finish();
}

/// A connect whose SYNs are all dropped (an iptables rule in the lab's
/// server pod; one SYN retry allowed in the client pod) fails with
/// ETIMEDOUT, reported against the connecting process and the tuple.
#[test]
fn timed_out_connect_is_connect_failed_with_etimedout() {
    require_root();
    let mut lab = plumb_netlab::Lab::new("tcpto").expect("lab");
    let client = lab.add_pod("cli").expect("client");
    let server = lab.add_pod("srv").expect("server");
    let port = 5002u16;
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {port} -j DROP"
        ))
        .expect("drop rule");
    // SYN, one retry after 1 s, give up 2 s later.
    client
        .ns
        .sh("sysctl -qw net.ipv4.tcp_syn_retries=1")
        .expect("syn retries");
    let t = testing::start(&super::DESC, RunOptions::default());
    let target = SocketAddr::from((server.ip, port));
    let (err, local_port) = client
        .ns
        .run(move || socket2_connect(target))
        .expect("run in client");
    assert_eq!(err, Some(libc::ETIMEDOUT), "connect must time out");
    let ev = t
        .wait_for(Duration::from_secs(10), |e| {
            tcp_of(e).is_some_and(|x| {
                x.event == TcpEvent::ConnectFailed
                    && x.daddr == IpAddr::from(server.ip)
                    && x.dport == port
            })
        })
        .expect("connect_failed not seen");
    let x = tcp_of(&ev).unwrap();
    assert_eq!(x.error.as_deref(), Some("ETIMEDOUT"));
    assert_eq!(x.saddr, IpAddr::from(client.ip));
    assert_eq!(x.sport, local_port);
    assert_eq!(x.netns, client.ns.inode);
    assert_eq!(ev.header.pid, Some(std::process::id()));
    t.finish();
}

/// A blocking connect from a socket whose local port is known before the
/// attempt (bound to port 0 first): the errno and that port.
fn socket2_connect(target: SocketAddr) -> (Option<i32>, u16) {
    // SAFETY: plain socket calls on a socket this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let mut any: libc::sockaddr_in = std::mem::zeroed();
        any.sin_family = libc::AF_INET as u16;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&any as *const libc::sockaddr_in).cast(), len),
            0
        );
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        let mut l = len;
        libc::getsockname(fd, (&mut local as *mut libc::sockaddr_in).cast(), &mut l);
        let SocketAddr::V4(v4) = target else {
            panic!("IPv4 target")
        };
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as u16;
        to.sin_port = v4.port().to_be();
        to.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
        let rc = libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len);
        let err = (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        libc::close(fd);
        (err, u16::from_be(local.sin_port))
    }
}
