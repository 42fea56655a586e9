//! End to end, `kubectl plumb` and the agent's pod watcher against the
//! stand-in API server (crates/plumb-kube-standin; its pods are the
//! fixtures of crates/plumb-agent/tests/fixtures, written after the API
//! reference since no cluster can be reached here). Agents started here
//! play the cluster's nodes: they watch "their" pods through the stand-in,
//! and `kubectl plumb` (the binary run as `kubectl-plumb`) reaches them
//! through its pods/portforward. Execs run in cgroups named after the
//! fixture pods' UIDs, as the kubelet names them. The root tests run one
//! at a time (`support::serial`). Root tests fail without root.

mod support;

use plumb_core::testing::{marker, require_root};
use plumb_kube_standin::{ApiServer, Cluster};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use support::kube::{in_cluster, wait_watching};
use support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plumb-agent/tests/fixtures");

fn cluster() -> Cluster {
    let text = std::fs::read_to_string(format!("{FIXTURES}/cluster-pods.json")).expect("fixture");
    Cluster {
        pods: serde_json::from_str(&text).expect("fixture JSON"),
        ..Cluster::default()
    }
}

/// The lab pods' UIDs (cluster-pods.json).
const MARKER_A: &str = "5a1b0000-0000-4000-8000-000000000001";
const MARKER_B: &str = "5a1b0000-0000-4000-8000-000000000002";

