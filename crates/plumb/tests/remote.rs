//! End to end, `plumb remote` against agents started here: a hung node
//! (SIGSTOP) is reported within the deadline while the others deliver;
//! agents on unix sockets; the local output options (-o, --fields,
//! --duration, --max-events, --summary) over the fan-out; two clients on
//! one agent; a cancelled profile; every profile format with its node;
//! the TLS server name. Root tests fail without root.
//!
//! One root test at a time (`support::serial`): they start several agents
//! each and measure deadlines, on a machine with two CPUs.

mod support;

use plumb_core::testing::{assert_no_programs_left, marker, require_root};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use support::certs::{make_ca, make_leaf};
use support::*;

/// Wait for `n` "attached" lines; the BPF program ids, by node.
fn attached(p: &Proc, n: usize, seen: &mut Vec<String>) -> Vec<(String, Vec<u32>)> {
    (0..n)
        .map(|_| {
            let l = wait_line(&p.err, Duration::from_secs(30), seen, |l| {
                l.contains(" attached, BPF program ids ")
            })
            .unwrap_or_else(|| panic!("not every agent attached: {seen:?}"));
            // plumb: node N (VIA): exec attached, BPF program ids 1,2
            let node = l.split_whitespace().nth(2).unwrap_or_default().to_string();
            (node, ids(&l))
        })
        .collect()
}

#[test]
fn a_stalled_or_stopped_node_is_reported_and_the_others_deliver() {
    require_root();
    let _serial = serial();
    let token = token();
    let tok = Some(token.path());
    let a = start_agent("node-a", "127.0.0.1:0", tok, &[]);
    let b = start_agent("node-b", "127.0.0.1:0", tok, &[]);
    let c = start_agent("node-c", "127.0.0.1:0", tok, &[]);

    // A trace on all three; node-b stops mid-run (its gadget stays
    // loaded, so its stream is merely silent): its unanswered HTTP/2
    // pings give it away within the stall timeout.
    let mut client = Proc::spawn(remote(
        &[&a, &b, &c],
        tok,
        &["--stall-timeout", "4s", "trace", "exec", "-o", "json"],
    ));
    let mut seen = Vec::new();
    let progs = attached(&client, 3, &mut seen);
    b.proc.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let l = wait_line(&client.err, Duration::from_secs(20), &mut seen, |l| {
        l.contains(&b.api)
    })
    .unwrap_or_else(|| panic!("the stopped agent was not reported: {seen:?}"));
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(
        l,
        format!(
            "plumb: agent {}: the connection stalled: no answer to HTTP/2 pings within 4s \
             [node node-b]; the others go on",
            b.api
        )
    );
    let mark = marker("stall");
    let pid = exec_as(Path::new("/bin/true"), &mark);
    let mut out_seen = Vec::new();
    let got = execs(
        &client.out,
        &mark,
        2,
        Duration::from_secs(20),
        &mut out_seen,
    );
    let nodes: BTreeSet<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["node-a", "node-c"]), "{out_seen:?}");
    assert!(got.iter().all(|g| g.1 == pid as u64), "{got:?}");
    client.signal(libc::SIGINT);
    assert_eq!(client.wait(Duration::from_secs(20)), Some(1));
    let rest = drain(&client.err);
    assert!(
        rest.iter().any(|l| l == "plumb: 1 of 3 agents failed"),
        "{rest:?}"
    );
    for (node, ids) in &progs {
        if node != "node-b" {
            assert_no_programs_left(ids);
        }
    }

    // node-b still stopped, and node-c too for this call: the gadget list
    // has a deadline, and the nodes are asked at once, so the answer
    // comes after one deadline, not two.
    c.proc.signal(libc::SIGSTOP);
    let t = Instant::now();
    let out = remote(&[&a, &b, &c], tok, &["--call-timeout", "3s", "gadgets"])
        .output()
        .expect("run plumb remote gadgets");
    let took = t.elapsed();
    c.proc.signal(libc::SIGCONT);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        // The upper bound leaves room for process start-up on a loaded machine.
        took >= Duration::from_secs(3) && took < Duration::from_millis(8500),
        "{took:?}"
    );
    for stopped in [&b, &c] {
        let want = format!(
            "plumb: agent {}: not answering: listing its gadgets took longer than 3s; the others go on",
            stopped.api
        );
        assert!(stderr.lines().any(|l| l == want), "{want}: {stderr}");
    }
    assert!(
        stderr.lines().any(|l| l == "plumb: 2 of 3 agents failed"),
        "{stderr}"
    );
    let rows: BTreeSet<&str> = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("exec"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(rows, BTreeSet::from(["node-a"]), "{stdout}");

    // A profile: its deadline is the duration plus the call timeout.
    let busy = Busy::start();
    let t = Instant::now();
    let out = remote(
        &[&a, &b, &c],
        tok,
        &[
            "--call-timeout",
            "3s",
            "profile",
            "cpu",
            "--duration",
            "2s",
            "--pid",
            &busy.pid(),
            "-o",
            "folded",
        ],
    )
    .output()
    .expect("run plumb remote profile");
    let took = t.elapsed();
    drop(busy);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(12),
        "{took:?}"
    );
    assert!(
        stderr.lines().any(|l| l
            == format!(
                "plumb: agent {}: not answering: the profile took longer than 5s; the others go on",
                b.api
            )),
        "{stderr}"
    );
    let roots: BTreeSet<&str> = stdout.lines().filter_map(|l| l.split(';').next()).collect();
    assert_eq!(roots, BTreeSet::from(["node-a", "node-c"]), "{stdout}");
    assert!(
        stdout.lines().all(|l| l.split(';').nth(1) == Some("sh")),
        "{stdout}"
    );

    // Woken and killed: the programs it kept loaded while stopped go.
    let b_progs: Vec<u32> = progs
        .iter()
        .filter(|p| p.0 == "node-b")
        .flat_map(|p| p.1.clone())
        .collect();
    drop(b);
    assert_no_programs_left(&b_progs);
    a.stop();
    c.stop();
}

