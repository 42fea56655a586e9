//! End to end, as root, with Debian's real bpftrace: `plumb bpftrace` in
//! a lab pod's context counts that pod's syscalls only; through an agent
//! (`plumb remote`) and through `kubectl plumb` (the stand-in API server,
//! a port-forward) its lines stream with their node, the deadline ends the
//! run with its maps, a client that is killed leaves no bpftrace and no
//! BPF program behind, an agent without --allow-bpftrace refuses in one
//! line, and a script bpftrace rejects shows bpftrace's own error with the
//! node. A kprobe script runs through an agent in the kernel-matrix guests
//! (this machine has no kprobes: that test is ignored here and run there,
//! by scripts/guest-suite.sh). The tests run one at a time
//! (`support::serial`): each starts bpftrace, which takes a core for a
//! second or two while it compiles.
//!
//! A lab pod: a process in a kubelet-style pod cgroup (`support::fake_pod`
//! for the systemd layout, `support::PodCgroups` for cgroupfs) and its own
//! network namespace (`unshare --net`), named by a stand-in CRI runtime
//! (local) or the stand-in API server's pod list (kubectl).

mod support;

use plumb_core::testing::{assert_no_programs_left, marker, patience, require_root};
use plumb_cri::fake::{FakePod as CriPod, FakeRuntime};
use plumb_kube_standin::{ApiServer, Cluster};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::fake_pod::FakePod;
use support::*;

/// A process the test started, killed and reaped when the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A shell that waits for `go` to exist, then opens `path` `n` times
/// itself (a redirection of the `:` builtin: no child does it), creates
/// `done`, and sleeps; in its own network namespace.
fn opener(path: &Path, n: u32, go: &Path, done: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.arg("--net").arg("/bin/sh").arg("-c").arg(format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; i=0; while [ $i -lt {n} ]; do : < {p}; i=$((i+1)); done; : > {done}; exec sleep 3600",
        go = go.display(),
        p = path.display(),
        done = done.display()
    ));
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn wait_file(p: &Path, timeout: Duration) {
    let deadline = Instant::now() + patience(timeout);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the map line `@name: V` (or `@name[key]: V`).
fn map_value(lines: &[String], name: &str) -> Option<u64> {
    lines.iter().find_map(|l| {
        let rest = l.trim().strip_prefix(name)?.strip_prefix(": ")?;
        rest.trim().parse().ok()
    })
}

/// The counting script: every open of `path` by pid, the pod's cgroup's,
/// and its main process's; its first line names `$container_pid`.
fn count_script(path: &Path, tag: &str) -> String {
    let p = path.display();
    format!(
        r#"BEGIN {{ printf("{tag} ready %d\n", $container_pid); }}
tracepoint:syscalls:sys_enter_openat /str(args->filename) == "{p}"/ {{ @all[pid] = count(); }}
tracepoint:syscalls:sys_enter_openat /cgroup == $container_cgroup && str(args->filename) == "{p}"/ {{ @pod = count(); }}
tracepoint:syscalls:sys_enter_openat /pid == $container_pid && str(args->filename) == "{p}"/ {{ @main = count(); }}"#
    )
}

#[test]
fn a_pod_scoped_script_counts_only_that_pods_syscalls() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("bt-local");
    let target = dir.path().join("t");
    std::fs::write(&target, "").expect("target file");
    let (go, done_in, done_out) = (
        dir.path().join("go"),
        dir.path().join("in"),
        dir.path().join("out"),
    );
    let pod = FakePod::new(None);
    let sock = dir.path().join("cri.sock");
    let _runtime = FakeRuntime::start(
        &sock,
        vec![CriPod {
            name: "opener-7d9f-x1".into(),
            namespace: "lab".into(),
            uid: pod.uid.clone(),
            containers: vec![(pod.container.clone(), "app".into())],
        }],
        Duration::ZERO,
    )
    .expect("CRI stand-in");
    let (n, m) = (7u32, 5u32);
    let inside = Reaped(pod.spawn(opener(&target, n, &go, &done_in)));
    let outside = Reaped(
        opener(&target, m, &go, &done_out)
            .spawn()
            .expect("outsider"),
    );
    let tag = marker("bt");
    let mut cmd = plumb();
    cmd.args(["--runtime-endpoint", &format!("unix://{}", sock.display())])
        .args(["bpftrace", "--pod", "opener-7d9f-x1", "-n", "lab", "-e"])
        .arg(count_script(&target, &tag));
    let mut bt = Proc::spawn(cmd);
    let mut out = Vec::new();
    let ready = wait_line(&bt.out, Duration::from_secs(60), &mut out, |l| {
        l.starts_with(&format!("{tag} ready "))
    })
    .unwrap_or_else(|| panic!("not ready: {out:?} {:?}", drain(&bt.err)));
    // $container_pid is the pod's process, as the host numbers it.
    assert_eq!(ready, format!("{tag} ready {}", inside.0.id()));
    std::fs::write(&go, "").expect("go");
    wait_file(&done_in, Duration::from_secs(20));
    wait_file(&done_out, Duration::from_secs(20));
    bt.signal(libc::SIGINT);
    assert_eq!(
        bt.wait(Duration::from_secs(20)),
        Some(0),
        "{:?}",
        drain(&bt.err)
    );
    out.extend(drain(&bt.out));
    // What plumb printed (`--nocapture` shows it: the README's example).
    eprintln!(
        "pod pid {} outsider pid {}\n{}",
        inside.0.id(),
        outside.0.id(),
        out.join("\n")
    );
    assert_eq!(map_value(&out, "@pod"), Some(u64::from(n)), "{out:?}");
    assert_eq!(map_value(&out, "@main"), Some(u64::from(n)), "{out:?}");
    // The script saw the outsider too: the predicates, not luck, left it out.
    let all = |pid: u32| map_value(&out, &format!("@all[{pid}]"));
    assert_eq!(all(inside.0.id()), Some(u64::from(n)), "{out:?}");
    assert_eq!(all(outside.0.id()), Some(u64::from(m)), "{out:?}");
    assert_eq!(
        out.iter().filter(|l| l.starts_with("@all[")).count(),
        2,
        "{out:?}"
    );
}

