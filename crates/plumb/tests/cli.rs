//! End-to-end tests of the `plumb` binary: errors a user can meet, JSON
//! output, and clean exits (closed pipe, SIGTERM) that leave nothing loaded.
//! Tests that load BPF programs need root and fail without it.

mod support;

use plumb_core::testing::{assert_no_programs_left, marker, require_root};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{plumb, run};

#[test]
fn unknown_gadget_is_one_line_listing_the_known_ones() {
    let (code, _, err) = run(&["trace", "nosuch"]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("plumb: unknown gadget 'nosuch'; known gadgets: exec, open, tcp"),
        "{err}"
    );
}

#[test]
fn bad_filter_names_the_flag() {
    let (code, _, err) = run(&["trace", "exec", "--pid", "12x"]);
    assert_eq!(code, 2);
    assert_eq!(
        err.trim(),
        "plumb: bad value for --pid: '12x' is not a process id"
    );
    let (code, _, err) = run(&["trace", "open", "--cgroup", "/no-such-cgroup-here"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("plumb: bad value for --cgroup"), "{err}");
}

#[test]
fn without_privileges_the_missing_capability_is_named() {
    let out = plumb()
        .args(["trace", "exec", "--duration", "1s"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(
        err.trim(),
        "plumb: plumb needs root or the CAP_BPF capability (run with sudo, or grant CAP_BPF)"
    );
}

/// A plumb process that is killed (by its pid) if a test fails early.
struct Plumb(Child);

impl Drop for Plumb {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Plumb {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Plumb {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Start `plumb -v trace ...`, wait for its "attached" line, return the
/// child, its program ids and the rest of stderr.
fn start_traced(args: &[&str]) -> (Plumb, Vec<u32>, BufReader<std::process::ChildStderr>) {
    let spawned = plumb()
        .arg("-v")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plumb");
    let mut child = Plumb(spawned);
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("read stderr") > 0,
            "plumb exited before attaching"
        );
        if let Some(ids) = line.trim().split("BPF program ids ").nth(1) {
            let ids = ids.split(',').map(|i| i.parse().expect("id")).collect();
            return (child, ids, err);
        }
        assert!(Instant::now() < deadline, "no 'attached' line");
    }
}

#[test]
fn json_exec_event_has_every_required_key() {
    require_root();
    let (mut child, ids, mut err) =
        start_traced(&["trace", "exec", "-o", "json", "--comm", "true"]);
    let m = marker("cli");
    let mut t = Command::new("/bin/true").arg(&m).spawn().expect("true");
    let tpid = t.id();
    t.wait().expect("wait");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let v: serde_json::Value = loop {
        line.clear();
        assert!(out.read_line(&mut line).expect("read") > 0, "stdout closed");
        let v: serde_json::Value = serde_json::from_str(&line).expect("each line is JSON");
        if v["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == m.as_str()))
        {
            break v;
        }
    };
    // SAFETY: plain kill(2) of the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait plumb");
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("stderr");
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(
        rest.contains(" events, 0 lost"),
        "summary line missing: {rest}"
    );
    assert_no_programs_left(&ids);

    assert_eq!(v["type"], "exec");
    assert_eq!(v["pid"], tpid);
    assert_eq!(v["ppid"], std::process::id());
    assert_eq!(v["comm"], "true");
    assert_eq!(v["filename"], "/bin/true");
    assert_eq!(v["args"], serde_json::json!(["/bin/true", m]));
    assert_eq!(v["uid"], 0);
    let ts = v["timestamp"].as_str().expect("timestamp");
    humantime::parse_rfc3339(ts).expect("RFC 3339");
    assert_eq!(
        ts.len(),
        "2026-11-22T15:45:58.046847481Z".len(),
        "nanosecond precision: {ts}"
    );
    assert_eq!(
        v["node"],
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
    );
    assert!(v["cgroup_id"].as_u64().is_some());
    for k in [
        "container_id",
        "container_runtime",
        "pod_uid",
        "pod",
        "namespace",
    ] {
        assert!(v.get(k).is_some(), "key {k} missing");
    }
}

#[test]
fn closed_pipe_exits_zero_and_detaches() {
    require_root();
    let (mut child, ids, mut err) = start_traced(&["trace", "exec", "-o", "json"]);
    // Read one line then close our end, as `| head -1` does.
    let stdout = child.stdout.take().expect("stdout");
    let mut out = BufReader::new(stdout);
    let m = marker("pipe");
    for _ in 0..3 {
        Command::new("/bin/true").arg(&m).status().expect("true");
    }
    let mut line = String::new();
    out.read_line(&mut line).expect("one line");
    drop(out);
    // More events so plumb writes into the closed pipe.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        Command::new("/bin/true").arg(&m).status().expect("true");
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "plumb did not stop on a closed pipe"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("stderr");
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("(output closed)"), "{rest}");
    assert_no_programs_left(&ids);
}

#[test]
fn duration_ends_the_run_with_a_summary() {
    require_root();
    let t0 = Instant::now();
    let (code, out, err) = run(&[
        "trace",
        "open",
        "--duration",
        "1s",
        "--comm",
        "no-such-comm",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        out.lines()
            .next()
            .map(str::split_whitespace)
            .map(|w| w.collect::<Vec<_>>()),
        Some(vec!["TIME", "PID", "COMM", "FD", "ERR", "FLAGS", "PATH"])
    );
    assert_eq!(err.trim(), "plumb: 0 events, 0 lost");
}

#[test]
fn gadgets_lists_every_gadget_with_availability() {
    require_root();
    let (code, out, _) = run(&["gadgets", "-o", "json"]);
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    let known: Vec<&str> = plumb_core::gadgets::REGISTRY
        .iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, known);
    // Every hook these gadgets need exists on this machine's kernel.
    for r in &rows {
        assert_eq!(r["available"], true, "{r}");
        assert!(r["reason"].is_null(), "{r}");
    }
    // Without root, tracefs cannot be read: nothing is claimed either way.
    let out = plumb()
        .args(["gadgets", "-o", "json"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    assert_eq!(out.status.code(), Some(0));
    let exec: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|r| r["name"] == "exec")
        .expect("exec row");
    assert!(exec["available"].is_null(), "{exec}");
    assert!(
        exec["reason"]
            .as_str()
            .is_some_and(|r| r
                .starts_with("cannot tell whether tracepoint syscalls:sys_enter_execve exists")),
        "{exec}"
    );
}

/// A ring buffer of one page under an open storm while plumb's output pipe
/// is not read: records are lost, and every one is counted. What reached
/// the output plus what was reported lost is exactly what was generated.
#[test]
fn a_full_ring_buffer_loses_records_and_counts_each_one() {
    require_root();
    const OPENS: usize = 20_000;
    let m = marker("lost");
    let path = format!("/nonexistent-{m}");
    // The shell starts (and opens its libraries) before plumb watches it;
    // each loop turn is then exactly one failed openat of the marker path
    // (`read` is a regular builtin: a failed redirection does not end the shell).
    let mut sh = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "read go; i=0; while [ $i -lt {OPENS} ]; do read x < {path}; i=$((i+1)); done"
        ))
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
    let pid = sh.id().to_string();
    let (mut child, ids, mut err) = start_traced(&[
        "trace", "open", "-o", "json", "--pid", &pid, "--buffer", "4K",
    ]);
    // Nobody reads plumb's stdout yet: once its pipe is full, plumb blocks
    // and the one-page ring buffer overflows.
    std::io::Write::write_all(&mut sh.stdin.take().expect("stdin"), b"go\n").expect("go");
    sh.wait().expect("wait sh");
    let mut out = String::new();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        BufReader::new(stdout).read_to_string(&mut s).map(|_| s)
    });
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: plain kill(2) of the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait plumb");
    out.push_str(&reader.join().expect("reader").expect("read stdout"));
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("stderr");
    assert_eq!(status.code(), Some(0), "{rest}");
    assert_no_programs_left(&ids);

    let (mut delivered, mut lost_records, mut events) = (0usize, 0u64, 0usize);
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        match v["type"].as_str() {
            Some("open") => {
                events += 1;
                if v["path"] == path.as_str() {
                    assert_eq!(v["errno"], "ENOENT");
                    delivered += 1;
                }
            }
            Some("lost") => {
                assert_eq!(v["gadget"], "open");
                lost_records += v["count"].as_u64().expect("count");
            }
            other => panic!("unexpected record {other:?}: {line}"),
        }
    }
    let summary = rest
        .lines()
        .find(|l| l.contains(" events, "))
        .expect("summary line");
    assert!(
        summary.starts_with(&format!("plumb: {events} events, {lost_records} lost")),
        "{summary} vs {events} events and {lost_records} lost in the output"
    );
    assert!(
        lost_records > 0,
        "a one-page buffer must overflow: {summary}"
    );
    assert_eq!(delivered as u64 + lost_records, OPENS as u64, "{summary}");
}