#[test]
fn agents_on_unix_sockets_are_reached() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("sock");
    let sock = dir.path().join("agent.sock");
    let listen = format!("unix:{}", sock.display());
    // A unix socket needs no token: its mode (0600) decides.
    let agent = start_agent("node-unix", &listen, None, &[]);
    assert_eq!(agent.api, listen);
    let mut client = Proc::spawn(remote(&[&agent], None, &["trace", "exec", "-o", "json"]));
    let mut seen = Vec::new();
    let l = wait_line(&client.err, Duration::from_secs(30), &mut seen, |l| {
        l.contains(" attached, ")
    })
    .unwrap_or_else(|| panic!("{seen:?}"));
    assert!(
        l.starts_with(&format!("plumb: node node-unix ({listen}): exec attached")),
        "{l}"
    );
    let mark = marker("unix");
    let pid = exec_as(Path::new("/bin/true"), &mark);
    let got = execs(&client.out, &mark, 1, Duration::from_secs(20), &mut seen);
    let got: Vec<_> = got.into_iter().map(|g| (g.0, g.1, g.2)).collect();
    assert_eq!(
        got,
        vec![(
            "node-unix".to_string(),
            pid as u64,
            vec!["/bin/true".to_string(), mark]
        )]
    );
    client.signal(libc::SIGINT);
    assert_eq!(client.wait(Duration::from_secs(20)), Some(0));

    let out = remote(&[&agent], None, &["gadgets"])
        .output()
        .expect("run plumb remote gadgets");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>()
                == ["node-unix", "exec", "yes"]),
        "{stdout}"
    );

    // No agent there: one line naming the socket.
    let gone = format!("unix:{}", dir.path().join("none.sock").display());
    let out = plumb()
        .args(["remote", "--agents", &gone, "gadgets"])
        .output()
        .expect("run plumb remote");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("plumb: agent {gone}: cannot connect"))
            && first.contains("No such file or directory"),
        "{err}"
    );
    agent.stop();
}