/// An agent that runs bpftrace (--allow-bpftrace), on a node of its own name.
fn bpftrace_agent(token: &TempFile) -> Agent {
    start_agent(
        &marker("node"),
        "127.0.0.1:0",
        Some(token.path()),
        &["--allow-bpftrace"],
    )
}

/// `plumb -v remote --agents A --token-file T bpftrace ARGS`.
fn remote_bt(agent: &Agent, token: &Path, args: &[&str]) -> Command {
    let mut c = remote(&[agent], Some(token), &["bpftrace"]);
    c.args(args);
    c
}

#[test]
fn through_an_agent_lines_stream_with_their_node_and_the_deadline_brings_the_maps() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = bpftrace_agent(&token);
    let node = agent.node.clone();
    let tag = marker("bt");
    let script =
        format!(r#"BEGIN {{ printf("{tag} start\n"); }} interval:ms:100 {{ @ticks = count(); }}"#);
    let started = Instant::now();
    let mut c = Proc::spawn(remote_bt(
        &agent,
        token.path(),
        &["-o", "json", "--duration", "3s", "-e", &script],
    ));
    let mut out = Vec::new();
    let first = wait_line(&c.out, Duration::from_secs(30), &mut out, |l| {
        l.contains(&tag)
    })
    .unwrap_or_else(|| panic!("{out:?} {:?}", drain(&c.err)));
    // Streamed: it arrived while the run was still going.
    assert!(matches!(c.child.try_wait(), Ok(None)), "the run had ended");
    let v: serde_json::Value = serde_json::from_str(&first).expect("JSON line");
    assert_eq!(
        v,
        serde_json::json!({"node": node, "line": format!("{tag} start")})
    );
    let code = c.wait(Duration::from_secs(20));
    let took = started.elapsed();
    out.extend(drain(&c.out));
    let err = drain(&c.err);
    assert_eq!(code, Some(0), "{err:?}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "{took:?}"
    );
    // The map bpftrace printed at SIGINT arrived, with the node. About 30
    // ticks in 3 s; a loaded machine may run the timer late.
    let ticks = out
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| {
            let line = v["line"]
                .as_str()?
                .strip_prefix("@ticks: ")?
                .parse::<u64>()
                .ok()?;
            (v["node"] == node.as_str()).then_some(line)
        });
    assert!(ticks.is_some_and(|t| (5..=40).contains(&t)), "{out:?}");

    // Text: the node column, as remote trace output has it.
    let mut t = Proc::spawn(remote_bt(
        &agent,
        token.path(),
        &[
            "-e",
            &format!(r#"BEGIN {{ printf("{tag} %s\n", str($1)); exit(); }}"#),
            "--",
            "arg-1",
        ],
    ));
    assert_eq!(
        t.wait(Duration::from_secs(30)),
        Some(0),
        "{:?}",
        drain(&t.err)
    );
    let text = drain(&t.out);
    assert!(
        text.contains(&format!("{node:<12} {tag} arg-1")),
        "{text:?}"
    );

    // The agent logged the script with who asked.
    let mut agent = agent;
    let deadline = Instant::now() + Duration::from_secs(5);
    let logged = loop {
        let log = agent.read_log().to_vec();
        if let Some(l) = log
            .iter()
            .find(|l| l.contains("bpftrace run requested") && l.contains(&format!("{tag} start")))
        {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "{log:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        logged.contains("caller=bearer token from 127.0.0.1:"),
        "{logged}"
    );
    agent.stop();
}

/// The bpftrace processes whose command line holds `needle`.
fn bpftrace_pids(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        let argv0 = text.split('\0').next().unwrap_or_default();
        if argv0.ends_with("/bpftrace") && text.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_killed_client_leaves_no_bpftrace_and_no_program() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = bpftrace_agent(&token);
    let tag = marker("bt");
    let script = format!(
        r#"BEGIN {{ printf("{tag}\n"); }} tracepoint:syscalls:sys_enter_getppid {{ @n = count(); }}"#
    );
    let mut c = Proc::spawn(remote_bt(&agent, token.path(), &["-e", &script]));
    let mut out = Vec::new();
    wait_line(&c.out, Duration::from_secs(30), &mut out, |l| {
        l.ends_with(&tag)
    })
    .unwrap_or_else(|| panic!("{out:?} {:?}", drain(&c.err)));
    let pids = bpftrace_pids(&tag);
    assert_eq!(pids.len(), 1, "{pids:?}");
    // bpftrace is the agent's child, and holds the script's programs.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pids[0])).unwrap_or_default();
    let ppid = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().nth(1));
    assert_eq!(ppid, Some(agent.proc.pid().to_string().as_str()), "{stat}");
    let progs: Vec<u32> = prog_ids_of(pids[0]).into_iter().collect();
    assert!(!progs.is_empty(), "bpftrace holds no program");
    c.signal(libc::SIGKILL);
    c.wait(Duration::from_secs(5));
    // SIGINT at once, SIGKILL after the 10 s grace at worst.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !bpftrace_pids(&tag).is_empty() {
        assert!(Instant::now() < deadline, "bpftrace still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_no_programs_left(&progs);
    agent.stop();
}

#[test]
fn an_agent_without_the_permission_refuses_in_one_line() {
    require_root();
    let _serial = serial();
    let token = token();
    let node = marker("node");
    let agent = start_agent(&node, "127.0.0.1:0", Some(token.path()), &[]);
    let mut c = Proc::spawn(remote_bt(
        &agent,
        token.path(),
        &["-e", "BEGIN { exit(); }"],
    ));
    let code = c.wait(Duration::from_secs(30));
    let err = drain(&c.err);
    assert_eq!(code, Some(1), "{err:?}");
    let refused: Vec<&String> = err.iter().filter(|l| l.contains("bpftrace")).collect();
    assert_eq!(
        refused,
        [&format!(
            "plumb: agent {}: node {node}: bpftrace is not allowed on this agent (start it with \
             --allow-bpftrace) (PermissionDenied)",
            agent.api
        )],
        "{err:?}"
    );
    assert!(drain(&c.out).is_empty());
    agent.stop();

    // An agent that is not there: one line naming it.
    let (code, out, err) = run(&[
        "remote",
        "--agents",
        "127.0.0.1:1",
        "bpftrace",
        "-e",
        "BEGIN { exit(); }",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0].starts_with("plumb: agent 127.0.0.1:1: cannot connect")
            && lines[1] == "plumb: 1 of 1 agents failed",
        "{err}"
    );
}

/// Bad input: one line, a non-zero exit, and no bpftrace started.
#[test]
fn bad_input_is_one_line_and_a_non_zero_exit() {
    require_root();
    let _serial = serial();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["bpftrace"], 2, "plumb: no script: give -e 'SCRIPT' or -f FILE"),
        (
            &["bpftrace", "-e", "BEGIN {}", "-f", "/nonexistent/s.bt"],
            2,
            "plumb: give the script with -e or with -f, not both",
        ),
        (
            &["bpftrace", "-f", "/nonexistent/s.bt"],
            2,
            "plumb: cannot read the script /nonexistent/s.bt: No such file or directory (os error 2)",
        ),
        (
            &["bpftrace", "--pod", "no-such-pod-x1", "-n", "lab", "-e", "BEGIN {}"],
            2,
            "plumb: no pod lab/no-such-pod-x1 on this node",
        ),
        (
            &["bpftrace", "--bpftrace", "/nonexistent/bpftrace", "-e", "BEGIN {}"],
            3,
            "plumb: no bpftrace binary: /nonexistent/bpftrace is not an executable file",
        ),
        (
            &["bpftrace", "-e", "BEGIN { print($container_root); }"],
            2,
            "plumb: the script uses $container_root, which only a context gives: add --pod (with -n) or --pid",
        ),
        (
            &["bpftrace", "node/worker-2", "-e", "BEGIN {}"],
            2,
            "plumb: node/worker-2 names a cluster node: use it with kubectl plumb bpftrace",
        ),
    ];
    for (args, want_code, want) in cases {
        let (code, out, err) = run(args);
        assert_eq!((code, err.trim_end()), (*want_code, *want), "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
}

#[test]
fn a_rejected_script_shows_bpftraces_error_with_the_node() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = bpftrace_agent(&token);
    let node = agent.node.clone();
    let mut c = Proc::spawn(remote_bt(
        &agent,
        token.path(),
        &["-e", "BEGIN { nosuchvar }"],
    ));
    let code = c.wait(Duration::from_secs(30));
    let err = drain(&c.err);
    assert_eq!(code, Some(1), "{err:?}");
    assert!(
        err.contains(&format!(
            "plumb: node {node}: stdin:1:9-18: ERROR: Unknown identifier: 'nosuchvar'"
        )),
        "{err:?}"
    );
    assert!(
        err.contains(&format!(
            "plumb: node {node}: bpftrace exited with status 1"
        )),
        "{err:?}"
    );
    agent.stop();
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plumb-agent/tests/fixtures");
/// marker-a's UID in cluster-pods.json (namespace lab, node-1).
const MARKER_A: &str = "5a1b0000-0000-4000-8000-000000000001";

#[test]
fn kubectl_plumb_bpftrace_runs_in_the_pods_context_on_its_node() {
    require_root();
    let _serial = serial();
    let text = std::fs::read_to_string(format!("{FIXTURES}/cluster-pods.json")).expect("fixture");
    let api = ApiServer::start(Cluster {
        pods: serde_json::from_str(&text).expect("fixture JSON"),
        ..Cluster::default()
    })
    .expect("stand-in API server");
    let kubeconfig = TempFile::new("kubeconfig", &api.kubeconfig("lab"));
    let token = token();
    let mut cmd = agent_cmd(
        "node-1",
        "127.0.0.1:0",
        Some(token.path()),
        &["--allow-bpftrace"],
    );
    cmd.env("KUBECONFIG", kubeconfig.path())
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", "443");
    let agent = spawn_agent("node-1", cmd);
    api.forward(
        "plumb",
        "plumb-agent-x7k2p",
        7979,
        agent.api.parse().expect("agent address"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !api
        .seen()
        .iter()
        .any(|t| t.contains("watch=true") && t.contains("spec.nodeName=node-1"))
    {
        assert!(Instant::now() < deadline, "no watch: {:?}", api.seen());
        std::thread::sleep(Duration::from_millis(50));
    }
    // marker-a: a process in its pod cgroup, in its own netns.
    let cgroups = PodCgroups::new(&[MARKER_A]);
    let dir = TempDir::new("bt-kubectl");
    let target = dir.path().join("t");
    std::fs::write(&target, "").expect("target file");
    let (go, done) = (dir.path().join("go"), dir.path().join("done"));
    let n = 4;
    let mut open = opener(&target, n, &go, &done);
    let procs = cgroups.pods[0].join("cgroup.procs");
    // SAFETY: open/write/close only, between fork and exec.
    let procs_c = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).expect("path");
    unsafe {
        open.pre_exec(move || {
            let fd = libc::open(procs_c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            if ok {
                Ok(())
            } else {
                Err(e)
            }
        });
    }
    let inside = Reaped(open.spawn().expect("pod process"));

    let bin = TempDir::new("kubectl");
    let plugin: PathBuf = bin.path().join("kubectl-plumb");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_plumb"), &plugin).expect("symlink");
    let tag = marker("bt");
    let mut k = Command::new(&plugin);
    k.env("KUBECONFIG", kubeconfig.path())
        .arg("--token-file")
        .arg(token.path())
        .args([
            "bpftrace",
            "pod/lab/marker-a",
            "-o",
            "json",
            "--duration",
            "6s",
            "-e",
        ])
        .arg(count_script(&target, &tag));
    let started = Instant::now();
    let mut c = Proc::spawn(k);
    let mut out = Vec::new();
    let ready = wait_line(&c.out, Duration::from_secs(40), &mut out, |l| {
        l.contains(&tag)
    })
    .unwrap_or_else(|| panic!("{out:?} {:?}", drain(&c.err)));
    assert!(matches!(c.child.try_wait(), Ok(None)), "the run had ended");
    let v: serde_json::Value = serde_json::from_str(&ready).expect("JSON");
    assert_eq!(
        v,
        serde_json::json!({
            "node": "node-1",
            "line": format!("{tag} ready {}", inside.0.id()),
            "pod": "lab/marker-a",
        })
    );
    std::fs::write(&go, "").expect("go");
    wait_file(&done, Duration::from_secs(20));
    let code = c.wait(Duration::from_secs(30));
    let took = started.elapsed();
    out.extend(drain(&c.out));
    assert_eq!(code, Some(0), "{:?}", drain(&c.err));
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(25),
        "{took:?}"
    );
    let lines: Vec<String> = out
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["node"] == "node-1" && v["pod"] == "lab/marker-a")
        .filter_map(|v| v["line"].as_str().map(str::to_string))
        .collect();
    assert_eq!(map_value(&lines, "@pod"), Some(u64::from(n)), "{lines:?}");
    assert_eq!(map_value(&lines, "@main"), Some(u64::from(n)), "{lines:?}");

    // node/NAME: the whole node, no pod context.
    let mut k = Command::new(&plugin);
    k.env("KUBECONFIG", kubeconfig.path())
        .arg("--token-file")
        .arg(token.path())
        .args(["bpftrace", "node/node-1", "-o", "json", "-e"])
        .arg(format!(r#"BEGIN {{ printf("{tag} node\n"); exit(); }}"#));
    let mut c = Proc::spawn(k);
    assert_eq!(
        c.wait(Duration::from_secs(40)),
        Some(0),
        "{:?}",
        drain(&c.err)
    );
    let got: Vec<serde_json::Value> = drain(&c.out)
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["line"].as_str().is_some_and(|l| l.contains(&tag)))
        .collect();
    assert_eq!(
        got,
        [serde_json::json!({"node": "node-1", "line": format!("{tag} node")})]
    );
    drop(inside);
    agent.stop();
}

/// A kprobe script through an agent, in a process's context: it counts the
/// opens of one file by that process exactly. This machine's kernel has no
/// kprobes, so it runs in the kernel-matrix guests only.
#[test]
#[ignore = "needs kprobes, which this kernel lacks: scripts/guest-suite.sh runs it in 5.10, 6.1 and 6.12 guests"]
fn a_kprobe_script_through_an_agent_counts_one_processs_opens() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = bpftrace_agent(&token);
    let node = agent.node.clone();
    let dir = TempDir::new("bt-kprobe");
    let target = dir.path().join("t");
    std::fs::write(&target, "").expect("target file");
    let (go, done) = (dir.path().join("go"), dir.path().join("done"));
    let n = 6u32;
    let opener = Reaped(opener(&target, n, &go, &done).spawn().expect("opener"));
    let tag = marker("kp");
    // do_sys_openat2(dfd, filename, how): the file name is a user pointer.
    let script = format!(
        r#"BEGIN {{ printf("{tag} ready %d\n", $container_pid); }}
kprobe:do_sys_openat2 /pid == $container_pid && str(uptr(arg1)) == "{p}"/ {{ @opens = count(); }}"#,
        p = target.display()
    );
    let pid = opener.0.id().to_string();
    let secs = patience(Duration::from_secs(8)).as_secs().to_string() + "s";
    let mut c = Proc::spawn(remote_bt(
        &agent,
        token.path(),
        &[
            "-o",
            "json",
            "--pid",
            &pid,
            "--duration",
            &secs,
            "-e",
            &script,
        ],
    ));
    let mut out = Vec::new();
    let ready = wait_line(&c.out, Duration::from_secs(60), &mut out, |l| {
        l.contains(&tag)
    })
    .unwrap_or_else(|| panic!("{out:?} {:?}", drain(&c.err)));
    let v: serde_json::Value = serde_json::from_str(&ready).expect("JSON line");
    assert_eq!(
        v,
        serde_json::json!({"node": node, "line": format!("{tag} ready {pid}")})
    );
    std::fs::write(&go, "").expect("go");
    wait_file(&done, Duration::from_secs(20));
    let code = c.wait(Duration::from_secs(40));
    out.extend(drain(&c.out));
    assert_eq!(code, Some(0), "{:?}", drain(&c.err));
    let lines: Vec<String> = out
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["node"] == node.as_str())
        .filter_map(|v| v["line"].as_str().map(str::to_string))
        .collect();
    assert_eq!(map_value(&lines, "@opens"), Some(u64::from(n)), "{lines:?}");
    agent.stop();
}
