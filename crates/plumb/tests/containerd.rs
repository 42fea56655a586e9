//! End to end, as root, against a real containerd (`plumb-containerd`:
//! Debian's containerd with its CRI plugin, runc, the CNI bridge): pods
//! created over the CRI as the kubelet creates them, with its labels, under
//! `/kubepods/besteffort/pod<uid>`. plumb names the pod, namespace and
//! container of:
//!
//! - an exec and an open in a container, with `--pod` selecting it in the
//!   kernel (another pod's are not delivered);
//! - a connection between two pods over the CNI bridge, both sides;
//! - a drop in a pod's network namespace (as many as the rule counted);
//! - a CPU profile filtered to the pod;
//! - `-n` selecting a pod created after plumb started;
//! - the agent's per-pod counters, and a pod deleted while it counts (its
//!   count stays, its kernel key goes);
//! - `plumb run --pod`: a user's socket filter in the pod's namespace.
//!
//! The runtime is named by what it says it is (CRI Version): `containerd`.
//! Containers wait on a FIFO (`/tmp/go` in their root) until the test has
//! plumb attached, so what they do, and the pid that does it, is known
//! beforehand. The tests run one at a time (`support::serial`): their pods'
//! cgroups would be "created since" for each other's filters.

mod support;

use plumb_containerd::{Container, Containerd, Pod};
use plumb_core::testing::{iptables_packets, marker, require_root};
use serde_json::Value;
use std::time::{Duration, Instant};
use support::http::{sample, scrape};
use support::*;

/// A shell line that waits for the test, then runs `then`.
fn gated(then: &str) -> String {
    format!("mkfifo /tmp/go && read x < /tmp/go && {then}")
}

/// Start container `name` in `pod` running `gated(then)`; its first
/// process's pid, once it waits on the FIFO.
fn start_gated(cd: &Containerd, pod: &Pod, name: &str, then: &str) -> (Container, u32) {
    let c = cd
        .start_container(pod, name, &["/bin/sh", "-c", &gated(then)])
        .expect("container");
    let pid = c
        .wait_for_process("mkfifo /tmp/go", Duration::from_secs(30))
        .expect("the container's shell");
    let fifo = format!("/proc/{pid}/root/tmp/go");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(&fifo).exists() {
        assert!(Instant::now() < deadline, "{fifo} never made");
        std::thread::sleep(Duration::from_millis(20));
    }
    (c, pid)
}

/// Let a gated container go on.
fn fire(pid: u32) {
    std::fs::write(format!("/proc/{pid}/root/tmp/go"), "go\n").expect("open the gate");
}

/// `plumb -v --runtime-endpoint E ARGS`, once its programs are attached.
struct Traced {
    proc: Proc,
    stderr: Vec<String>,
}

fn trace(cd: &Containerd, args: &[&str]) -> Traced {
    let mut cmd = plumb();
    cmd.args(["-v", "--runtime-endpoint", &cd.endpoint()])
        .args(args);
    let proc = Proc::spawn(cmd);
    let mut stderr = Vec::new();
    let attached = wait_line(&proc.err, Duration::from_secs(60), &mut stderr, |l| {
        l.contains("BPF program ids")
    });
    assert!(attached.is_some(), "plumb never attached: {stderr:?}");
    Traced { proc, stderr }
}

impl Traced {
    /// SIGTERM; its JSON events, and all of its stderr.
    fn stop(mut self) -> (Vec<Value>, Vec<String>) {
        self.proc.signal(libc::SIGTERM);
        let code = self.proc.wait(Duration::from_secs(30));
        self.stderr.extend(drain(&self.proc.err));
        assert_eq!(code, Some(0), "plumb: {:?}", self.stderr);
        let events = drain(&self.proc.out)
            .iter()
            .map(|l| serde_json::from_str(l).expect("a JSON event"))
            .collect();
        (events, self.stderr)
    }
}

fn containing<'a>(events: &'a [Value], needle: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e.to_string().contains(needle))
        .collect()
}

/// The command line of the exec whose `$0` is `mark` (see `marked_exec`).
fn marked_args(mark: &str) -> Value {
    serde_json::json!(["/bin/sh", "-c", "exec /bin/sleep 3600", mark])
}

/// A shell line whose exec's `$0` is `mark`, and that then sleeps.
fn marked_exec(mark: &str) -> String {
    format!("exec /bin/sh -c 'exec /bin/sleep 3600' {mark}")
}