/// Run `plumb remote ARGS` against `agent`, wait for it to attach, run
/// `markers` (each through `program`), and return its exit code, stdout
/// and stderr once it ends by itself.
fn run_with_markers(
    agent: &Agent,
    token: &Path,
    args: &[&str],
    program: &Path,
    markers: &[&str],
) -> (Option<i32>, Vec<String>, Vec<String>, Vec<u32>) {
    let mut p = Proc::spawn(remote(&[agent], Some(token), args));
    let mut err = Vec::new();
    attached(&p, 1, &mut err);
    let pids = markers.iter().map(|m| exec_as(program, m)).collect();
    let code = p.wait(Duration::from_secs(30));
    let out = drain(&p.out);
    err.extend(drain(&p.err));
    (code, out, err, pids)
}

#[test]
fn the_local_output_options_work_remotely() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = start_agent("node-out", "127.0.0.1:0", Some(token.path()), &[]);
    let dir = TempDir::new("bin");
    let (prog, comm) = named_true(dir.path(), "po");
    let path = prog.display().to_string();
    let m: Vec<String> = (0..3).map(|i| marker(&format!("out{i}"))).collect();
    let marks: Vec<&str> = m.iter().map(String::as_str).collect();

    // -o json --fields --max-events: the client stops after 2 events,
    // which carry the node and the fields asked for, in that order.
    let (code, out, err, pids) = run_with_markers(
        &agent,
        token.path(),
        &[
            "trace",
            "exec",
            "-o",
            "json",
            "--fields",
            "pid,args",
            "--max-events",
            "2",
            "--comm",
            &comm,
        ],
        &prog,
        &marks,
    );
    assert_eq!(code, Some(0), "{err:?}");
    let want: Vec<serde_json::Value> = (0..2)
        .map(|i| serde_json::json!({"node": "node-out", "pid": pids[i], "args": [path, m[i]]}))
        .collect();
    let got: Vec<serde_json::Value> = out
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        got[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["node", "pid", "args"]
    );
    assert!(
        err.iter()
            .any(|l| l == "plumb: 2 events, 0 lost, from 1 of 1 agents"),
        "{err:?}"
    );

    // Columns, --fields and --duration: the agent ends the run.
    let (code, out, err, pids) = run_with_markers(
        &agent,
        token.path(),
        &[
            "trace",
            "exec",
            "--fields",
            "pid,args",
            "--duration",
            "4s",
            "--comm",
            &comm,
        ],
        &prog,
        &marks[..1],
    );
    assert_eq!(code, Some(0), "{err:?}");
    assert_eq!(
        out,
        vec![
            format!("{:<12} {:<8} ARGS", "NODE", "PID"),
            format!("{:<12} {:<8} {path} {}", "node-out", pids[0], m[0]),
        ]
    );
    let finished = format!(
        "plumb: node node-out ({}): finished, 1 events sent, 0 lost",
        agent.api
    );
    assert!(err.contains(&finished), "{err:?}");

    // --summary: counts per node and the gadget's keys, once at the end
    // (the interval is longer than the run).
    let (code, out, err, _) = run_with_markers(
        &agent,
        token.path(),
        &[
            "trace",
            "exec",
            "--summary",
            "1h",
            "--duration",
            "4s",
            "--comm",
            &comm,
        ],
        &prog,
        &marks,
    );
    assert_eq!(code, Some(0), "{err:?}");
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(
        out[0].starts_with("--- ") && out[0].ends_with(" ---"),
        "{out:?}"
    );
    let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(words(&out[1]), ["COUNT", "NODE", "COMM", "FILENAME"]);
    assert_eq!(
        words(&out[2]),
        ["3", "node-out", comm.as_str(), path.as_str()]
    );

    let (code, out, err, _) = run_with_markers(
        &agent,
        token.path(),
        &[
            "trace",
            "exec",
            "-o",
            "json",
            "--summary",
            "1h",
            "--duration",
            "4s",
            "--comm",
            &comm,
        ],
        &prog,
        &marks[..2],
    );
    assert_eq!(code, Some(0), "{err:?}");
    assert_eq!(out.len(), 1, "{out:?}");
    let mut v: serde_json::Value = serde_json::from_str(&out[0]).expect("JSON");
    assert!(v["timestamp"].is_string());
    v.as_object_mut().unwrap().remove("timestamp");
    assert_eq!(
        v,
        serde_json::json!({"type": "summary", "node": "node-out", "comm": comm, "filename": path, "count": 2})
    );
    agent.stop();
}

