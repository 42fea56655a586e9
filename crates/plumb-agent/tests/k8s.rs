//! The Kubernetes code against a local stand-in for the API server
//! (crates/plumb-kube-standin): it filters the cluster's pods
//! (tests/fixtures, written after the API reference) by namespace, label
//! and field selector as the API server does, serves watches, and
//! implements the pods/portforward WebSocket upgrade, proxying to real
//! listeners started here. It records every request so the selectors sent
//! can be checked. None of these tests needs root.

use plumb_agent::client::{self, ClientAuth, Deadlines, Dial};
use plumb_agent::k8s::{self, AgentPods, PodIndex, Selection};
use plumb_agent::listen::ListenAddr;
use plumb_agent::server::{AgentConfig, BoundAgent};
use plumb_core::enrich::MetadataSource;
use plumb_core::event::Workload;
use plumb_kube_standin::{ApiServer, Cluster};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIX}/{name}")).expect("fixture")
}

fn cluster() -> Cluster {
    Cluster {
        pods: serde_json::from_str(&fixture("cluster-pods.json")).expect("fixture JSON"),
        ..Cluster::default()
    }
}

fn client(api: &ApiServer) -> kube::Client {
    let mut cfg = kube::Config::new(api.url().parse().unwrap());
    cfg.default_namespace = "shop".into();
    kube::Client::try_from(cfg).unwrap()
}

fn workload(uid: &str) -> Workload {
    Workload {
        pod_uid: Some(uid.to_string()),
        ..Workload::default()
    }
}

#[tokio::test]
async fn the_watcher_lists_then_follows_the_pods_of_its_node() {
    let api = ApiServer::start(Cluster {
        watch: Some(fixture("node1-watch.jsonl")),
        ..cluster()
    })
    .unwrap();
    let index = PodIndex::default();
    tokio::spawn(index.clone().watch(client(&api), "node-1".into()));

    let checkout = "1f0e6a52-6c1b-4f7e-9a43-2f1d0c7e5a01";
    let cart = "1f0e6a52-6c1b-4f7e-9a43-2f1d0c7e5a03";
    let web = "1f0e6a52-6c1b-4f7e-9a43-2f1d0c7e5a06";
    // The watch adds web and deletes cart; wait for that state.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (index.get(web).is_none() || index.get(cart).is_some()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = index.get(checkout).expect("listed pod");
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str()),
        ("shop", "checkout-7c9f-abcde")
    );
    assert_eq!(p.owner.as_deref(), Some("ReplicaSet/checkout-7c9f"));
    assert_eq!(p.labels.get("app").map(String::as_str), Some("checkout"));
    assert_eq!(p.node.as_deref(), Some("node-1"));
    let w = index.get(web).expect("pod added by the watch");
    assert_eq!(
        (w.namespace.as_str(), w.name.as_str()),
        ("front", "web-5d9c-qwert")
    );
    assert!(index.get(cart).is_none(), "deleted by the watch");
    // node-1's pods: checkout, cart (then deleted), the agent, marker-a;
    // and web from the watch. Nothing of the other nodes.
    let names: BTreeSet<String> = [
        checkout,
        web,
        "aa000000-0000-4000-8000-000000000001",
        "5a1b0000-0000-4000-8000-000000000001",
    ]
    .iter()
    .map(|u| index.get(u).expect("a node-1 pod").name)
    .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "checkout-7c9f-abcde".to_string(),
            "web-5d9c-qwert".to_string(),
            "plumb-agent-x7k2p".to_string(),
            "marker-a".to_string()
        ])
    );
    assert_eq!(index.len(), 4);

    // As a metadata source: a pod UID from a cgroup path gets its names.
    let mut wl = workload(checkout);
    index.fill(&mut wl);
    assert_eq!(wl.pod.as_deref(), Some("checkout-7c9f-abcde"));
    assert_eq!(wl.namespace.as_deref(), Some("shop"));
    assert_eq!(wl.owner.as_deref(), Some("ReplicaSet/checkout-7c9f"));
    let labels = wl.pod_labels.as_deref().expect("labels");
    assert_eq!(labels.get("app").map(String::as_str), Some("checkout"));
    let mut unknown = workload("00000000-0000-4000-8000-000000000000");
    index.fill(&mut unknown);
    assert_eq!(unknown.pod, None);

    // Both calls asked for this node's pods only, cluster-wide.
    let seen = api.seen();
    assert!(seen.len() >= 2, "{seen:?}");
    for t in &seen {
        assert!(t.starts_with("/api/v1/pods?"), "{t}");
        assert!(t.contains("fieldSelector=spec.nodeName=node-1"), "{t}");
    }
    assert!(seen.iter().any(|t| t.contains("watch=true")), "{seen:?}");
}

