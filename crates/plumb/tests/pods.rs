//! End to end, as root: processes placed in kubelet-style cgroups are
//! attributed to their pod with the names a CRI runtime gives (a stand-in
//! runtime on a unix socket, since no cluster can run here), and `--pod` /
//! `-n` select them, narrowed in the kernel, including a pod that starts
//! after plumb did.
//!
//! The tests run one at a time (`support::serial`): they create pod
//! cgroups that the others' filters must not see.

mod support;

use plumb_core::testing::{marker, require_root, TestCgroup};
use plumb_cri::fake::{FakePod, FakeRuntime};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{cgroup2_root, serial};

/// A pod's container cgroup laid out as the kubelet's systemd driver and
/// containerd do, below a slice of this test's own.
struct PodCgroup {
    pod: PathBuf,
    scope: TestCgroup,
}

impl PodCgroup {
    fn new(tag: &str, uid: &str, container: &str) -> Self {
        let pod = format!(
            "plumb-test-{tag}-{}.slice/kubepods-besteffort-pod{}.slice",
            std::process::id(),
            uid.replace('-', "_")
        );
        let scope = TestCgroup::new(&format!("{pod}/cri-containerd-{container}.scope"));
        PodCgroup {
            pod: cgroup2_root().join(pod),
            scope,
        }
    }

    fn spawn(&self, argv: &[&str]) -> Child {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]).stdout(Stdio::null());
        self.scope.spawn(&mut cmd)
    }
}

fn hex_id(seed: u8) -> String {
    format!("{:02x}", seed).repeat(32)
}

fn pod(name: &str, namespace: &str, uid: &str, container: &str) -> FakePod {
    FakePod {
        name: name.into(),
        namespace: namespace.into(),
        uid: uid.into(),
        containers: vec![(container.into(), "app".into())],
    }
}

/// A running `plumb -v trace exec -o json ...`: killed by its pid if the
/// test fails early.
struct Plumb {
    child: Child,
    stderr: Vec<String>,
}

impl Drop for Plumb {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Start plumb and wait until its programs are attached.
fn start(runtime: &FakeRuntime, filter: &[&str]) -> (Plumb, BufReader<std::process::ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["-v", "--runtime-endpoint", &runtime.endpoint()])
        .args(["trace", "exec", "-o", "json", "--duration", "30s"])
        .args(filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plumb");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut plumb = Plumb {
        child,
        stderr: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).expect("read stderr") > 0,
            "plumb exited before attaching: {:?}",
            plumb.stderr
        );
        let attached = line.contains("BPF program ids");
        plumb.stderr.push(line.trim().to_string());
        if attached {
            return (plumb, err);
        }
        assert!(Instant::now() < deadline, "no 'attached' line");
    }
}

/// Stop plumb (SIGTERM) and return its JSON events and all of its stderr.
fn stop(
    mut plumb: Plumb,
    mut err: BufReader<std::process::ChildStderr>,
) -> (Vec<serde_json::Value>, Vec<String>) {
    // SAFETY: signalling the child we started, by its pid.
    unsafe { libc::kill(plumb.child.id() as i32, libc::SIGTERM) };
    let mut out = String::new();
    plumb
        .child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("read stderr");
    let status = plumb.child.wait().expect("wait");
    assert!(status.success(), "plumb failed: {rest}");
    let mut lines = std::mem::take(&mut plumb.stderr);
    lines.extend(rest.lines().map(str::to_string));
    let events = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    (events, lines)
}

fn with_arg<'a>(events: &'a [serde_json::Value], mark: &str) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| {
            e["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == mark))
        })
        .collect()
}