/// The exec events of `marked_exec(mark)`.
fn execs_of<'a>(events: &'a [Value], mark: &str) -> Vec<&'a Value> {
    let want = marked_args(mark);
    events.iter().filter(|e| e["args"] == want).collect()
}

/// The event names `pod`'s container `c` exactly, as the runtime does.
fn assert_named(e: &Value, cd: &Containerd, pod: &Pod, c: &Container) {
    assert_eq!(e["pod"], pod.name.as_str(), "{e}");
    assert_eq!(e["namespace"], pod.namespace.as_str(), "{e}");
    assert_eq!(e["pod_uid"], pod.uid.as_str(), "{e}");
    assert_eq!(e["container"], c.name.as_str(), "{e}");
    assert_eq!(e["container_id"], c.id.as_str(), "{e}");
    assert_eq!(e["container_runtime"], cd.runtime_name.as_str(), "{e}");
}

fn kernel_filter<'a>(stderr: &'a [String], gadget: &str) -> &'a str {
    let prefix = format!("plumb: in-kernel filter ({gadget}):");
    stderr
        .iter()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("-v names the in-kernel filter: {stderr:?}"))
}

#[test]
fn an_exec_and_an_open_in_a_container_are_named_and_pod_selects_in_the_kernel() {
    require_root();
    let _s = serial();
    let cd = Containerd::start().expect("containerd");
    assert_eq!(cd.runtime_name, "containerd");
    let a = cd.run_pod("checkout-7c9f-x2", "shop").expect("pod a");
    let b = cd.run_pod("cart-5d8b-k1", "shop").expect("pod b");
    let (mark_a, mark_b) = (marker("ctr-a"), marker("ctr-b"));
    // An open of a path that is not there, by the shell itself, then an
    // exec whose $0 is the marker, by the same process.
    let then = |m: &str| format!("true < /open-{m} 2>/dev/null; {}", marked_exec(m));
    let (ca, pid_a) = start_gated(&cd, &a, "app", &then(&mark_a));
    let (_cb, pid_b) = start_gated(&cd, &b, "db", &then(&mark_b));
    let filter = ["--pod", a.name.as_str(), "-o", "json", "--duration", "60s"];
    let execs = trace(&cd, &[&["trace", "exec"][..], &filter].concat());
    let opens = trace(&cd, &[&["trace", "open"][..], &filter].concat());
    fire(pid_a);
    fire(pid_b);
    // The exec keeps the pid: the sleep is the gated shell itself.
    let slept = ca
        .wait_for_command(&["/bin/sleep", "3600"], Duration::from_secs(20))
        .expect("the exec happened");
    assert_eq!(slept, pid_a);
    std::thread::sleep(Duration::from_millis(500));
    let (exec_events, exec_err) = execs.stop();
    let (open_events, open_err) = opens.stop();

    for (err, gadget) in [(&exec_err, "exec"), (&open_err, "open")] {
        let k = kernel_filter(err, gadget);
        assert!(
            k.contains(&format!("/kubepods/besteffort/pod{}", a.uid)),
            "{k}"
        );
        assert!(!k.contains(&b.uid), "{k}");
    }
    let got = execs_of(&exec_events, &mark_a);
    assert_eq!(
        got.len(),
        1,
        "pod a's exec once: {exec_events:?} {exec_err:?}"
    );
    assert_eq!(got[0]["pid"], pid_a);
    assert_named(got[0], &cd, &a, &ca);
    let path = format!("/open-{mark_a}");
    let got: Vec<&Value> = open_events.iter().filter(|e| e["path"] == path).collect();
    assert_eq!(
        got.len(),
        1,
        "pod a's open once: {open_events:?} {open_err:?}"
    );
    assert_eq!(got[0]["pid"], pid_a);
    assert_named(got[0], &cd, &a, &ca);
    for events in [&exec_events, &open_events] {
        assert!(containing(events, &mark_b).is_empty(), "pod b left out");
        for e in events.iter() {
            assert_eq!(e["pod"], a.name.as_str(), "only pod a: {e}");
        }
    }
}

