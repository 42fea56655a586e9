//! End-to-end tests of the network tracers through the binary, in the lab
//! (k8s-style pods, so sides are named): for drop, retrans and reset,
//! `--summary 1s` counts equal the per-event counts for the same traffic
//! (and, for drop, the rule's counter), over several intervals; summary
//! rows carry the node and numeric keys as numbers; `--stack` names the
//! netfilter code path; `--reason` with `--all-reasons` is refused.

use plumb_netlab::{Lab, Pod};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Plumb {
    child: Child,
    /// The rest of stderr after "attached", read on a thread so plumb's
    /// last line always has somewhere to go.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Plumb {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Start plumb with -v and wait until its programs are attached.
fn start(args: &[&str]) -> Plumb {
    let child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .arg("-v")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plumb");
    let mut p = Plumb {
        child,
        stderr: None,
    };
    let mut err = BufReader::new(p.child.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("stderr") > 0,
            "plumb exited before attaching"
        );
        if line.contains("attached") {
            break;
        }
    }
    p.stderr = Some(std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        rest
    }));
    p
}

/// Wait for plumb to end; its JSON lines. Its last stderr line must say
/// nothing was lost.
fn finish(mut p: Plumb) -> Vec<Value> {
    let mut out = String::new();
    p.child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let status = p.child.wait().expect("wait");
    let err = p
        .stderr
        .take()
        .map(|h| h.join().expect("stderr reader"))
        .unwrap_or_default();
    assert!(status.success(), "plumb failed: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("plumb: ") && last.contains(" events, 0 lost"),
        "{err}"
    );
    out.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// The same gadget twice: per event and `--summary 1s`, both JSON. They
/// run until [`end_both`]: a fixed --duration would start counting at
/// each one's own attach, and a slow second start-up would cut the first
/// one's window short of the traffic.
fn both(gadget_args: &[&str]) -> (Plumb, Plumb) {
    let common: Vec<&str> = ["trace"]
        .iter()
        .copied()
        .chain(gadget_args.iter().copied())
        .chain(["-o", "json", "--duration", "10m"])
        .collect();
    let summary = start(&[&common[..], &["--summary", "1s"]].concat());
    let events = start(&common);
    (summary, events)
}

/// Once the traffic is over, let the last events reach the ring buffers
/// and interrupt both runs (an interrupted run prints its last interval
/// and exits 0); then their JSON lines (events, summary).
fn end_both(summary: Plumb, events: Plumb) -> (Vec<Value>, Vec<Value>) {
    std::thread::sleep(Duration::from_millis(1500));
    for p in [&summary, &events] {
        // SAFETY: a signal to our own child, which has not been reaped yet.
        unsafe { libc::kill(p.child.id() as i32, libc::SIGINT) };
    }
    (finish(events), finish(summary))
}

fn who(p: &Pod) -> String {
    let k = p.k8s.as_ref().expect("k8s pod");
    format!("pod:{}", &k.pod_uid[..8])
}

/// Summary rows matching `keep`, checked for the node and for numbers.
fn summary_rows(lines: &[Value], node: &Value, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let rows: Vec<Value> = lines
        .iter()
        .filter(|v| v["type"] == "summary" && keep(v))
        .cloned()
        .collect();
    for r in &rows {
        assert_eq!(&r["node"], node, "{r}");
        assert!(r["count"].is_u64(), "{r}");
    }
    rows
}

fn intervals(rows: &[Value]) -> usize {
    rows.iter()
        .map(|r| r["timestamp"].as_str().unwrap_or_default().to_string())
        .collect::<BTreeSet<_>>()
        .len()
}

#[test]
fn drop_summary_counts_equal_event_counts_and_the_rule_counter() {
    plumb_core::testing::require_root();
    let mut lab = Lab::new("sum").expect("lab");
    let client = lab.add_k8s_pod("cli").expect("client");
    let server = lab.add_k8s_pod("srv").expect("server");
    let port = 8082;
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {port} -j DROP"
        ))
        .expect("rule");
    let (summary, events) = both(&["drop", "--reason", "NETFILTER_DROP", "--stack"]);
    let target = SocketAddr::from((server.ip, port));
    let r = client
        .ns
        .run(move || TcpStream::connect_timeout(&target, Duration::from_millis(3500)))
        .expect("run");
    assert!(r.is_err());
    let listing = server.ns.sh("iptables -w -vnxL INPUT").expect("list");
    let rule =
        plumb_core::testing::iptables_packets(&listing, &format!("dpt:{port}")).expect("counter");

    let (events, summary) = end_both(summary, events);
    let per_event: Vec<_> = events
        .into_iter()
        .filter(|v| v["netns"] == server.ns.inode && v["type"] == "drop")
        .collect();
    assert!(rule >= 3, "SYN and retransmits over 3.5 s: {listing}");
    assert_eq!(per_event.len() as u64, rule, "events == rule counter");
    let node = per_event[0]["node"].clone();
    let rows = summary_rows(&summary, &node, |v| v["netns"] == server.ns.inode);
    let summed: u64 = rows.iter().map(|v| v["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(summed, rule, "--summary == rule counter: {rows:?}");
    assert!(
        intervals(&rows) >= 2,
        "counted over several intervals: {rows:?}"
    );
    for r in &rows {
        assert_eq!(r["reason"], "NETFILTER_DROP");
        assert_eq!(r["dst_who"], who(&server));
    }
    for v in &per_event {
        assert_eq!(v["reason"], "NETFILTER_DROP");
        assert_eq!(v["dport"], port);
        assert_eq!(v["saddr"], client.ip.to_string());
        assert_eq!(v["src_netns_name"], client.ns.name);
        assert_eq!(v["dst_netns_name"], server.ns.name);
        let k = server.k8s.as_ref().expect("k8s");
        assert_eq!(v["dst_pod_uid"], k.pod_uid);
        assert_eq!(v["dst_container_id"], k.container_id);
        let stack: Vec<&str> = v["stack"]
            .as_array()
            .expect("stack")
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        assert!(
            stack
                .iter()
                .any(|f| f.starts_with("nf_hook_slow") || f.starts_with("nft_do_chain")),
            "the stack shows the netfilter path: {stack:?}"
        );
        assert!(
            stack
                .iter()
                .any(|f| f.starts_with("ip_rcv") || f.starts_with("ip_local_deliver")),
            "{stack:?}"
        );
    }
}

#[test]
fn retrans_summary_by_full_tuple_equals_event_counts() {
    plumb_core::testing::require_root();
    let mut lab = Lab::new("rsum").expect("lab");
    let client = lab.add_k8s_pod("cli").expect("client");
    let server = lab.add_k8s_pod("srv").expect("server");
    let port = 5002;
    let listener = server
        .ns
        .run(move || TcpListener::bind(("0.0.0.0", port)))
        .expect("run")
        .expect("listen");
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
        }
    });
    server
        .ns
        .sh(&format!(
            // Every 6th packet, not a random share: the flow is only some
            // forty packets (segmentation offload), and the drops must fall
            // in several intervals on every run.
            "iptables -w -A INPUT -p tcp --dport {port} -m statistic --mode nth --every 6 --packet 5 -j DROP"
        ))
        .expect("lossy rule");
    let (summary, events) = both(&["retrans"]);
    let target = SocketAddr::from((server.ip, port));
    // About three seconds of traffic, so retransmits fall in several
    // one-second intervals.
    let sport = client
        .ns
        .run(move || {
            let mut s =
                TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect");
            let sport = s.local_addr().expect("addr").port();
            let chunk = vec![7u8; 64 << 10];
            for _ in 0..30 {
                s.write_all(&chunk).expect("write");
                std::thread::sleep(Duration::from_millis(100));
            }
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            sport
        })
        .expect("run in client");
    sink.join().expect("sink");

    let mine = |v: &Value| v["saddr"] == client.ip.to_string() && v["dport"] == port;
    let (events, summary) = end_both(summary, events);
    let per_event: Vec<_> = events
        .into_iter()
        .filter(|v| v["type"] == "retrans" && mine(v))
        .collect();
    assert!(!per_event.is_empty(), "the lossy rule causes retransmits");
    let node = per_event[0]["node"].clone();
    let rows = summary_rows(&summary, &node, mine);
    let summed: u64 = rows.iter().map(|v| v["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(
        summed,
        per_event.len() as u64,
        "--summary == events: {rows:?}"
    );
    assert!(
        intervals(&rows) >= 2,
        "counted over several intervals: {rows:?}"
    );
    for r in &rows {
        // Grouped by the full tuple and the pods.
        assert_eq!(
            (&r["saddr"], &r["sport"], &r["daddr"], &r["dport"]),
            (
                &Value::from(client.ip.to_string()),
                &Value::from(sport),
                &Value::from(server.ip.to_string()),
                &Value::from(port)
            )
        );
        assert_eq!(
            (&r["src_who"], &r["dst_who"]),
            (&Value::from(who(&client)), &Value::from(who(&server)))
        );
    }
}