#[test]
fn two_clients_on_one_agent_each_get_their_own_markers() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = start_agent("node-two", "127.0.0.1:0", Some(token.path()), &[]);
    let dir = TempDir::new("bin");
    let (p1, c1) = named_true(dir.path(), "pa");
    let (p2, c2) = named_true(dir.path(), "pb");
    let args = |comm: &str| {
        remote(
            &[&agent],
            Some(token.path()),
            &["trace", "exec", "-o", "json", "--comm", comm],
        )
    };
    let mut one = Proc::spawn(args(&c1));
    let mut two = Proc::spawn(args(&c2));
    let mut seen = Vec::new();
    let progs1 = attached(&one, 1, &mut seen).remove(0).1;
    let progs2 = attached(&two, 1, &mut seen).remove(0).1;
    // Each client's run has programs of its own.
    assert!(
        progs1.iter().all(|id| !progs2.contains(id)),
        "{progs1:?} {progs2:?}"
    );
    let (m1, m2) = (marker("one"), marker("two"));
    let pid1 = exec_as(&p1, &m1);
    let pid2 = exec_as(&p2, &m2);
    let mut out = Vec::new();
    let got1 = execs(&one.out, "plumb-", 1, Duration::from_secs(20), &mut out);
    let got2 = execs(&two.out, "plumb-", 1, Duration::from_secs(20), &mut out);
    let simple = |g: Vec<Exec>| g.into_iter().map(|g| (g.1, g.2)).collect::<Vec<_>>();
    assert_eq!(
        simple(got1),
        vec![(pid1 as u64, vec![p1.display().to_string(), m1.clone()])]
    );
    assert_eq!(
        simple(got2),
        vec![(pid2 as u64, vec![p2.display().to_string(), m2.clone()])]
    );
    // Nothing of the other's arrives later.
    std::thread::sleep(Duration::from_millis(1500));
    let late1: Vec<String> = one.out.try_iter().collect();
    let late2: Vec<String> = two.out.try_iter().collect();
    assert!(late1.is_empty() && late2.is_empty(), "{late1:?} {late2:?}");
    for (p, progs) in [(&mut one, &progs1), (&mut two, &progs2)] {
        p.signal(libc::SIGINT);
        assert_eq!(p.wait(Duration::from_secs(20)), Some(0));
        assert_no_programs_left(progs);
    }
    agent.stop();
}

#[test]
fn a_cancelled_remote_profile_leaves_no_program_loaded() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = start_agent("node-cancel", "127.0.0.1:0", Some(token.path()), &[]);
    let before = prog_ids_of(agent.proc.pid());
    let mut client = Proc::spawn(remote(
        &[&agent],
        Some(token.path()),
        &["profile", "cpu", "--duration", "60s", "-o", "folded"],
    ));
    // The agent loads the sampler's programs: they show in its fds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sampler: Vec<u32> = Vec::new();
    while sampler.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        sampler = prog_ids_of(agent.proc.pid())
            .difference(&before)
            .copied()
            .collect();
    }
    assert!(!sampler.is_empty(), "the profile never started");
    // Give the sampler time to be fully attached before cancelling.
    std::thread::sleep(Duration::from_millis(500));
    client.signal(libc::SIGINT);
    assert_eq!(client.wait(Duration::from_secs(20)), Some(1));
    let err = drain(&client.err);
    assert_eq!(
        err.last().map(String::as_str),
        Some("plumb: interrupted: the profile was cancelled on every agent"),
        "{err:?}"
    );
    assert_no_programs_left(&sampler);
    let left: BTreeSet<u32> = prog_ids_of(agent.proc.pid());
    assert_eq!(left, before);
    // The agent goes on serving.
    let out = remote(&[&agent], Some(token.path()), &["gadgets"])
        .output()
        .expect("run plumb remote gadgets");
    assert_eq!(out.status.code(), Some(0));
    agent.stop();
}