#[tokio::test]
async fn a_forbidden_api_leaves_the_watcher_retrying_with_an_empty_index() {
    let api = ApiServer::start(Cluster {
        refuse: Some((
            403,
            "pods is forbidden: User \"system:serviceaccount:plumb:plumb-agent\" cannot list \
             resource \"pods\" in API group \"\" at the cluster scope"
                .into(),
        )),
        ..cluster()
    })
    .unwrap();
    let index = PodIndex::default();
    let task = tokio::spawn(index.clone().watch(client(&api), "node-1".into()));
    // The watcher backs off and asks again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.seen().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(api.seen().len() >= 2, "{:?}", api.seen());
    assert!(!task.is_finished(), "the watcher retries instead of ending");
    assert!(index.is_empty());
    let mut wl = workload("1f0e6a52-6c1b-4f7e-9a43-2f1d0c7e5a01");
    index.fill(&mut wl);
    assert_eq!(wl.pod, None);
    task.abort();
}

#[tokio::test]
async fn a_label_selection_resolves_to_the_nodes_and_their_agent_pods() {
    let api = ApiServer::start(cluster()).unwrap();
    let sel = Selection {
        namespace: Some("shop".into()),
        labels: Some("app=checkout".into()),
        ..Selection::default()
    };
    let r = k8s::resolve(&client(&api), &sel, &AgentPods::default())
        .await
        .expect("resolve");
    let nodes: Vec<(&str, &str)> = r
        .targets
        .iter()
        .map(|t| (t.node.as_str(), t.agent_pod.as_str()))
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("node-1", "plumb-agent-x7k2p"),
            ("node-2", "plumb-agent-q9m4d")
        ]
    );
    assert_eq!(
        r.targets[0].pods,
        BTreeSet::from([("shop".to_string(), "checkout-7c9f-abcde".to_string())])
    );
    // node-4 hosts a selected pod but no agent; the pending pod has no node.
    assert_eq!(r.without_agent, vec!["node-4".to_string()]);
    let seen = api.seen();
    assert!(
        seen.iter()
            .any(|t| t.starts_with("/api/v1/namespaces/shop/pods?")
                && t.contains("labelSelector=app=checkout")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|t| t.starts_with("/api/v1/namespaces/plumb/pods?")
                && t.contains(
                    "labelSelector=app.kubernetes.io/name=plumb,app.kubernetes.io/component=agent"
                )),
        "{seen:?}"
    );
}

#[tokio::test]
async fn pod_node_and_all_namespaces_become_selectors() {
    let api = ApiServer::start(cluster()).unwrap();
    let c = client(&api);
    let sel = Selection {
        all_namespaces: true,
        pod: Some("checkout-7c9f-fghij".into()),
        node: Some("node-2".into()),
        ..Selection::default()
    };
    let r = k8s::resolve(&c, &sel, &AgentPods::default())
        .await
        .expect("resolve");
    assert_eq!(r.targets.len(), 1);
    assert_eq!(
        r.targets[0].pods,
        BTreeSet::from([("shop".to_string(), "checkout-7c9f-fghij".to_string())])
    );
    // --node alone: the whole node, no pod listing needed.
    let whole = Selection {
        node: Some("node-2".into()),
        ..Selection::default()
    };
    let r = k8s::resolve(&c, &whole, &AgentPods::default())
        .await
        .expect("resolve");
    assert_eq!(r.targets.len(), 1);
    assert_eq!(r.targets[0].agent_pod, "plumb-agent-q9m4d");
    assert!(r.targets[0].pods.is_empty());
    let seen = api.seen();
    assert!(
        seen.iter().any(|t| t.starts_with("/api/v1/pods?")
            && t.contains("fieldSelector=metadata.name=checkout-7c9f-fghij,spec.nodeName=node-2")),
        "{seen:?}"
    );
    // Two agent listings and one pod listing: --node alone listed no pods.
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test]
async fn no_selection_asks_every_agent_and_the_agent_pods_can_be_overridden() {
    let api = ApiServer::start(cluster()).unwrap();
    let c = client(&api);
    // `kubectl plumb gadgets`: no pod selected, every running agent.
    let r = k8s::resolve(&c, &Selection::default(), &AgentPods::default())
        .await
        .expect("resolve");
    let nodes: Vec<&str> = r.targets.iter().map(|t| t.node.as_str()).collect();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"]);
    assert!(r.targets.iter().all(|t| t.pods.is_empty()));
    assert!(r.without_agent.is_empty());
    // Only the agent listing: the current namespace's pods do not matter.
    assert_eq!(api.seen().len(), 1, "{:?}", api.seen());
    // Agents elsewhere: the namespace and selector asked for are used.
    let other = AgentPods {
        namespace: "monitoring".into(),
        selector: "app=plumb-agent".into(),
    };
    let r = k8s::resolve(&c, &Selection::default(), &other)
        .await
        .expect("resolve");
    assert!(r.targets.is_empty());
    let last = api.seen().pop().unwrap_or_default();
    assert!(
        last.starts_with("/api/v1/namespaces/monitoring/pods?")
            && last.contains("labelSelector=app=plumb-agent"),
        "{last}"
    );
}