#[test]
fn a_connection_between_two_pods_over_the_bridge_names_both_sides() {
    require_root();
    let _s = serial();
    let cd = Containerd::start().expect("containerd");
    let srv = cd.run_pod("web-6d4f-q7", "shop").expect("server pod");
    let cli = cd.run_pod("client-59c8-t2", "shop").expect("client pod");
    let port = 7312;
    // The connection stays up (each nc's input never ends) until the pods
    // go: a container's cgroup goes with it, and an event read after that
    // could not be named.
    let s = cd
        .start_container(
            &srv,
            "srv",
            &[
                "/bin/sh",
                "-c",
                &format!("/bin/sleep 3600 | /bin/nc -l -p {port}"),
            ],
        )
        .expect("server");
    let spid = s
        .wait_for_command(
            &["/bin/nc", "-l", "-p", &port.to_string()],
            Duration::from_secs(30),
        )
        .expect("listening");
    let connect = format!("/bin/sleep 3600 | /bin/nc {} {port}", srv.ip);
    let (c, gate) = start_gated(&cd, &cli, "cli", &connect);
    let t = trace(
        &cd,
        &[
            "trace",
            "tcp",
            "-n",
            "shop",
            "-o",
            "json",
            "--duration",
            "60s",
        ],
    );
    fire(gate);
    let sip = srv.ip.to_string();
    let cpid = c
        .wait_for_command(
            &["/bin/nc", &sip, &port.to_string()],
            Duration::from_secs(20),
        )
        .expect("the client's nc");
    std::thread::sleep(Duration::from_millis(500));
    let (events, stderr) = t.stop();
    let (cip, sip) = (cli.ip.to_string(), srv.ip.to_string());
    // The client's socket is IPv4; the server's nc listens on `::`, so its
    // side is the IPv4-mapped IPv6 address.
    let connect: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "connect" && e["saddr"] == cip.as_str())
        .filter(|e| e["daddr"] == sip.as_str() && e["dport"] == port)
        .collect();
    let accept: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "accept" && e["sport"] == port)
        .filter(|e| e["saddr"] == format!("::ffff:{sip}") && e["daddr"] == format!("::ffff:{cip}"))
        .collect();
    assert_eq!(connect.len(), 1, "the client's side: {events:?} {stderr:?}");
    assert_eq!(accept.len(), 1, "the server's side: {events:?} {stderr:?}");
    assert_eq!(connect[0]["pid"], cpid, "{}", connect[0]);
    assert_eq!(accept[0]["pid"], spid, "{}", accept[0]);
    assert_eq!(connect[0]["sport"], accept[0]["dport"]);
    for e in connect {
        assert_named(e, &cd, &cli, &c);
    }
    for e in accept {
        assert_named(e, &cd, &srv, &s);
    }
}