fn start_in_cluster(node: &str, token: &Path, env: &[(&'static str, String)]) -> Agent {
    let mut cmd = agent_cmd(node, "127.0.0.1:0", Some(token), &[]);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    spawn_agent(node, cmd)
}

#[test]
fn kubectl_plumb_selects_pods_on_each_node_through_port_forwards() {
    require_root();
    let _serial = serial();
    let api = ApiServer::start(cluster()).expect("stand-in API server");
    let kubeconfig = TempFile::new("kubeconfig", &api.kubeconfig("lab"));
    let env = in_cluster(kubeconfig.path());
    let token = token();
    let n1 = start_in_cluster("node-1", token.path(), &env);
    let n2 = start_in_cluster("node-2", token.path(), &env);
    // node-3's agent pod is running but nothing answers on its port.
    for (pod, agent) in [("plumb-agent-x7k2p", &n1), ("plumb-agent-q9m4d", &n2)] {
        api.forward(
            "plumb",
            pod,
            7979,
            agent.api.parse().expect("agent address"),
        );
    }
    wait_watching(&api, "node-1");
    wait_watching(&api, "node-2");
    let cgroups = PodCgroups::new(&[MARKER_A, MARKER_B]);

    // The binary, run as the kubectl plugin.
    let bin = TempDir::new("kubectl");
    let plugin = bin.path().join("kubectl-plumb");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_plumb"), &plugin).expect("symlink");
    let mut cmd = std::process::Command::new(&plugin);
    cmd.env("KUBECONFIG", kubeconfig.path())
        .arg("-v")
        .arg("--token-file")
        .arg(token.path())
        .args([
            "trace",
            "exec",
            "-l",
            "app=x",
            "-o",
            "json",
            "--duration",
            "20s",
        ]);
    let mut client = Proc::spawn(cmd);

    // Two nodes attach; node-3 is reported by name, with the pod end's
    // reason, and the others go on.
    let mut err = Vec::new();
    let mut attached = BTreeSet::new();
    let mut failed = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    while (attached.len() < 2 || failed.is_none()) && Instant::now() < deadline {
        let Some(l) = wait_line(&client.err, Duration::from_secs(1), &mut err, |_| true) else {
            continue;
        };
        if l.contains(" attached, BPF program ids ") {
            attached.insert(
                l.split(": exec attached")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        } else if l.starts_with("plumb: node node-3 ") {
            failed = Some(l);
        }
    }
    assert_eq!(
        attached,
        BTreeSet::from([
            "plumb: node node-1 (agent pod plumb/plumb-agent-x7k2p)".to_string(),
            "plumb: node node-2 (agent pod plumb/plumb-agent-q9m4d)".to_string(),
        ]),
        "{err:?}"
    );
    let failed = failed.unwrap_or_else(|| panic!("node-3 not reported: {err:?}"));
    assert!(
        failed.starts_with("plumb: node node-3 (agent pod plumb/plumb-agent-r5t8w): ")
            && failed.contains(
                "port-forward: error forwarding port 7979 to pod aa000000-0000-4000-8000-000000000003"
            )
            && failed.contains("connection refused")
            && failed.ends_with("; the others go on"),
        "{failed}"
    );

    // An exec in each selected pod, and one on the host: each node sends
    // its own pod's, named by its pod watcher; the host's is nobody's.
    let tag = marker("kubectl");
    let pid_a = exec_in_cgroup(&cgroups.pods[0], &format!("{tag}-a"));
    let pid_b = exec_in_cgroup(&cgroups.pods[1], &format!("{tag}-b"));
    exec_as(Path::new("/bin/true"), &format!("{tag}-host"));
    let mut out = Vec::new();
    let mut got = execs(&client.out, &tag, 2, Duration::from_secs(20), &mut out);
    // Anything else would have arrived by now.
    std::thread::sleep(Duration::from_secs(2));
    got.extend(execs(
        &client.out,
        &tag,
        1,
        Duration::from_millis(10),
        &mut out,
    ));
    let summary: BTreeSet<(String, u64, String, String, String)> = got
        .iter()
        .map(|g| {
            let s = |k: &str| g.3[k].as_str().unwrap_or_default().to_string();
            (g.0.clone(), g.1, s("namespace"), s("pod"), g.2[1].clone())
        })
        .collect();
    assert_eq!(
        summary,
        BTreeSet::from([
            (
                "node-1".to_string(),
                pid_a as u64,
                "lab".to_string(),
                "marker-a".to_string(),
                format!("{tag}-a")
            ),
            (
                "node-2".to_string(),
                pid_b as u64,
                "lab".to_string(),
                "marker-b".to_string(),
                format!("{tag}-b")
            ),
        ]),
        "{out:?}"
    );
    assert_eq!(got.len(), 2, "{out:?}");

    // The run ends after --duration. Each agent sent only its selected
    // pod's exec (the host runs others all the time): the selection was
    // applied on the node, not only here.
    assert_eq!(client.wait(Duration::from_secs(60)), Some(1), "{err:?}");
    err.extend(drain(&client.err));
    for (node, pod) in [
        ("node-1", "plumb-agent-x7k2p"),
        ("node-2", "plumb-agent-q9m4d"),
    ] {
        let want =
            format!("plumb: node {node} (agent pod plumb/{pod}): finished, 1 events sent, 0 lost");
        assert!(err.contains(&want), "{want}: {err:?}");
    }
    assert!(
        err.iter()
            .any(|l| l == "plumb: 2 events, 0 lost, from 2 of 3 agents"),
        "{err:?}"
    );
    assert!(
        err.iter().any(|l| l == "plumb: 1 of 3 agents failed"),
        "{err:?}"
    );

    // What the plugin asked the API: the lab pods by label (the
    // kubeconfig's namespace), the agent pods, a port-forward to each.
    let seen = api.seen();
    assert!(
        seen.iter()
            .any(|t| t.starts_with("/api/v1/namespaces/lab/pods?")
                && t.contains("labelSelector=app=x")),
        "{seen:?}"
    );
    for pod in [
        "plumb-agent-x7k2p",
        "plumb-agent-q9m4d",
        "plumb-agent-r5t8w",
    ] {
        let pf = format!("/api/v1/namespaces/plumb/pods/{pod}/portforward?ports=7979");
        assert!(seen.contains(&pf), "{pf}: {seen:?}");
    }

    // A profile of the selection: only marker-a's samples (a busy loop in
    // its cgroup) come back, from node-1; node-2's selected pod ran
    // nothing, so everything it sampled was left out there.
    let busy = Busy::start_in(&cgroups.pods[0]);
    let mut cmd = std::process::Command::new(&plugin);
    cmd.env("KUBECONFIG", kubeconfig.path())
        .arg("--token-file")
        .arg(token.path())
        .args([
            "profile",
            "cpu",
            "-l",
            "app=x",
            "--duration",
            "2s",
            "-o",
            "json",
        ]);
    let out = cmd.output().expect("run kubectl-plumb profile");
    drop(busy);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "node-3 fails: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON profile");
    let stacks = v["stacks"].as_array().expect("stacks");
    assert!(!stacks.is_empty(), "{stdout}");
    for s in stacks {
        assert_eq!(
            (
                s["node"].as_str(),
                s["namespace"].as_str(),
                s["pod"].as_str()
            ),
            (Some("node-1"), Some("lab"), Some("marker-a")),
            "{s}"
        );
    }
    let nodes = v["nodes"].as_array().expect("nodes");
    let quiet = nodes
        .iter()
        .find(|n| n["node"] == "node-2")
        .expect("node-2");
    assert_eq!(quiet["samples"].as_u64(), Some(0), "{quiet}");
    assert!(
        quiet["filtered_in_user_space"].as_u64() > Some(0),
        "{quiet}"
    );
    drop(cgroups);
    n1.stop();
    n2.stop();
}

#[test]
fn without_api_access_the_agent_says_so_once_and_attributes_by_cgroup() {
    require_root();
    let _serial = serial();
    let api = ApiServer::start(Cluster {
        refuse: Some((
            403,
            "pods is forbidden: User \"system:serviceaccount:plumb:plumb-agent\" cannot watch \
             resource \"pods\" in API group \"\" at the cluster scope"
                .into(),
        )),
        ..cluster()
    })
    .expect("stand-in API server");
    let forbidden = TempFile::new("kubeconfig", &api.kubeconfig("plumb"));
    // And an API server that is not there at all.
    // Its port is held by a socket that never listens, so no stand-in
    // started in parallel can take it.
    let held =
        plumb_core::testing::BoundPort::new(std::net::Ipv4Addr::LOCALHOST).expect("a free port");
    let closed = format!("127.0.0.1:{}", held.port);
    let nowhere = TempFile::new(
        "kubeconfig",
        &api.kubeconfig("plumb")
            .replace(&api.url(), &format!("http://{closed}")),
    );
    let token = token();
    let mut agents = vec![
        start_in_cluster(
            "node-forbidden",
            token.path(),
            &in_cluster(forbidden.path()),
        ),
        start_in_cluster("node-nowhere", token.path(), &in_cluster(nowhere.path())),
    ];
    // The watcher keeps asking (kube's backoff)...
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.seen().len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(api.seen().len() >= 4, "{:?}", api.seen());
    std::thread::sleep(Duration::from_secs(2));
    // ...and each agent has said so exactly once.
    let says = |a: &mut Agent| {
        a.read_log()
            .iter()
            .filter(|l| l.contains("cannot watch pods"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let forbidden_lines = says(&mut agents[0]);
    assert_eq!(forbidden_lines.len(), 1, "{:?}", agents[0].log);
    assert!(
        forbidden_lines[0].contains("WARN") && forbidden_lines[0].contains("forbidden"),
        "{forbidden_lines:?}"
    );
    assert_eq!(says(&mut agents[1]).len(), 1, "{:?}", agents[1].log);

    // Events keep their cgroup-level attribution: the pod UID the
    // kubelet's cgroup names, without a pod name.
    let cgroups = PodCgroups::new(&[MARKER_A]);
    let mut client = Proc::spawn(remote(
        &[&agents[0]],
        Some(token.path()),
        &["trace", "exec", "-o", "json"],
    ));
    let mut err = Vec::new();
    wait_line(&client.err, Duration::from_secs(30), &mut err, |l| {
        l.contains(" attached, ")
    })
    .unwrap_or_else(|| panic!("{err:?}"));
    let mark = marker("nokube");
    let pid = exec_in_cgroup(&cgroups.pods[0], &mark);
    let mut out = Vec::new();
    // The exec of /bin/true, not of the shell that moved into the cgroup.
    let needle = format!("[\"/bin/true\",\"{mark}\"]");
    let got = execs(&client.out, &needle, 1, Duration::from_secs(20), &mut out);
    assert_eq!(got.len(), 1, "{out:?}");
    let ev = &got[0].3;
    assert_eq!(ev["pid"].as_u64(), Some(pid as u64));
    assert_eq!(ev["node"], "node-forbidden");
    assert_eq!(ev["pod_uid"], MARKER_A, "{ev}");
    assert_eq!(ev["cgroup"], cgroups.rel(0).as_str());
    assert!(ev["pod"].is_null() && ev["namespace"].is_null(), "{ev}");
    client.signal(libc::SIGINT);
    assert_eq!(client.wait(Duration::from_secs(20)), Some(0));

    // Still once, however often the watcher has asked since.
    let asked = api.seen().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.seen().len() == asked && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(api.seen().len() > asked, "the watcher stopped asking");
    assert_eq!(says(&mut agents[0]).len(), 1, "{:?}", agents[0].log);
    drop(cgroups);
    for a in agents {
        a.stop();
    }
}

/// The plugin's commands parse as the issue writes them and go where they
/// should; nothing answers on the agent pods here (no agents: no root
/// needed), so each node is reported by name.
#[test]
fn kubectl_commands_reach_the_nodes_they_name() {
    let api = ApiServer::start(cluster()).expect("stand-in API server");
    let kubeconfig = TempFile::new("kubeconfig", &api.kubeconfig("shop"));
    let bin = TempDir::new("kubectl");
    let plugin = bin.path().join("kubectl-plumb");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_plumb"), &plugin).expect("symlink");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&plugin)
            .env("KUBECONFIG", kubeconfig.path())
            .args(args)
            .output()
            .expect("run kubectl-plumb");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let refused = |node: &str, pod: &str, err: &str| {
        err.lines().any(|l| {
            l.starts_with(&format!("plumb: node {node} (agent pod plumb/{pod}): "))
                && l.contains("connection refused")
        })
    };
    // `kubectl plumb profile cpu --node worker-2 -o svg`, on this cluster.
    let (code, err) = run(&[
        "profile",
        "cpu",
        "--node",
        "node-2",
        "-o",
        "svg",
        "--duration",
        "1s",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(refused("node-2", "plumb-agent-q9m4d", &err), "{err}");
    assert!(
        err.lines().any(|l| l == "plumb: 1 of 1 agents failed"),
        "{err}"
    );
    // No selector: every agent pod, whatever the current namespace.
    let (code, err) = run(&["gadgets"]);
    assert_eq!(code, Some(1), "{err}");
    for (node, pod) in [
        ("node-1", "plumb-agent-x7k2p"),
        ("node-2", "plumb-agent-q9m4d"),
        ("node-3", "plumb-agent-r5t8w"),
    ] {
        assert!(refused(node, pod, &err), "{node}: {err}");
    }
    assert!(
        err.lines().any(|l| l == "plumb: 3 of 3 agents failed"),
        "{err}"
    );
    // Agents elsewhere: none found is one clear line.
    let (code, err) = run(&["--agent-namespace", "monitoring", "gadgets"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "plumb: no node to ask: no running pod matches the selection, or no agent pod matches \
         app.kubernetes.io/name=plumb,app.kubernetes.io/component=agent in namespace monitoring"
    );
    assert!(
        api.seen()
            .iter()
            .any(|t| t.starts_with("/api/v1/namespaces/monitoring/pods?")),
        "{:?}",
        api.seen()
    );
}
