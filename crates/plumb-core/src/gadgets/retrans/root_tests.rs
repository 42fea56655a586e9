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

#[test]
fn retransmitted_segments_equal_the_kernels_counter() {
    require_root();
    let mut lab = Lab::new("rtx").expect("lab");
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
    let t = testing::start(&super::DESC, Default::default());
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
    assert_eq!(
        reported,
        after - before,
        "segments we report == TcpRetransSegs delta"
    );
}