/// `plumb remote ... profile cpu --duration 2s --pid BUSY ARGS` in `dir`:
/// exit code, stdout, stderr.
fn profile(
    agent: &Agent,
    token: &Path,
    busy: &Busy,
    dir: &Path,
    args: &[&str],
) -> (i32, String, String) {
    let pid = busy.pid();
    let mut all = vec!["profile", "cpu", "--duration", "2s", "--pid", &pid];
    all.extend_from_slice(args);
    let out = remote(&[agent], Some(token), &all)
        .current_dir(dir)
        .output()
        .expect("run plumb remote profile");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_profile_format_carries_the_node() {
    require_root();
    let _serial = serial();
    let token = token();
    let agent = start_agent("node-fmt", "127.0.0.1:0", Some(token.path()), &[]);
    let busy = Busy::start();
    let dir = TempDir::new("prof");

    // JSON, user stacks only: every stack of the node, no kernel frame,
    // and the node's counts add up.
    let (code, out, err) = profile(
        &agent,
        token.path(),
        &busy,
        dir.path(),
        &["-o", "json", "--user-only"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let stacks = v["stacks"].as_array().expect("stacks");
    assert!(!stacks.is_empty(), "{out}");
    let total: u64 = stacks.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    for s in stacks {
        assert_eq!(s["node"], "node-fmt");
        assert_eq!(s["pid"].as_u64(), Some(busy.0.id() as u64));
        assert!(
            s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["kernel"] == false),
            "{s}"
        );
    }
    assert_eq!(v["nodes"][0]["node"], "node-fmt");
    assert_eq!(v["nodes"][0]["samples"].as_u64(), Some(total));
    assert_eq!(v["samples"].as_u64(), Some(total));

    // Kernel stacks only.
    let (code, out, err) = profile(
        &agent,
        token.path(),
        &busy,
        dir.path(),
        &["-o", "json", "--kernel-only"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    for s in v["stacks"].as_array().expect("stacks") {
        assert!(
            s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["kernel"] == true),
            "{s}"
        );
    }

    // pprof without --output: a file named after the node, its path on
    // stdout, a node label on every sample.
    let (code, out, err) = profile(&agent, token.path(), &busy, dir.path(), &["-o", "pprof"]);
    assert_eq!(code, 0, "{err}");
    let name = out.trim();
    assert!(
        name.starts_with("plumb-profile-node-fmt-") && name.ends_with(".pb.gz"),
        "{out}"
    );
    let bytes = std::fs::read(dir.path().join(name)).expect("the pprof file");
    let pp = plumb_profile::pprof::decode(&bytes, Path::new(name)).expect("pprof");
    let st = |i: i64| pp.string_table[i as usize].as_str();
    assert!(!pp.sample.is_empty());
    for s in &pp.sample {
        let node = s
            .label
            .iter()
            .find(|l| st(l.key) == "node")
            .map(|l| st(l.str));
        assert_eq!(node, Some("node-fmt"));
    }

    // SVG to a chosen file.
    let svg = dir.path().join("nodes.svg");
    let svg_arg = svg.display().to_string();
    let (code, out, err) = profile(
        &agent,
        token.path(),
        &busy,
        dir.path(),
        &["-o", "svg", "--output", &svg_arg],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), svg_arg);
    let text = std::fs::read_to_string(&svg).expect("the SVG");
    assert!(text.starts_with("<?xml"), "{}", &text[..text.len().min(80)]);
    assert!(text.contains("plumb profile cpu on node-fmt"), "no title");
    assert!(text.contains("node-fmt ("), "no node frame");
    drop(busy);
    agent.stop();
}

#[test]
fn the_tls_server_name_can_be_given() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("tls-name");
    let d = dir.path();
    make_ca(d, "ca");
    // The agent's certificate names it, not the address it is dialled at.
    make_leaf(d, "agent", "ca", "DNS:agent.plumb.test", "serverAuth");
    make_leaf(d, "client", "ca", "DNS:plumb-client", "clientAuth");
    let p = |f: &str| d.join(f).display().to_string();
    let agent = start_agent(
        "node-tls-name",
        "127.0.0.1:0",
        None,
        &[
            "--tls-cert",
            &p("agent.crt"),
            "--tls-key",
            &p("agent.key"),
            "--client-ca",
            &p("ca.crt"),
        ],
    );
    let api = agent.api.clone();
    let tls = [
        "--tls-ca",
        &p("ca.crt"),
        "--tls-cert",
        &p("client.crt"),
        "--tls-key",
        &p("client.key"),
    ];
    let run = |extra: &[&str]| {
        let out = plumb()
            .args(["remote", "--agents", &api])
            .args(tls)
            .args(extra)
            .arg("gadgets")
            .output()
            .expect("run plumb remote");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Dialled at 127.0.0.1, the certificate does not match.
    let (code, _, err) = run(&[]);
    assert_eq!(code, Some(1), "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("plumb: agent {api}: cannot connect"))
            && first.contains("not valid for name"),
        "{err}"
    );
    // With the name the certificate carries, it does.
    let (code, out, err) = run(&["--tls-server-name", "agent.plumb.test"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>()
                == ["node-tls-name", "exec", "yes"]),
        "{out}"
    );
    // A unix socket has no host name: the name must be given.
    let out = plumb()
        .args(["remote", "--agents", "unix:/run/plumb/none.sock"])
        .args(tls)
        .arg("gadgets")
        .output()
        .expect("run plumb remote");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "plumb: TLS configuration: agent unix:/run/plumb/none.sock has no host name to check its \
         certificate against: give --tls-server-name"
    );
    agent.stop();
}

/// The same events, traced by this host and by an agent at once: what
/// `plumb remote` prints is what `plumb trace` prints, byte for byte, with
/// the node in front. The two runs load their own programs, so each event
/// gets two timestamps a few microseconds apart: those (and the summary's
/// interval stamp) are blanked before the comparison, nothing else.
#[test]
fn remote_output_is_local_output_with_the_node_in_front() {
    require_root();
    let _serial = serial();
    let token = token();
    // A node name of the NODE column's width, so the rest of each row
    // starts where a local row starts.
    let agent = start_agent("node-same", "127.0.0.1:0", Some(token.path()), &[]);
    let dir = TempDir::new("bin");
    let (prog, comm) = named_true(dir.path(), "same");
    let m: Vec<String> = (0..3).map(|i| marker(&format!("same{i}"))).collect();
    let both = |args: &[&str]| -> (Vec<String>, Vec<String>) {
        let mut local_args = vec!["-v", "trace", "exec", "--comm", comm.as_str()];
        local_args.extend_from_slice(args);
        let mut local = Proc::spawn({
            let mut c = plumb();
            c.args(&local_args);
            c
        });
        let mut remote_args = vec!["trace", "exec", "--comm", comm.as_str()];
        remote_args.extend_from_slice(args);
        let mut rem = Proc::spawn(remote(&[&agent], Some(token.path()), &remote_args));
        let (mut le, mut re) = (Vec::new(), Vec::new());
        wait_line(&local.err, Duration::from_secs(30), &mut le, |l| {
            l.contains(" attached, BPF program ids ")
        })
        .unwrap_or_else(|| panic!("local run did not attach: {le:?}"));
        attached(&rem, 1, &mut re);
        for mark in &m {
            exec_as(&prog, mark);
        }
        assert_eq!(local.wait(Duration::from_secs(30)), Some(0), "{le:?}");
        assert_eq!(rem.wait(Duration::from_secs(30)), Some(0), "{re:?}");
        le.extend(drain(&local.err));
        re.extend(drain(&rem.err));
        assert!(
            le.iter().any(|l| l.starts_with("plumb: 3 events, 0 lost")),
            "{le:?}"
        );
        assert!(
            re.iter()
                .any(|l| l == "plumb: 3 events, 0 lost, from 1 of 1 agents"),
            "{re:?}"
        );
        (drain(&local.out), drain(&rem.out))
    };
    let node_col = format!("{:<12} ", "node-same");
    let strip_col = |l: &str| -> String {
        if let Some(rest) = l.strip_prefix(&node_col) {
            return rest.to_string();
        }
        l.strip_prefix(&format!("{:<12} ", "NODE"))
            .unwrap_or_else(|| panic!("no node column: {l}"))
            .to_string()
    };
    let blank_time = |l: &str| -> String {
        if l.starts_with("TIME") {
            l.to_string()
        } else {
            format!("{}{}", "T".repeat(15), &l[15..])
        }
    };

    // The gadget's own table.
    let (local, rem) = both(&["--max-events", "3"]);
    assert_eq!(local.len(), 4, "{local:?}");
    let rem: Vec<String> = rem.iter().map(|l| blank_time(&strip_col(l))).collect();
    let local: Vec<String> = local.iter().map(|l| blank_time(l)).collect();
    assert_eq!(local, rem);
    for (l, mark) in local[1..].iter().zip(&m) {
        assert!(l.ends_with(&format!("{} {mark}", prog.display())), "{l}");
    }

    // Columns of --fields, no timestamp: nothing to blank.
    let (local, rem) = both(&["--max-events", "3", "--fields", "pid,comm,filename,args"]);
    assert_eq!(local.len(), 4, "{local:?}");
    assert_eq!(local, rem.iter().map(|l| strip_col(l)).collect::<Vec<_>>());

    // JSON lines, every key: the node is already in every event.
    let ts = |l: &str| -> String {
        let i = l.find("\"timestamp\":\"").expect("a timestamp") + 13;
        let j = i + l[i..].find('"').expect("its end");
        format!("{}T{}", &l[..i], &l[j..])
    };
    let (local, rem) = both(&["--max-events", "3", "-o", "json"]);
    assert_eq!(local.len(), 3, "{local:?}");
    let local: Vec<String> = local
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            let node = v["node"].as_str().expect("node").to_string();
            ts(&l.replacen(&format!("\"node\":\"{node}\""), "\"node\":\"node-same\"", 1))
        })
        .collect();
    assert_eq!(local, rem.iter().map(|l| ts(l)).collect::<Vec<_>>());

    // JSON with --fields: the node key in front, the rest the same.
    let (local, rem) = both(&[
        "--max-events",
        "3",
        "-o",
        "json",
        "--fields",
        "pid,args,retval",
    ]);
    assert_eq!(local.len(), 3, "{local:?}");
    let rem: Vec<String> = rem
        .iter()
        .map(|l| {
            l.strip_prefix("{\"node\":\"node-same\",")
                .map(|r| format!("{{{r}"))
                .unwrap_or_else(|| panic!("no node key in front: {l}"))
        })
        .collect();
    assert_eq!(local, rem);

    // --summary: the node is the first key.
    let (local, rem) = both(&["--max-events", "3", "--summary", "1h"]);
    assert_eq!(local.len(), 3, "{local:?}");
    let cut = |l: &str| -> String {
        if l.starts_with("---") {
            "---".to_string()
        } else {
            // COUNT, then the NODE column (its width is the node's name).
            format!("{}{}", &l[..10], &l[10 + "node-same".len() + 2..])
        }
    };
    assert_eq!(
        local.iter().map(|l| cut_local(l)).collect::<Vec<_>>(),
        rem.iter().map(|l| cut(l)).collect::<Vec<_>>()
    );
    assert!(rem[2].starts_with("       3  node-same  "), "{rem:?}");
}

fn cut_local(l: &str) -> String {
    if l.starts_with("---") {
        "---".to_string()
    } else {
        l.to_string()
    }
}
