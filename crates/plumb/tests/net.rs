//! End-to-end tests of the network tracers through the binary, in the lab:
//! `--summary` counts equal the per-event counts (and the rule's counter)
//! for the same traffic, and `--stack` names the netfilter code path.

use plumb_netlab::Lab;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Plumb(Child);

impl Drop for Plumb {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start plumb with -v and wait until its programs are attached.
fn start(args: &[&str]) -> (Plumb, BufReader<std::process::ChildStderr>) {
    let child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .arg("-v")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plumb");
    let mut p = Plumb(child);
    let mut err = BufReader::new(p.0.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("stderr") > 0,
            "plumb exited before attaching"
        );
        if line.contains("attached") {
            return (p, err);
        }
    }
}

fn finish(mut p: Plumb) -> Vec<serde_json::Value> {
    let mut out = String::new();
    p.0.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert!(p.0.wait().expect("wait").success());
    out.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn summary_counts_equal_event_counts_and_the_rule_counter() {
    plumb_core::testing::require_root();
    let mut lab = Lab::new("sum").expect("lab");
    let client = lab.add_pod("cli").expect("client");
    let server = lab.add_pod("srv").expect("server");
    let port = 8082;
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {port} -j DROP"
        ))
        .expect("rule");
    let common = [
        "trace",
        "drop",
        "--reason",
        "NETFILTER_DROP",
        "-o",
        "json",
        "--duration",
        "5s",
    ];
    let (summary, _e1) = start(
        &[
            &common[..],
            &["--summary", "1h", "--fields", "reason,netns,dport"],
        ]
        .concat(),
    );
    let (events, _e2) = start(&[&common[..], &["--stack"]].concat());
    let target = SocketAddr::from((server.ip, port));
    let r = client
        .ns
        .run(move || TcpStream::connect_timeout(&target, Duration::from_millis(2500)))
        .expect("run");
    assert!(r.is_err());
    let listing = server.ns.sh("iptables -w -vnxL INPUT").expect("list");
    let rule =
        plumb_core::testing::iptables_packets(&listing, &format!("dpt:{port}")).expect("counter");

    let per_event: Vec<_> = finish(events)
        .into_iter()
        .filter(|v| v["netns"] == server.ns.inode && v["type"] == "drop")
        .collect();
    let summed: u64 = finish(summary)
        .iter()
        .filter(|v| {
            v["type"] == "summary"
                && v["netns"].as_str().and_then(|s| s.parse::<u32>().ok()) == Some(server.ns.inode)
        })
        .map(|v| v["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(per_event.len() as u64, rule, "events == rule counter");
    assert_eq!(summed, rule, "--summary == rule counter");
    for v in &per_event {
        assert_eq!(v["reason"], "NETFILTER_DROP");
        assert_eq!(v["dport"], port);
        assert_eq!(v["saddr"], client.ip.to_string());
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
