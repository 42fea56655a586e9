//! The source's lookups against a stand-in CRI runtime on a unix socket,
//! answering as containerd does for a pod the kubelet created.

use plumb_core::enrich::MetadataSource;
use plumb_core::event::Workload;
use plumb_cri::fake::{FakePod, FakeRuntime};
use plumb_cri::CriSource;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

const CONTAINER: &str = "7c3ad5e8c1f4d1b8b5e9f0e3c2a1b4d6e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3";
const POD_UID: &str = "0b9a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d";

fn runtime(tag: &str, delay: Duration) -> FakeRuntime {
    let path = std::env::temp_dir().join(format!("plumb-cri-{tag}-{}.sock", std::process::id()));
    FakeRuntime::start(
        &path,
        vec![FakePod {
            name: "checkout-7c9f-x2".into(),
            namespace: "shop".into(),
            uid: POD_UID.into(),
            containers: vec![(CONTAINER.into(), "app".into())],
        }],
        delay,
    )
    .unwrap()
}

fn in_pod(runtime: &'static str) -> Workload {
    Workload {
        container_id: Some(CONTAINER.into()),
        container_runtime: Some(runtime),
        pod_uid: Some(POD_UID.into()),
        ..Default::default()
    }
}

#[test]
fn names_a_kubelet_container_and_its_pod() {
    let rt = runtime("names", Duration::ZERO);
    let src = CriSource::new(vec![rt.path().to_path_buf()], Duration::from_secs(2));
    let mut w = in_pod("containerd");
    src.fill(&mut w);
    assert_eq!(w.pod.as_deref(), Some("checkout-7c9f-x2"));
    assert_eq!(w.namespace.as_deref(), Some("shop"));
    assert_eq!(w.container.as_deref(), Some("app"));
    assert_eq!(w.container_id.as_deref(), Some(CONTAINER));

    // A pod-level cgroup names only the pod: the sandbox list answers.
    let mut p = Workload {
        pod_uid: Some(POD_UID.into()),
        ..Default::default()
    };
    src.fill(&mut p);
    assert_eq!(p.pod.as_deref(), Some("checkout-7c9f-x2"));
    assert_eq!(p.namespace.as_deref(), Some("shop"));
    assert!(p.container.is_none());

    // Unknown to the runtime: nothing is made up.
    let mut u = Workload {
        container_id: Some("f".repeat(64)),
        container_runtime: Some("cri-o"),
        ..Default::default()
    };
    src.fill(&mut u);
    assert!(u.pod.is_none() && u.namespace.is_none() && u.container.is_none());
    assert_eq!(src.stats.failed.load(Ordering::Relaxed), 0);

    // The second question about the same container comes from the cache.
    let asked = src.stats.asked.load(Ordering::Relaxed);
    let mut again = in_pod("containerd");
    src.fill(&mut again);
    assert_eq!(again.pod.as_deref(), Some("checkout-7c9f-x2"));
    assert_eq!(src.stats.asked.load(Ordering::Relaxed), asked);
}

#[test]
fn a_slow_runtime_costs_a_bounded_wait_and_is_counted() {
    let rt = runtime("slow", Duration::from_secs(5));
    let src = CriSource::new(vec![rt.path().to_path_buf()], Duration::from_millis(200));
    let mut w = in_pod("containerd");
    let t = std::time::Instant::now();
    src.fill(&mut w);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        t.elapsed()
    );
    assert!(w.pod.is_none());
    // The container lookup and the pod lookup after it: both failed.
    assert_eq!(src.stats.failed.load(Ordering::Relaxed), 2);
}

#[test]
fn a_missing_socket_answers_nothing() {
    let src = CriSource::new(
        vec![PathBuf::from("/nonexistent/plumb/cri.sock")],
        Duration::from_millis(200),
    );
    let mut w = in_pod("containerd");
    src.fill(&mut w);
    assert!(w.pod.is_none());
    assert_eq!(src.stats.failed.load(Ordering::Relaxed), 2);
}

/// A cgroupfs path (`/kubepods/besteffort/pod<uid>/<id>`) names no runtime;
/// the one that knows the container does, through its Version call.
#[test]
fn the_runtime_that_answers_names_itself() {
    for (name, expect) in [
        ("containerd", "containerd"),
        ("cri-o", "cri-o"),
        ("docker", "docker"),
        // A runtime plumb does not know keeps the cgroup path's guess.
        ("fancy-runtime", "cri"),
    ] {
        let path = std::env::temp_dir().join(format!(
            "plumb-cri-version-{name}-{}.sock",
            std::process::id()
        ));
        let rt = FakeRuntime::start_named(
            &path,
            vec![FakePod {
                name: "checkout-7c9f-x2".into(),
                namespace: "shop".into(),
                uid: POD_UID.into(),
                containers: vec![(CONTAINER.into(), "app".into())],
            }],
            Duration::ZERO,
            name,
        )
        .unwrap();
        let src = CriSource::new(vec![rt.path().to_path_buf()], Duration::from_secs(2));
        let mut w = in_pod("cri");
        src.fill(&mut w);
        assert_eq!(w.container.as_deref(), Some("app"), "{name}");
        assert_eq!(w.container_runtime, Some(expect), "{name}");
    }
}
