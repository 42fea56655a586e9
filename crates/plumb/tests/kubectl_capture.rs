//! `kubectl plumb capture` end to end: two agents play two nodes of the
//! stand-in API server's cluster, each hosting one selected pod whose
//! network namespace is a lab pod's (a fake kubelet-style pod cgroup with
//! a process holding the namespace). A load between the two pods is
//! captured on both nodes at once and merged by the plugin into one
//! pcapng, which tshark reads: the count, the comments naming node, pod
//! and direction, and time order across the nodes. The capture
//! permission and the agent's refusal of a hostNetwork pod are checked as
//! the one line a user reads. Root tests; they fail without root.

mod support;

use plumb_core::testing::require_root;
use plumb_kube_standin::{ApiServer, Cluster};
use plumb_netlab::Lab;
use serde_json::{json, Value};
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;
use support::fake_pod::FakePod;
use support::kube::{in_cluster, wait_watching};
use support::*;

fn pod(ns: &str, name: &str, uid: &str, node: &str, labels: Value, host_network: bool) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": "1",
                     "creationTimestamp": "2026-12-01T10:00:00Z", "labels": labels},
        "spec": {"nodeName": node, "hostNetwork": host_network,
                 "containers": [{"name": "c", "image": "registry.invalid/x:1"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "hostIP": "192.168.0.1"}
    })
}

fn agent_pod(name: &str, node: &str) -> Value {
    pod(
        "plumb",
        name,
        &format!("aa000000-0000-4000-8000-{:012}", node.len() + name.len()),
        node,
        json!({"app.kubernetes.io/name": "plumb", "app.kubernetes.io/component": "agent"}),
        true,
    )
}