#[test]
fn reset_summary_by_tuple_and_pod_equals_event_counts() {
    plumb_core::testing::require_root();
    let mut lab = Lab::new("xsum").expect("lab");
    let client = lab.add_k8s_pod("cli").expect("client");
    let server = lab.add_k8s_pod("srv").expect("server");
    let closed = 9;
    let (summary, events) = both(&["reset"]);
    let target = SocketAddr::from((server.ip, closed));
    let sports = client
        .ns
        .run(move || {
            (0..6)
                .map(|_| {
                    let s = refused_from(target);
                    std::thread::sleep(Duration::from_millis(450));
                    s
                })
                .collect::<Vec<u16>>()
        })
        .expect("run in client");

    let mine = |v: &Value| v["saddr"] == server.ip.to_string() && v["sport"] == closed;
    let (events, summary) = end_both(summary, events);
    let per_event: Vec<_> = events
        .into_iter()
        .filter(|v| v["type"] == "reset" && mine(v))
        .collect();
    assert_eq!(
        per_event.len(),
        12,
        "each refused connect: sent and received"
    );
    let node = per_event[0]["node"].clone();
    let rows = summary_rows(&summary, &node, mine);
    let summed: u64 = rows.iter().map(|v| v["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(summed, 12, "--summary == events: {rows:?}");
    assert!(
        intervals(&rows) >= 2,
        "counted over several intervals: {rows:?}"
    );
    for dir in ["sent", "received"] {
        let got: BTreeSet<u64> = rows
            .iter()
            .filter(|r| r["direction"] == dir)
            .filter_map(|r| r["dport"].as_u64())
            .collect();
        let want: BTreeSet<u64> = sports.iter().map(|&p| p as u64).collect();
        assert_eq!(got, want, "one {dir} row per client port");
    }
    for r in &rows {
        assert_eq!(r["count"], 1, "one RST per tuple and direction: {r}");
        assert_eq!(r["daddr"], client.ip.to_string());
        assert_eq!(
            (&r["src_who"], &r["dst_who"]),
            (&Value::from(who(&server)), &Value::from(who(&client)))
        );
        let reason = if r["direction"] == "sent" {
            Value::from("NO_SOCKET")
        } else {
            Value::Null
        };
        assert_eq!(r["reason"], reason);
    }
}

/// Connect to a closed port from a socket bound first (so its local port
/// is known after the connect fails); returns that port.
fn refused_from(target: SocketAddr) -> u16 {
    let SocketAddr::V4(t) = target else {
        panic!("IPv4 only")
    };
    let s = plumb_core::testing::BoundPort::new(std::net::Ipv4Addr::UNSPECIFIED).expect("bind");
    assert_eq!(s.connect(t), Some(libc::ECONNREFUSED), "refused");
    s.port
}

#[test]
fn reason_with_all_reasons_is_refused_in_one_line() {
    plumb_core::testing::require_root();
    let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["trace", "drop", "--reason", "NO_SOCKET", "--all-reasons"])
        .output()
        .expect("run plumb");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "plumb: bad value for --reason: --reason and --all-reasons cannot be used together"
        ),
        "{err}"
    );
}