#[test]
fn a_drop_in_a_pods_network_namespace_names_the_pod() {
    require_root();
    let _s = serial();
    let cd = Containerd::start().expect("containerd");
    let dst = cd.run_pod("api-7b9d-m4", "shop").expect("dropping pod");
    let src = cd.run_pod("worker-3c1e-p8", "shop").expect("sending pod");
    let port = 7313;
    dst.sh_in_netns(&format!(
        "iptables -w -A INPUT -p tcp --dport {port} -j DROP"
    ))
    .expect("DROP rule");
    let (c, cpid) = start_gated(
        &cd,
        &src,
        "cli",
        &format!("exec /bin/nc -w 2 {} {port}", dst.ip),
    );
    let t = trace(
        &cd,
        &[
            "trace",
            "drop",
            "--pod",
            &dst.name,
            "-o",
            "json",
            "--duration",
            "60s",
        ],
    );
    fire(cpid);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.pids().contains(&cpid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (events, _) = t.stop();
    let listing = dst.sh_in_netns("iptables -w -vnxL INPUT").expect("list");
    let counted = iptables_packets(&listing, &format!("dpt:{port}")).expect("rule counter");
    assert!(counted >= 1, "the SYN was dropped: {listing}");
    assert_eq!(events.len() as u64, counted, "{events:?}");
    let inode = dst.netns_inode().expect("netns");
    for e in &events {
        assert_eq!(e["reason"], "NETFILTER_DROP", "{e}");
        assert_eq!(e["netns"], inode, "{e}");
        assert_eq!(
            (&e["saddr"], &e["daddr"], &e["dport"]),
            (
                &Value::from(src.ip.to_string()),
                &Value::from(dst.ip.to_string()),
                &Value::from(port)
            ),
            "{e}"
        );
        // Both ends are pods: each side is named by its own network namespace.
        for (side, pod) in [("dst", &dst), ("src", &src)] {
            assert_eq!(e[format!("{side}_pod")], pod.name.as_str(), "{e}");
            assert_eq!(
                e[format!("{side}_namespace")],
                pod.namespace.as_str(),
                "{e}"
            );
            assert_eq!(e[format!("{side}_pod_uid")], pod.uid.as_str(), "{e}");
        }
    }
}

#[test]
fn a_cpu_profile_filtered_to_a_pod_holds_only_its_processes() {
    require_root();
    let _s = serial();
    let cd = Containerd::start().expect("containerd");
    let hot = cd.run_pod("render-8e2a-h5", "media").expect("profiled pod");
    let other = cd.run_pod("encode-1f7b-w3", "media").expect("other pod");
    let spin = ["/bin/sh", "-c", "while :; do :; done"];
    let ch = cd.start_container(&hot, "spin", &spin).expect("spinner");
    let _co = cd
        .start_container(&other, "spin", &spin)
        .expect("other spinner");
    let hpid = ch
        .wait_for_process("while", Duration::from_secs(30))
        .expect("spinning");
    let (code, out, err) = run(&[
        "--runtime-endpoint",
        &cd.endpoint(),
        "profile",
        "cpu",
        "--pod",
        &hot.name,
        "-d",
        "2s",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let p: Value = serde_json::from_str(&out).expect("JSON profile");
    let stacks = p["stacks"].as_array().expect("stacks");
    let samples: u64 = stacks.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert!(samples >= 10, "{samples} samples");
    for s in stacks {
        assert_eq!(s["pid"], hpid, "only the pod's spinner: {s}");
        let w = s;
        assert_eq!(w["pod"], hot.name.as_str(), "{s}");
        assert_eq!(w["namespace"], hot.namespace.as_str(), "{s}");
        assert_eq!(w["container"], ch.name.as_str(), "{s}");
        assert_eq!(w["container_id"], ch.id.as_str(), "{s}");
    }
    assert!(
        p["filtered_in_kernel"].as_u64().unwrap() >= 10,
        "the other pod was sampled and left out in the kernel"
    );
}

#[test]
fn namespace_selects_a_pod_created_after_plumb_started() {
    require_root();
    let _s = serial();
    let cd = Containerd::start().expect("containerd");
    let t = trace(
        &cd,
        &[
            "trace",
            "exec",
            "-n",
            "batch",
            "-o",
            "json",
            "--duration",
            "60s",
        ],
    );
    let (mark, mark_other) = (marker("late"), marker("other-ns"));
    let late = cd.run_pod("late-6f7a-z9", "batch").expect("late pod");
    let not = cd
        .run_pod("late-6f7a-z9", "default")
        .expect("same name, other namespace");
    let (c, pid) = start_gated(&cd, &late, "job", &marked_exec(&mark));
    let (_c2, pid2) = start_gated(&cd, &not, "job", &marked_exec(&mark_other));
    fire(pid);
    fire(pid2);
    c.wait_for_process("/bin/sleep 3600", Duration::from_secs(20))
        .expect("the exec happened");
    std::thread::sleep(Duration::from_millis(500));
    let (events, stderr) = t.stop();
    assert!(kernel_filter(&stderr, "exec").contains("cgroups created since"));
    let got = execs_of(&events, &mark);
    assert_eq!(got.len(), 1, "the late pod's exec: {events:?}");
    assert_eq!(got[0]["pid"], pid);
    assert_named(got[0], &cd, &late, &c);
    assert!(containing(&events, &mark_other).is_empty(), "{events:?}");
    // The pod sandbox's own process (pause), which the runtime knows only
    // as the pod, is named the same runtime as the pod's containers.
    assert!(
        events.iter().any(|e| e["container"].is_null()),
        "{events:?}"
    );
    for e in &events {
        assert_eq!(e["container_runtime"], "containerd", "{e}");
        assert_eq!(e["pod"], late.name.as_str(), "{e}");
    }
}

#[test]
fn the_agent_counts_a_pods_execs_and_keeps_them_when_the_pod_is_deleted() {
    require_root();
    let _s = serial();
    let cd = Containerd::start().expect("containerd");
    let pod = cd.run_pod("counter-4d2b-r6", "shop").expect("pod");
    let n = 3;
    let (_c, pid) = start_gated(
        &cd,
        &pod,
        "app",
        &format!("{} exec /bin/sleep 3600", "/bin/true && ".repeat(n)),
    );
    let token = token();
    let agent = start_agent(
        "node-containerd",
        "127.0.0.1:0",
        Some(token.path()),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--runtime-endpoint",
            &cd.endpoint(),
        ],
    );
    let m = agent.metrics().to_string();
    // Named by the runtime (there is no API server here).
    let labels = [
        ("namespace", pod.namespace.as_str()),
        ("pod", pod.name.as_str()),
        ("pod_uid", pod.uid.as_str()),
    ];
    let before = sample(&scrape(&m), "plumb_execs_total", &labels).unwrap_or(0.0);
    fire(pid);
    // n execs of /bin/true and the one of /bin/sleep.
    let want = before + n as f64 + 1.0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = None;
    while got != Some(want) && Instant::now() < deadline {
        got = sample(&scrape(&m), "plumb_execs_total", &labels);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, Some(want), "{}", scrape(&m));

    // Deleted while counted: the count stays, its kernel key is removed.
    let removed0 = sample(&scrape(&m), "plumb_counter_map_removed_total", &[]).unwrap_or(0.0);
    cd.remove_pod(&pod).expect("delete the pod");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut removed = removed0;
    while removed <= removed0 && Instant::now() < deadline {
        removed = sample(&scrape(&m), "plumb_counter_map_removed_total", &[]).unwrap_or(0.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = scrape(&m);
    assert!(removed > removed0, "the pod's key removed: {text}");
    assert_eq!(
        sample(&text, "plumb_execs_total", &labels),
        Some(want),
        "{text}"
    );
    agent.stop();
}

#[test]
fn a_container_that_ends_at_once_is_still_named() {
    require_root();
    let _s = serial();
    let cd = Containerd::start().expect("containerd");
    let t = trace(
        &cd,
        &[
            "trace",
            "exec",
            "-n",
            "jobs",
            "-o",
            "json",
            "--duration",
            "60s",
        ],
    );
    let pod = cd.run_pod("once-2b7c-v5", "jobs").expect("pod");
    let mark = marker("once");
    // The container's only process execs once and exits: runc removes its
    // cgroup right after, often before plumb reads the exec.
    let argv = [
        "/bin/sh",
        "-c",
        "exec /bin/sh -c 'exit 0' \"$0\"",
        mark.as_str(),
    ];
    let c = cd.start_container(&pod, "job", &argv).expect("container");
    let cgroup = c.cgroup.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cgroup.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!cgroup.exists(), "the container's cgroup was removed");
    std::thread::sleep(Duration::from_millis(500));
    let (events, stderr) = t.stop();
    let want = serde_json::json!(["/bin/sh", "-c", "exit 0", mark]);
    let got: Vec<&Value> = events.iter().filter(|e| e["args"] == want).collect();
    assert_eq!(got.len(), 1, "{events:?} {stderr:?}");
    assert_named(got[0], &cd, &pod, &c);
}

/// `plumb run` on a pod: the protocol counter's socket filter goes into
/// the pod's network namespace (found through the CRI, by the pod's main
/// process), and counts exactly the pings another pod sends it.
#[test]
fn plumb_run_attaches_to_a_pods_network_namespace() {
    require_root();
    let _s = serial();
    let cd = Containerd::start().expect("containerd");
    let dst = cd.run_pod("proto-5d1f-k2", "shop").expect("counted pod");
    let src = cd.run_pod("pinger-8e2a-q7", "shop").expect("pinging pod");
    let (_app, _) = start_gated(&cd, &dst, "app", "exec /bin/sleep 60");
    let dir = std::env::temp_dir().join(format!("plumb-run-pod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let object = dir.join("proto_count.bpf.o");
    std::fs::write(&object, plumb_run::testing::PROTO_COUNT).unwrap();
    let mut cmd = plumb();
    cmd.args(["--runtime-endpoint", &cd.endpoint(), "run"])
        .arg(&object)
        .args([
            "--pod",
            &dst.name,
            "-n",
            &dst.namespace,
            "-o",
            "json",
            "--duration",
            "60s",
        ]);
    let mut proc = Proc::spawn(cmd);
    let mut stderr = Vec::new();
    let attached = wait_line(&proc.err, Duration::from_secs(60), &mut stderr, |l| {
        l.starts_with("plumb: attached count_protocols")
    });
    let _ = std::fs::remove_dir_all(&dir);
    let attached = attached.unwrap_or_else(|| panic!("plumb run never attached: {stderr:?}"));
    // The pod's namespace, named by one of its processes (the sandbox's or
    // the container's: they share it).
    let ns = attached
        .strip_prefix("plumb: attached count_protocols: socket filter on a packet socket in ")
        .unwrap_or_else(|| panic!("{attached}"));
    let pid: u32 = ns
        .strip_prefix("/proc/")
        .and_then(|r| r.strip_suffix("/ns/net"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{attached}"));
    let inode = std::fs::metadata(ns).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_eq!(
        inode.ok(),
        Some(dst.netns_inode().expect("netns")),
        "{attached}"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!("pod{}", dst.uid)),
        "process {pid} is not in pod {}: {cgroup}",
        dst.name
    );
    const PINGS: u64 = 4;
    src.sh_in_netns(&format!("ping -q -n -c {PINGS} -i 0.2 -W 2 {}", dst.ip))
        .expect("ping the pod");
    proc.signal(libc::SIGTERM);
    let code = proc.wait(Duration::from_secs(30));
    stderr.extend(drain(&proc.err));
    assert_eq!(code, Some(0), "{stderr:?}");
    let lines: Vec<Value> = drain(&proc.out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let icmp: Vec<&Value> = lines
        .iter()
        .filter(|l| l["key"] == serde_json::json!({"proto": 1}))
        .collect();
    // In the pod: each echo request comes in and each reply goes out, 98
    // bytes each (Ethernet, IPv4, ICMP and ping's 56 bytes).
    assert_eq!(icmp.len(), 1, "{lines:?}");
    assert_eq!(
        icmp[0]["value"],
        serde_json::json!({"packets": 2 * PINGS, "bytes": 2 * PINGS * 98}),
        "{lines:?}"
    );
}

#[test]
fn capture_by_label_holds_each_pods_pings_on_both_ends_of_its_veth() {
    require_root();
    let _s = serial();
    let cd = Containerd::start().expect("containerd");
    let web = [("app", "web-cap")];
    let w1 = cd
        .run_pod_labelled("web-cap-1", "shop", &web)
        .expect("web pod 1");
    let w2 = cd
        .run_pod_labelled("web-cap-2", "shop", &web)
        .expect("web pod 2");
    let src = cd.run_pod("pinger-cap", "shop").expect("pinging pod");
    let dir = std::env::temp_dir().join(marker("capture-cri"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("web.pcapng");
    let mut cmd = plumb();
    cmd.args(["-v", "--runtime-endpoint", &cd.endpoint(), "capture"])
        .args([
            "-n",
            "shop",
            "-l",
            "app=web-cap",
            "--node-side",
            "icmp",
            "-w",
        ])
        .arg(&file);
    let mut proc = Proc::spawn(cmd);
    let mut stderr = Vec::new();
    for _ in 0..4 {
        wait_line(&proc.err, Duration::from_secs(60), &mut stderr, |l| {
            l.starts_with("plumb: capturing on ")
        })
        .unwrap_or_else(|| panic!("capture did not open 4 points: {stderr:?}"));
    }
    const PINGS: usize = 3;
    for w in [&w1, &w2] {
        src.sh_in_netns(&format!("ping -q -n -c {PINGS} -i 0.2 -W 2 {}", w.ip))
            .expect("ping a web pod");
    }
    proc.signal(libc::SIGINT);
    let code = proc.wait(Duration::from_secs(30));
    stderr.extend(drain(&proc.err));
    assert_eq!(code, Some(0), "{stderr:?}");
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.comment",
            "-e",
            "icmp.type",
            "-e",
            "ip.dst",
        ])
        .output()
        .expect("tshark");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 2 * 4 * PINGS, "{text}");
    for w in [&w1, &w2] {
        let pod = format!("pod shop/{}", w.name);
        let count = |node_side: bool, dir: &str, icmp: &str| {
            rows.iter()
                .filter(|r| r[0].contains(&pod) && r[0].contains("node side") == node_side)
                .filter(|r| r[0].ends_with(dir) && r[1] == icmp)
                .count()
        };
        // Echo requests (8) reach the pod: out of the node's end, into eth0;
        // the replies (0) the other way.
        assert_eq!(count(false, ", in", "8"), PINGS, "{pod}: {text}");
        assert_eq!(count(false, ", out", "0"), PINGS, "{pod}: {text}");
        assert_eq!(count(true, ", out", "8"), PINGS, "{pod}: {text}");
        assert_eq!(count(true, ", in", "0"), PINGS, "{pod}: {text}");
    }
    let last = stderr.last().cloned().unwrap_or_default();
    assert_eq!(
        last,
        format!("plumb: {} packets, 0 dropped by the kernel", 8 * PINGS)
    );
}