#[test]
fn kubectl_plumb_capture_merges_two_nodes_in_time_order_and_needs_the_capture_permission() {
    require_root();
    let _serial = serial();
    let mut lab = Lab::new("kcap").expect("lab");
    let a = lab.add_pod("a").expect("pod a");
    let b = lab.add_pod("b").expect("pod b");
    let pa = FakePod::new(Some(&a.ns.path()));
    let pb = FakePod::new(Some(&b.ns.path()));
    // A hostNetwork pod: its process is in the node's namespace.
    let ph = FakePod::new(None);
    let mut host_sleep = Command::new("sleep");
    host_sleep.arg("600");
    let mut host_proc = ph.spawn(host_sleep);
    let x = json!({"app": "capture-x"});
    let cluster = Cluster {
        pods: json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
        "items": [
            pod("lab", "cap-a", &pa.uid, "node-1", x.clone(), false),
            pod("lab", "cap-b", &pb.uid, "node-2", x.clone(), false),
            pod("lab", "cap-host", &ph.uid, "node-1", json!({"app": "hostnet"}), true),
            agent_pod("plumb-agent-n1", "node-1"),
            agent_pod("plumb-agent-n2", "node-2"),
        ]}),
        ..Cluster::default()
    };
    let api = ApiServer::start(cluster).expect("stand-in API server");
    let kubeconfig = TempFile::new("kubeconfig", &api.kubeconfig("lab"));
    let env = in_cluster(kubeconfig.path());
    let token = token();
    let capture_token = TempFile::new(
        "capture-token",
        &format!("{}\n", plumb_core::testing::marker("cap")),
    );
    let start = |node: &str| {
        let mut cmd = agent_cmd(
            node,
            "127.0.0.1:0",
            Some(token.path()),
            &[
                "--capture-token-file",
                capture_token.path().to_str().unwrap(),
                "--max-capture-packets",
                "100000",
            ],
        );
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        spawn_agent(node, cmd)
    };
    let n1 = start("node-1");
    let n2 = start("node-2");
    for (p, agent) in [("plumb-agent-n1", &n1), ("plumb-agent-n2", &n2)] {
        api.forward("plumb", p, 7979, agent.api.parse().expect("agent address"));
    }
    wait_watching(&api, "node-1");
    wait_watching(&api, "node-2");
    let bin = TempDir::new("kubectl");
    let plugin = bin.path().join("kubectl-plumb");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_plumb"), &plugin).expect("symlink");
    let dir = TempDir::new("kcap");
    let file = dir.path().join("both.pcapng");
    let kubectl = |args: &[&str]| {
        let mut cmd = Command::new(&plugin);
        cmd.env("KUBECONFIG", kubeconfig.path())
            .arg("--token-file")
            .arg(token.path())
            .args(args);
        cmd
    };

    let cmd = kubectl(&[
        "-v",
        "capture",
        "-n",
        "lab",
        "-l",
        "app=capture-x",
        "udp port 7050",
        "--duration",
        "30s",
        "--max-packets",
        "200",
        "--capture-token-file",
        capture_token.path().to_str().unwrap(),
        "-w",
        file.to_str().unwrap(),
    ]);
    let mut client = Proc::spawn(cmd);
    let mut seen = Vec::new();
    for _ in 0..2 {
        wait_line(&client.err, Duration::from_secs(40), &mut seen, |l| {
            l.starts_with("plumb: capturing on ")
        })
        .unwrap_or_else(|| panic!("capture did not start on both nodes: {seen:?}"));
    }
    // 100 datagrams a -> b: each is seen leaving a (node-1) and reaching
    // b (node-2); --max-packets 200 ends the capture with the last one.
    let (ip_a, ip_b) = (a.ip, b.ip);
    a.ns.run(move || {
        let s = UdpSocket::bind((ip_a, 6050)).unwrap();
        for i in 0..100u32 {
            s.send_to(&i.to_be_bytes(), (ip_b, 7050)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .unwrap();
    assert_eq!(client.wait(Duration::from_secs(40)), Some(0), "{seen:?}");
    let err = drain(&client.err);
    let end = err.last().cloned().unwrap_or_default();
    assert!(
        end.starts_with("plumb: 200 packets, 0 dropped by the kernel"),
        "{err:?}"
    );
    let rows = tshark_fields(
        &file,
        &[
            "frame.comment",
            "frame.time_epoch",
            "udp.srcport",
            "data.data",
        ],
    );
    assert_eq!(rows.len(), 200, "{rows:?}");
    let out_a = format!("node node-1, netns {}, pod lab/cap-a, out", a.ns.name);
    let in_b = format!("node node-2, netns {}, pod lab/cap-b, in", b.ns.name);
    assert_eq!(
        rows.iter().filter(|r| r[0] == out_a).count(),
        100,
        "{rows:?}"
    );
    assert_eq!(
        rows.iter().filter(|r| r[0] == in_b).count(),
        100,
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r[2] == "6050"));
    let t: Vec<f64> = rows.iter().map(|r| r[1].parse().unwrap()).collect();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "not in time order");
    // Each datagram leaves a before it reaches b, and the next one after both.
    for (i, pair) in rows.chunks(2).enumerate() {
        assert_eq!(
            (pair[0][0].as_str(), pair[1][0].as_str()),
            (out_a.as_str(), in_b.as_str()),
            "{i}"
        );
        assert_eq!(pair[0][3], format!("{i:08x}"));
        assert_eq!(pair[1][3], format!("{i:08x}"));
    }

    // Without the capture token: one line per node, exit non-zero, no capture.
    let out = kubectl(&[
        "capture",
        "-n",
        "lab",
        "-l",
        "app=capture-x",
        "-w",
        dir.path().join("no.pcapng").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    for node in ["node-1", "node-2"] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("node {node}: this client may not capture"))),
            "{text}"
        );
    }
    assert!(!text.contains("panicked"));
    // A hostNetwork pod: refused by its node, in one line.
    let out = kubectl(&[
        "capture",
        "-n",
        "lab",
        "--pod",
        "cap-host",
        "--capture-token-file",
        capture_token.path().to_str().unwrap(),
        "-w",
        dir.path().join("host.pcapng").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text.lines().any(
            |l| l.contains("pod lab/cap-host has no network namespace of its own (hostNetwork")
        ),
        "{text}"
    );
    // A bad expression: libpcap's message, before any node is asked.
    let out = kubectl(&[
        "capture",
        "-n",
        "lab",
        "-l",
        "app=capture-x",
        "udp prot 1",
        "-w",
        "-",
    ])
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("bad filter expression \"udp prot 1\""),
        "{text}"
    );
    let _ = host_proc.kill();
    let _ = host_proc.wait();
    n1.stop();
    n2.stop();
}