/// Run plumb in a private mount namespace prepared by `setup` (shell
/// commands), so the host's mounts are never touched.
fn run_in_mount_ns(setup: &str, args: &[&str]) -> (i32, String) {
    let script = format!("{setup} && exec \"$0\" \"$@\"");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(env!("CARGO_BIN_EXE_plumb"))
        .args(args)
        .output()
        .expect("unshare");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_kernel_without_btf_is_one_line() {
    require_root();
    // An empty directory over /sys/kernel/btf: as on a kernel built without BTF.
    let (code, err) = run_in_mount_ns(
        "mount -t tmpfs plumb-no-btf /sys/kernel/btf",
        &["trace", "exec", "--duration", "1s"],
    );
    assert_eq!(code, 3, "{err}");
    assert_eq!(
        err.trim(),
        "plumb: this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); plumb needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8 or newer)"
    );
}

#[test]
fn tracefs_that_cannot_be_mounted_is_one_line() {
    require_root();
    // A /sys/kernel holding only the BTF file: no tracefs, no debugfs, and no
    // directory to mount tracefs on.
    let dir = std::env::temp_dir().join(format!("plumb-no-tracefs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let d = dir.display();
    let setup = format!(
        "mount -t tmpfs plumb-kernel {d} && mkdir {d}/btf && touch {d}/btf/vmlinux && \
         mount --bind /sys/kernel/btf/vmlinux {d}/btf/vmlinux && mount --rbind {d} /sys/kernel"
    );
    let (code, err) = run_in_mount_ns(&setup, &["trace", "open", "--duration", "1s"]);
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(code, 3, "{err}");
    assert_eq!(
        err.trim(),
        "plumb: tracefs is not mounted at /sys/kernel/tracing and could not be mounted: No such file or directory (os error 2)"
    );
}