#[test]
fn pod_filter_keeps_its_pods_execs_with_the_runtimes_names() {
    require_root();
    let _s = serial();
    let (uid_a, uid_b) = (
        "6f1d2c3b-4a5e-4f60-8172-93a4b5c6d7e8",
        "7a2e3d4c-5b6f-4071-9283-a4b5c6d7e8f9",
    );
    let (ctr_a, ctr_b) = (hex_id(0xa1), hex_id(0xb2));
    let sock = std::env::temp_dir().join(format!("plumb-cri-e2e-{}.sock", std::process::id()));
    let runtime = FakeRuntime::start(
        &sock,
        vec![
            pod("checkout-7c9f-x2", "shop", uid_a, &ctr_a),
            pod("cart-5d8b-k1", "shop", uid_b, &ctr_b),
        ],
        Duration::ZERO,
    )
    .expect("stand-in runtime");
    let cg_a = PodCgroup::new("pa", uid_a, &ctr_a);
    let cg_b = PodCgroup::new("pb", uid_b, &ctr_b);

    let (plumb, err) = start(&runtime, &["--pod", "checkout-7c9f-x2"]);
    let (mark_a, mark_b, mark_host) = (marker("pod-a"), marker("pod-b"), marker("host"));
    let mut a = cg_a.spawn(&["/bin/echo", &mark_a]);
    let mut b = cg_b.spawn(&["/bin/echo", &mark_b]);
    let mut h = Command::new("/bin/echo")
        .arg(&mark_host)
        .stdout(Stdio::null())
        .spawn()
        .expect("host exec");
    let pid_a = a.id();
    for c in [&mut a, &mut b, &mut h] {
        c.wait().expect("wait");
    }
    std::thread::sleep(Duration::from_millis(500));
    let (events, stderr) = stop(plumb, err);

    // The kernel was told to keep only pod A's cgroup (and newer ones).
    let kernel = stderr
        .iter()
        .find(|l| l.starts_with("plumb: in-kernel filter (exec):"))
        .expect("-v names the in-kernel filter");
    let pod_a_cgroup = format!(
        "/{}",
        cg_a.pod.strip_prefix(cgroup2_root()).unwrap().display()
    );
    assert!(kernel.contains(&pod_a_cgroup), "{kernel}");
    assert!(!kernel.contains(&uid_b.replace('-', "_")), "{kernel}");

    let got = with_arg(&events, &mark_a);
    assert_eq!(got.len(), 1, "pod A's exec once: {events:?}");
    let e = got[0];
    assert_eq!(e["pid"], pid_a);
    assert_eq!(e["pod"], "checkout-7c9f-x2");
    assert_eq!(e["namespace"], "shop");
    assert_eq!(e["container"], "app");
    assert_eq!(e["pod_uid"], uid_a);
    assert_eq!(e["container_id"], ctr_a.as_str());
    assert_eq!(e["container_runtime"], "containerd");
    assert!(with_arg(&events, &mark_b).is_empty(), "pod B filtered out");
    assert!(
        with_arg(&events, &mark_host).is_empty(),
        "host filtered out"
    );
    drop((cg_a, cg_b));
}

#[test]
fn namespace_filter_sees_a_pod_that_starts_after_plumb() {
    require_root();
    let _s = serial();
    let uid = "8b3f4e5d-6c70-4182-a394-b5c6d7e8f90a";
    let ctr = hex_id(0xc3);
    let sock = std::env::temp_dir().join(format!("plumb-cri-late-{}.sock", std::process::id()));
    let runtime = FakeRuntime::start(
        &sock,
        vec![pod("late-6f7a-z9", "batch", uid, &ctr)],
        Duration::ZERO,
    )
    .expect("stand-in runtime");

    let (plumb, err) = start(&runtime, &["-n", "batch"]);
    // The pod's cgroups are made only now, as the kubelet would.
    let cg = PodCgroup::new("late", uid, &ctr);
    let mark = marker("late");
    let mut c = cg.spawn(&["/bin/echo", &mark]);
    let pid = c.id();
    c.wait().expect("wait");
    std::thread::sleep(Duration::from_millis(500));
    let (events, stderr) = stop(plumb, err);

    let kernel = stderr
        .iter()
        .find(|l| l.starts_with("plumb: in-kernel filter (exec):"))
        .expect("-v names the in-kernel filter");
    assert!(kernel.contains("cgroups created since"), "{kernel}");
    let got = with_arg(&events, &mark);
    assert_eq!(got.len(), 1, "the late pod's exec: {events:?}");
    assert_eq!(got[0]["pid"], pid);
    assert_eq!(got[0]["pod"], "late-6f7a-z9");
    assert_eq!(got[0]["namespace"], "batch");
    drop(cg);
}
