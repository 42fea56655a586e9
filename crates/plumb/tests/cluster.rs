//! End to end on three QEMU guests (`support::vm_cluster`): `plumb
//! remote` fans out to the agents of three nodes, each on its own kernel
//! instance, and merges their events; an agent killed in one guest is
//! reported while the other two go on delivering.

mod support;

use plumb_core::testing::require_root;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};
use support::vm_cluster::VmCluster;
use support::*;

/// The nodes of the exec events whose arguments carry their node's
/// marker, seen within `within`.
fn nodes_seen(
    client: &Proc,
    c: &VmCluster,
    within: Duration,
    seen: &mut Vec<String>,
) -> BTreeSet<String> {
    let mut nodes = BTreeSet::new();
    let deadline = Instant::now() + plumb_core::testing::patience(within);
    while nodes.len() < c.nodes.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(l) = wait_line(&client.out, left, seen, |l| l.contains("plumb-vmc-")) else {
            break;
        };
        let v: serde_json::Value = serde_json::from_str(&l).expect("a JSON event");
        let node = v["node"].as_str().unwrap_or_default().to_string();
        let marked = v["args"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x.as_str() == Some(&format!("plumb-vmc-{node}")))
        });
        assert!(marked, "an event of {node} with another node's marker: {l}");
        nodes.insert(node);
    }
    nodes
}

#[test]
fn three_guests_fan_out_and_a_killed_agent_is_reported_while_the_others_go_on() {
    require_root();
    let c = VmCluster::start(3);
    let token = c.token();
    let agents: Vec<&str> = c.nodes.iter().map(|n| n.api.as_str()).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plumb"));
    cmd.args(["-v", "remote", "--agents", &agents.join(",")])
        .arg("--token-file")
        .arg(&token)
        .args(["trace", "exec", "-o", "json"]);
    let client = Proc::spawn(cmd);
    let mut err = Vec::new();
    for _ in 0..3 {
        wait_line(&client.err, Duration::from_secs(60), &mut err, |l| {
            l.contains(" attached, BPF program ids ")
        })
        .unwrap_or_else(|| panic!("not every agent attached: {err:?}"));
    }
    let mut out = Vec::new();
    let all: BTreeSet<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(
        nodes_seen(&client, &c, Duration::from_secs(30), &mut out),
        all,
        "{err:?}"
    );

    c.kill_agent(2);
    let lost = &c.nodes[2];
    let l = wait_line(&client.err, Duration::from_secs(30), &mut err, |l| {
        l.contains(&lost.api)
    })
    .unwrap_or_else(|| {
        panic!(
            "the killed agent was not reported: {err:?}\n{}",
            lost.console()
        )
    });
    // How the socket ended (EOF, reset or broken pipe) depends on what was
    // in flight when the agent died.
    assert!(
        l.starts_with(&format!(
            "plumb: agent {}: the connection was lost: ",
            lost.api
        )),
        "{l}"
    );
    assert!(
        l.ends_with(&format!(" [node {}]; the others go on", lost.name)),
        "{l}"
    );
    eprintln!("reported: {l}");
    // After the report, the other two still deliver.
    out.clear();
    let rest: BTreeSet<String> = c.nodes[..2].iter().map(|n| n.name.clone()).collect();
    let mut after = BTreeSet::new();
    let deadline = Instant::now() + plumb_core::testing::patience(Duration::from_secs(30));
    while after != rest && Instant::now() < deadline {
        after.extend(nodes_seen(&client, &c, Duration::from_secs(2), &mut out));
        after.remove(&lost.name);
    }
    assert_eq!(after, rest, "{out:?}");
    client.signal(libc::SIGINT);
    let mut client = client;
    assert_eq!(client.wait(Duration::from_secs(30)), Some(1));
    let tail = drain(&client.err);
    assert!(
        tail.iter().any(|l| l == "plumb: 1 of 3 agents failed"),
        "{tail:?}"
    );
}