/// A listener that answers every line it reads with the line reversed.
async fn reverser() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let mut r = buf[..n].to_vec();
                    r.reverse();
                    if c.write_all(&r).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_port_forward_carries_bytes_both_ways_and_reports_the_pods_error() {
    let up = reverser().await;
    let api = ApiServer::start(Cluster {
        forwards: HashMap::from([(("plumb".into(), "plumb-agent-x7k2p".into(), 7979), up)]),
        ..cluster()
    })
    .unwrap();
    let c = client(&api);
    let r = k8s::resolve(&c, &Selection::default(), &AgentPods::default())
        .await
        .expect("resolve");
    let t = k8s::target(c.clone(), &AgentPods::default(), &r.targets[0], 7979, false);
    assert_eq!(t.who, "node node-1 (agent pod plumb/plumb-agent-x7k2p)");
    let Dial::Stream(open) = &t.dial else {
        panic!("a port-forward target")
    };
    let mut s = open().await.expect("port-forward");
    s.write_all(b"abc").await.unwrap();
    let mut got = [0u8; 3];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"cba");
    drop(s);
    assert!(
        api.seen()
            .iter()
            .any(|t| t == "/api/v1/namespaces/plumb/pods/plumb-agent-x7k2p/portforward?ports=7979"),
        "{:?}",
        api.seen()
    );

    // node-3's agent pod has nothing listening: the pod end's error is
    // what reading the stream returns.
    let t3 = k8s::target(c, &AgentPods::default(), &r.targets[2], 7979, false);
    let Dial::Stream(open) = &t3.dial else {
        panic!("a port-forward target")
    };
    let mut s = open().await.expect("the upgrade itself succeeds");
    let mut buf = [0u8; 16];
    let e = s.read(&mut buf).await.expect_err("the pod end's error");
    let text = plumb_agent::error::chain(&e);
    assert!(
        text.starts_with(
            "port-forward: error forwarding port 7979 to pod aa000000-0000-4000-8000-000000000003"
        ) && text.ends_with("connect: connection refused"),
        "{text}"
    );
}

/// An agent without kernel counters (no root needed) on a loopback port.
async fn agent(node: &str) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut cfg = AgentConfig::new(ListenAddr::parse("127.0.0.1:0").unwrap());
    cfg.node = node.to_string();
    cfg.counters = false;
    cfg.token = Some(plumb_agent::auth::Token::new("k8s-test-token"));
    let a = BoundAgent::bind(cfg, Vec::new()).await.expect("bind");
    let addr = a.api_addr().expect("a TCP address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(a.serve(async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gadgets_through_port_forwards_name_each_node_and_the_one_that_fails() {
    let (a1, _s1) = agent("node-1").await;
    let (a2, _s2) = agent("node-2").await;
    let api = ApiServer::start(Cluster {
        forwards: HashMap::from([
            (("plumb".into(), "plumb-agent-x7k2p".into(), 7979), a1),
            (("plumb".into(), "plumb-agent-q9m4d".into(), 7979), a2),
        ]),
        ..cluster()
    })
    .unwrap();
    let c = client(&api);
    let r = k8s::resolve(&c, &Selection::default(), &AgentPods::default())
        .await
        .expect("resolve");
    let auth = ClientAuth {
        token: Some(plumb_agent::auth::Token::new("k8s-test-token")),
        tls: None,
    };
    let d = Deadlines {
        call: Duration::from_secs(10),
        ..Deadlines::default()
    };
    let mut got = Vec::new();
    for t in &r.targets {
        let t = k8s::target(c.clone(), &AgentPods::default(), t, 7979, false);
        got.push(client::list_gadgets(&t, &auth, d).await.map(|g| g.node));
    }
    assert_eq!(got[0].as_deref().ok(), Some("node-1"));
    assert_eq!(got[1].as_deref().ok(), Some("node-2"));
    let e = plumb_agent::error::chain(got[2].as_ref().unwrap_err());
    assert!(
        e.starts_with("node node-3 (agent pod plumb/plumb-agent-r5t8w): ")
            && e.contains("error forwarding port 7979 to pod aa000000-0000-4000-8000-000000000003")
            && e.contains("connection refused"),
        "{e}"
    );
}
