//! The Kubernetes code against a local stand-in for the API server: it
//! answers the list and watch calls the pod watcher and `kubectl plumb`'s
//! resolution make, with hand-written responses in the shape of real ones
//! (tests/fixtures), and records the requests so the selectors sent can be
//! checked.

use plumb_agent::k8s::{self, PodIndex, Selection};
use plumb_core::enrich::MetadataSource;
use plumb_core::event::Workload;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIX}/{name}")).expect("fixture")
}

/// A request the stand-in saw: path and decoded query.
type Seen = Arc<Mutex<Vec<String>>>;

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serve `route(path_and_query) -> (body, keep_open)` on a loopback port.
async fn stand_in(route: fn(&str) -> Option<(String, bool)>) -> (String, Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let target = decode(&target);
                seen.lock().unwrap().push(target.clone());
                let (status, body, keep_open) = match route(&target) {
                    Some((b, k)) => ("200 OK", b, k),
                    None => ("404 Not Found", r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#.to_string(), false),
                };
                let resp = if keep_open {
                    // A watch: events as they happen, the connection open.
                    format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n", body.len())
                } else {
                    format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                };
                let _ = c.write_all(resp.as_bytes()).await;
                if keep_open {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    (addr, seen)
}

fn client(addr: &str) -> kube::Client {
    let cfg = kube::Config::new(addr.parse().unwrap());
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
    let (addr, seen) = stand_in(|t| {
        if !t.starts_with("/api/v1/pods?") {
            return None;
        }
        if t.contains("watch=true") {
            Some((fixture("node1-watch.jsonl"), true))
        } else {
            Some((fixture("node1-pods.json"), false))
        }
    })
    .await;
    let index = PodIndex::default();
    tokio::spawn(index.clone().watch(client(&addr), "node-1".into()));

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
    assert_eq!(index.len(), 2);

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

    // Both calls asked for this node's pods only.
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "{seen:?}");
    for t in &seen {
        assert!(t.contains("fieldSelector=spec.nodeName=node-1"), "{t}");
    }
    assert!(seen.iter().any(|t| t.contains("watch=true")), "{seen:?}");
}

#[tokio::test]
async fn without_an_api_the_watcher_keeps_going_with_an_empty_index() {
    let (addr, _) = stand_in(|_| None).await;
    let index = PodIndex::default();
    let task = tokio::spawn(index.clone().watch(client(&addr), "node-1".into()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!task.is_finished(), "the watcher retries instead of ending");
    assert!(index.is_empty());
    let mut wl = workload("1f0e6a52-6c1b-4f7e-9a43-2f1d0c7e5a01");
    index.fill(&mut wl);
    assert_eq!(wl.pod, None);
    task.abort();
}

fn resolve_route(t: &str) -> Option<(String, bool)> {
    if t.starts_with("/api/v1/namespaces/plumb/pods?") {
        return Some((fixture("agent-pods.json"), false));
    }
    if t.starts_with("/api/v1/namespaces/shop/pods?") || t.starts_with("/api/v1/pods?") {
        return Some((fixture("shop-checkout-pods.json"), false));
    }
    None
}

#[tokio::test]
async fn a_label_selection_resolves_to_the_nodes_and_their_agent_pods() {
    let (addr, seen) = stand_in(resolve_route).await;
    let sel = Selection {
        namespace: Some("shop".into()),
        labels: Some("app=checkout".into()),
        ..Selection::default()
    };
    let r = k8s::resolve(&client(&addr), &sel).await.expect("resolve");
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
    // node-3 hosts a selected pod but no agent; the pending pod has no node.
    assert_eq!(r.without_agent, vec!["node-3".to_string()]);
    let seen = seen.lock().unwrap().clone();
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
    let (addr, seen) = stand_in(resolve_route).await;
    let c = client(&addr);
    let sel = Selection {
        all_namespaces: true,
        pod: Some("checkout-7c9f-fghij".into()),
        node: Some("node-2".into()),
        ..Selection::default()
    };
    k8s::resolve(&c, &sel).await.expect("resolve");
    // --node alone: the whole node, no pod listing needed.
    let whole = Selection {
        node: Some("node-2".into()),
        ..Selection::default()
    };
    let r = k8s::resolve(&c, &whole).await.expect("resolve");
    assert_eq!(r.targets.len(), 1);
    assert_eq!(r.targets[0].agent_pod, "plumb-agent-q9m4d");
    assert!(r.targets[0].pods.is_empty());
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|t| t.starts_with("/api/v1/pods?")
            && t.contains("fieldSelector=metadata.name=checkout-7c9f-fghij,spec.nodeName=node-2")),
        "{seen:?}"
    );
    // Two agent listings and one pod listing: --node alone listed no pods.
    assert_eq!(seen.len(), 3, "{seen:?}");
}
