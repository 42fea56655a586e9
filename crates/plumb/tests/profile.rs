//! `plumb profile cpu` against programs this test builds and runs: a hot
//! function with frame pointers, a system-call workload, a process that
//! exits (and whose binary is deleted) before the profile ends, libraries
//! loaded with dlopen() while it is profiled, a stack deeper than the
//! kernel records, the pid, comm and cgroup filters, and plumb's own
//! threads left out unless `--include-self`. Root: these load BPF programs.
//!
//! The tests run one at a time (`support::serial`): each measures CPU
//! shares, and several spinning workloads at once on a small machine would
//! starve each other.

mod support;

use plumb_core::testing::{assert_no_programs_left, require_root};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{cgroup2_root, run, serial, TempDir};

const HOT_C: &str = r#"
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
__attribute__((noinline)) unsigned long plumb_hot_spin(unsigned long n)
{
	volatile unsigned long x = 0;
	for (unsigned long i = 0; i < n; i++)
		x += i * i;
	return x;
}
int main(int argc, char **argv)
{
	double end = now() + atof(argv[1]);
	unsigned long s = 0;
	while (now() < end)
		s += plumb_hot_spin(200000);
	return (int)(s & 1);
}
"#;

/// A child process killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until the plumb profiler `pid` samples: it holds a perf event and
/// a BPF link per CPU (there is no ready line to wait for). A profile's
/// --duration counts from then, so a workload started after this is
/// sampled from its start however slowly plumb came up.
fn wait_sampling(pid: u32) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (mut perf, mut links) = (0, 0);
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for e in rd.flatten() {
                match std::fs::read_link(e.path())
                    .ok()
                    .as_deref()
                    .and_then(Path::to_str)
                {
                    Some("anon_inode:[perf_event]") => perf += 1,
                    Some("anon_inode:bpf_link") => links += 1,
                    _ => {}
                }
            }
        }
        if perf >= cpus && links >= cpus {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "plumb {pid} not sampling after 60 s ({perf} perf events, {links} links)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Build the hot program as `dir/name` with frame pointers and symbols.
fn build_hot(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join("hot.c");
    std::fs::write(&src, HOT_C).expect("write source");
    let bin = dir.join(name);
    let st = Command::new("cc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(st.success(), "cc failed");
    bin
}

fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn workload"),
    )
}

/// Program ids from the `-v` summary line, and a check they are gone.
fn assert_detached(stderr: &str) {
    let ids: Vec<u32> = stderr
        .split("BPF program ids ")
        .nth(1)
        .and_then(|s| s.split(',').next().map(|_| s))
        .map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .take_while(|t| !t.is_empty())
                .map(|t| t.parse().unwrap())
                .collect()
        })
        .unwrap_or_default();
    assert!(!ids.is_empty(), "no program ids in: {stderr}");
    assert_no_programs_left(&ids);
}

fn frames(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect()
}

#[test]
fn hot_function_carries_the_samples_with_main_below_it() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("hot");
    let bin = build_hot(&dir.0, "plumbhot");
    let hot = spawn(Command::new(&bin).arg("600"));
    // The same program, running beside it: --pid leaves it out in the kernel.
    let other = spawn(Command::new(&bin).arg("600"));
    let pid = hot.0.id();
    std::thread::sleep(Duration::from_millis(200));
    let (code, out, err) = run(&[
        "-v",
        "profile",
        "cpu",
        "--pid",
        &pid.to_string(),
        "-d",
        "3s",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_detached(&err);
    let p: Value = serde_json::from_str(&out).expect("JSON profile");
    let stacks = p["stacks"].as_array().unwrap();
    assert!(!stacks.is_empty(), "no stacks: {out}");
    let mut total = 0;
    let mut hot_samples = 0;
    for s in stacks {
        // --pid: nothing but the program; single-threaded, so tid = pid.
        assert_eq!(s["pid"].as_u64(), Some(pid as u64), "{s}");
        assert_eq!(s["tid"].as_u64(), Some(pid as u64), "{s}");
        assert_eq!(s["comm"], "plumbhot");
        let n = s["count"].as_u64().unwrap();
        total += n;
        let f = frames(s);
        if f.last() == Some(&"plumb_hot_spin") {
            hot_samples += n;
            let main = f[f.len() - 2];
            assert_eq!(main, "main", "frame below the hot function: {f:?}");
            let m = &s["frames"].as_array().unwrap()[f.len() - 1]["module"];
            assert_eq!(m.as_str(), Some(bin.to_str().unwrap()));
        }
    }
    assert_eq!(p["samples"].as_u64(), Some(total));
    // One CPU busy at 99 Hz for 3 s: at most about 297 samples; fewer
    // when other work shares the machine's CPUs.
    assert!((30..=320).contains(&total), "{total} samples");
    assert!(
        hot_samples * 100 >= total * 90,
        "{hot_samples} of {total} in the hot function"
    );
    assert_eq!(p["lost"], 0);
    // The other program spun too, and the kernel left its samples out.
    assert!(
        p["filtered_in_kernel"].as_u64().unwrap() >= 30,
        "filtered in the kernel: {}",
        p["filtered_in_kernel"]
    );
    assert_eq!(
        p["filtered_in_user_space"], 0,
        "--pid is checked in the kernel"
    );
    assert_eq!(p["processes_captured"], 1, "only the target's mappings");
    assert!(
        err.contains(" samples in the profile, ") && err.contains(" expected (99 Hz x "),
        "{err}"
    );
    drop(other);
}

#[test]
fn syscall_workload_shows_the_kernel_functions() {
    require_root();
    let _serial = serial();
    let dd =
        spawn(Command::new("dd").args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=20000000"]));
    let pid = dd.0.id().to_string();
    std::thread::sleep(Duration::from_millis(100));
    let (code, out, err) = run(&[
        "profile",
        "cpu",
        "--pid",
        &pid,
        "-d",
        "2s",
        "--kernel-only",
        "-o",
        "folded",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty(), "no samples: {err}");
    let mut read = 0;
    let mut write = 0;
    for l in &lines {
        assert!(l.starts_with("dd;"), "{l}");
        // Samples taken in user mode have no kernel stack.
        if l.starts_with("dd;[user space] ") {
            continue;
        }
        // --kernel-only: no user frames (libc's read/write wrappers).
        assert!(!l.contains("libc"), "{l}");
        let n: u64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        if l.contains(";ksys_read;") || l.contains(";ksys_read ") {
            read += n;
            assert!(l.contains("entry_SYSCALL_64"), "{l}");
        }
        if l.contains(";ksys_write") {
            write += n;
        }
    }
    assert!(read > 0 && write > 0, "read {read} write {write}\n{out}");
}

#[test]
fn a_process_that_exits_before_the_end_is_still_symbolized() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("exit");
    let bin = build_hot(&dir.0, "plumbshort");
    let prof = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args([
            "profile",
            "cpu",
            "--comm",
            "plumbshort",
            "-d",
            "4s",
            "-o",
            "folded",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start plumb");
    wait_sampling(prof.id());
    let st = Command::new(&bin)
        .arg("1.5")
        .status()
        .expect("run short program");
    assert!(st.code().is_some());
    // Gone, and its binary with it: only what was captured remains.
    std::fs::remove_file(&bin).expect("delete the binary");
    let out = prof.wait_with_output().expect("plumb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let hot: u64 = text
        .lines()
        .filter(|l| l.starts_with("plumbshort;") && l.contains(";main;plumb_hot_spin "))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    // 1.5 s at 99 Hz: at most about 148 (fewer on a busy machine).
    assert!(hot >= 20, "{hot} symbolized samples\n{text}");
}

/// A cgroup v2 directory removed on drop (after its processes are gone).
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn cgroup_filter_yields_only_that_cgroups_samples() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("cg");
    let bin = build_hot(&dir.0, "plumbcg");
    let cg = Cgroup(cgroup2_root().join(format!("plumb-test-prof-{}", std::process::id())));
    std::fs::create_dir(&cg.0).expect("create cgroup");
    let inside = spawn(Command::new(&bin).arg("600"));
    let outside = spawn(Command::new(&bin).arg("600"));
    std::fs::write(cg.0.join("cgroup.procs"), inside.0.id().to_string()).expect("move into cgroup");
    let (code, out, err) = run(&[
        "profile",
        "cpu",
        "--cgroup",
        cg.0.to_str().unwrap(),
        "-d",
        "2s",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let p: Value = serde_json::from_str(&out).unwrap();
    let mut by_pid: HashMap<u64, u64> = HashMap::new();
    for s in p["stacks"].as_array().unwrap() {
        *by_pid.entry(s["pid"].as_u64().unwrap()).or_default() += s["count"].as_u64().unwrap();
    }
    assert_eq!(
        by_pid.keys().copied().collect::<Vec<_>>(),
        [inside.0.id() as u64],
        "{by_pid:?}"
    );
    // 2 s at 99 Hz is ~198 samples on an idle CPU; far fewer when other
    // work shares the machine (28 seen under a load average of 8).
    assert!(by_pid[&(inside.0.id() as u64)] >= 10, "{by_pid:?}");
    assert!(
        p["filtered_in_kernel"].as_u64().unwrap() >= 30,
        "the other process was sampled and left out in the kernel"
    );
    drop(inside);
    drop(outside);
}

#[test]
fn outputs_svg_pprof_and_a_diff_and_sigterm_still_writes() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("out");
    let bin = build_hot(&dir.0, "plumbout");
    // Runs until the test ends and drops it, however slow the profiles are.
    let hot = spawn(Command::new(&bin).arg("600"));
    let pid = hot.0.id().to_string();
    // SVG without --output: a file in the working directory, its path printed.
    let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["profile", "cpu", "--pid", &pid, "-d", "1s", "-o", "svg"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = dir.0.join(String::from_utf8_lossy(&out.stdout).trim());
    let svg = std::fs::read_to_string(&path).expect("svg written where it said");
    assert!(
        svg.contains("<svg") && svg.contains("plumb_hot_spin"),
        "flame graph without the hot function"
    );
    // pprof by extension, folded explicitly; diff of the two agrees (same program).
    let pb = dir.0.join("a.pb.gz");
    let (code, _, err) = run(&[
        "profile",
        "cpu",
        "--pid",
        &pid,
        "-d",
        "1s",
        "--output",
        pb.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(&std::fs::read(&pb).unwrap()[..2], &[0x1f, 0x8b]);
    let folded = dir.0.join("b.folded");
    let (code, _, err) = run(&[
        "profile",
        "cpu",
        "--pid",
        &pid,
        "-d",
        "1s",
        "-o",
        "folded",
        "--output",
        folded.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, table, err) = run(&[
        "profile",
        "diff",
        pb.to_str().unwrap(),
        folded.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let row = table
        .lines()
        .find(|l| l.ends_with(" plumb_hot_spin"))
        .expect(&table);
    // The same program on both sides: the hot function is in (nearly) all
    // stacks of each, and its self share moves only by the few samples
    // taken in the kernel on top of it.
    let cols: Vec<f64> = row
        .split_whitespace()
        .take(6)
        .map(|c| c.trim_end_matches('%').parse().unwrap())
        .collect();
    assert!(cols[4] >= 90.0 && cols[5] >= 90.0, "total shares: {row}");
    assert!(cols[0].abs() < 15.0, "self share change: {row}");
    // The differential flame graph in BEFORE's shape, to a file.
    let dsvg = dir.0.join("d.svg");
    let (code, printed, err) = run(&[
        "profile",
        "diff",
        pb.to_str().unwrap(),
        folded.to_str().unwrap(),
        "-o",
        "svg",
        "--shape",
        "before",
        "--output",
        dsvg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(printed.trim(), dsvg.to_str().unwrap());
    let svg = std::fs::read_to_string(&dsvg).unwrap();
    assert!(
        svg.contains("widths: BEFORE") && svg.contains("plumb_hot_spin"),
        "{svg}"
    );

    // SIGTERM ends a long profile early; the profile is still written.
    let child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args([
            "-v", "profile", "cpu", "--pid", &pid, "-d", "60s", "-o", "folded",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_sampling(child.id());
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling the child we started, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("plumbout;"),
        "no stacks after SIGTERM"
    );
    assert!(err.contains(" samples in the profile, "), "{err}");
    assert_detached(&err);
}

#[test]
fn bad_input_is_one_line_and_a_usage_exit_code() {
    let dir = TempDir::new("bad");
    let garbage = dir.0.join("garbage");
    std::fs::write(&garbage, "garbage\n").unwrap();
    let (code, _, err) = run(&[
        "profile",
        "diff",
        garbage.to_str().unwrap(),
        garbage.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "plumb: {}: line 1: expected 'frame;frame;... count'",
            garbage.display()
        )
    );
    let (code, _, err) = run(&["profile", "cpu", "--frequency", "0"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["profile", "cpu", "--pid", "x1"]);
    assert_eq!(
        (code, err.trim()),
        (2, "plumb: bad value for --pid: 'x1' is not a process id")
    );
}

/// Build `dir/name` from C source with frame pointers and symbols.
fn build_c(dir: &Path, name: &str, source: &str, extra: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write source");
    let out = dir.join(name);
    let st = Command::new("cc")
        .args(["-g", "-fno-omit-frame-pointer"])
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(st.success(), "cc failed for {name}");
    out
}

/// Samples per leaf function, from a JSON profile.
fn leaves(p: &Value) -> HashMap<String, u64> {
    let mut by_leaf = HashMap::new();
    for s in p["stacks"].as_array().unwrap() {
        if let Some(leaf) = frames(s).last() {
            *by_leaf.entry(leaf.to_string()).or_default() += s["count"].as_u64().unwrap();
        }
    }
    by_leaf
}

#[test]
fn comm_filter_captures_only_the_wanted_process() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("comm");
    let want = build_hot(&dir.0, "plumbwant");
    let other = build_hot(&dir.0, "plumbother");
    let wanted = spawn(Command::new(&want).arg("600"));
    let _other = spawn(Command::new(&other).arg("600"));
    std::thread::sleep(Duration::from_millis(200));
    let (code, out, err) = run(&[
        "-v",
        "profile",
        "cpu",
        "--comm",
        "plumbwant",
        "-d",
        "2s",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let p: Value = serde_json::from_str(&out).expect("JSON profile");
    let mut total = 0;
    for s in p["stacks"].as_array().unwrap() {
        assert_eq!(s["comm"], "plumbwant", "{s}");
        assert_eq!(s["pid"].as_u64(), Some(wanted.0.id() as u64), "{s}");
        total += s["count"].as_u64().unwrap();
    }
    assert!(total >= 30, "{total} samples");
    // The summary's samples are the profile's, not the kernel's aggregate.
    assert_eq!(p["samples"].as_u64(), Some(total));
    let left_out =
        p["filtered_in_kernel"].as_u64().unwrap() + p["filtered_in_user_space"].as_u64().unwrap();
    assert!(
        left_out >= 30,
        "plumbother was sampled and left out: {left_out}"
    );
    // Mappings were captured for the wanted process only: the other one
    // (and everything else running here) was never opened.
    assert_eq!(p["processes_captured"], 1, "{}", p["processes_captured"]);
    assert!(err.contains("mappings captured for 1 processes"), "{err}");
}

/// A program that spins in its own function, then dlopen()s a library and
/// spins in the library's function. argv: library, seconds before dlopen,
/// seconds in all.
const DLOPEN_C: &str = r#"
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
__attribute__((noinline)) unsigned long plumb_pre_spin(unsigned long n)
{
	volatile unsigned long x = 0;
	for (unsigned long i = 0; i < n; i++)
		x += i ^ (i >> 3);
	return x;
}
int main(int argc, char **argv)
{
	double t0 = now();
	unsigned long s = 0;
	if (argc < 4)
		return 4;
	while (now() < t0 + atof(argv[2]))
		s += plumb_pre_spin(200000);
	void *h = dlopen(argv[1], RTLD_NOW);
	if (!h)
		return 2;
	unsigned long (*spin)(unsigned long) = (unsigned long (*)(unsigned long))dlsym(h, "plumb_dl_spin");
	if (!spin)
		return 3;
	while (now() < t0 + atof(argv[3]))
		s += spin(200000);
	return (int)(s & 1);
}
"#;

const DL_LIB_C: &str = r#"
__attribute__((noinline)) unsigned long plumb_dl_spin(unsigned long n)
{
	volatile unsigned long x = 0;
	for (unsigned long i = 0; i < n; i++)
		x += i * i;
	return x;
}
"#;

fn build_dlopen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let lib = build_c(dir, "libplumbdl.so", DL_LIB_C, &["-O1", "-shared", "-fPIC"]);
    let bin = build_c(dir, name, DLOPEN_C, &["-O1", "-ldl"]);
    (bin, lib)
}

/// The library's code was never shown as an offset or an address.
fn assert_no_unnamed_library_frames(by_leaf: &HashMap<String, u64>) {
    let unnamed: Vec<&String> = by_leaf
        .keys()
        .filter(|l| l.starts_with("libplumbdl.so+") || l.starts_with("[unknown]@"))
        .collect();
    assert!(unnamed.is_empty(), "{unnamed:?} in {by_leaf:?}");
}

/// Run plumb in the background, started before the workload.
fn plumb_background(args: &[&str]) -> Child {
    support::plumb()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start plumb")
}

fn finish(child: Child) -> Value {
    let out = child.wait_with_output().expect("plumb");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).expect("JSON profile")
}

/// New process images, one after another, for 4 s: each is announced to
/// the profiler, which captures its mappings, so plumb's own threads work
/// while it samples.
const NEW_IMAGES: &str = "end=$(($(date +%s) + 4)); while [ $(date +%s) -lt $end ]; do \
     dd if=/dev/zero of=/dev/null bs=64k count=100 2>/dev/null; done";

/// Samples of process `pid` in a JSON profile.
fn samples_of(pid: u32, p: &Value) -> u64 {
    p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
        .map(|s| s["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn plumbs_own_threads_are_left_out_in_the_kernel_unless_asked_for() {
    require_root();
    let _serial = serial();
    let (code, help, err) = run(&["profile", "cpu", "--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        help.contains("plumb's own threads (the agent's, for a remote profile) are left")
            && help.contains("--include-self"),
        "{help}"
    );
    let profile = |extra: &[&str]| -> (u32, Value) {
        let mut args = vec!["profile", "cpu", "-F", "999", "-d", "3s", "-o", "json"];
        args.extend_from_slice(extra);
        let prof = plumb_background(&args);
        let pid = prof.id();
        wait_sampling(pid);
        let _w = spawn(Command::new("sh").args(["-c", NEW_IMAGES]));
        (pid, finish(prof))
    };
    // No filter: everything is sampled, except plumb itself.
    let (pid, p) = profile(&[]);
    assert_eq!(samples_of(pid, &p), 0, "plumb {pid} is in the profile");
    assert!(p["samples"].as_u64().unwrap() > 0, "nothing sampled");
    assert!(
        p["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["comm"] == "dd"),
        "the workload is in the profile"
    );
    let left_out = p["filtered_in_kernel"].as_u64().unwrap();
    assert!(
        left_out > 0,
        "plumb {pid} was never sampled: not busy enough"
    );
    assert_eq!(p["filtered_in_user_space"], 0);
    // --include-self: nothing at all is left out.
    let (pid, p) = profile(&["--include-self"]);
    assert_eq!(p["filtered_in_kernel"], 0, "no filter, nothing left out");
    let kept = samples_of(pid, &p);
    assert!(kept > 0, "plumb {pid} kept none of its samples");
    let comms: std::collections::BTreeSet<&str> = p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
        .map(|s| s["comm"].as_str().unwrap())
        .collect();
    assert!(comms.contains("plumb"), "{comms:?}");
}

#[test]
fn a_library_dlopened_by_a_running_process_is_symbolized() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("dlopen");
    let (bin, lib) = build_dlopen(&dir.0, "plumbdl");
    let prof = plumb_background(&[
        "profile", "cpu", "--comm", "plumbdl", "-d", "4s", "-o", "json",
    ]);
    wait_sampling(prof.id());
    // Still running when the profile ends.
    let _w = spawn(Command::new(&bin).arg(&lib).args(["1.0", "8"]));
    let p = finish(prof);
    let by_leaf = leaves(&p);
    // Sampled (and so captured) before it loaded the library...
    assert!(
        by_leaf.get("plumb_pre_spin").is_some_and(|&n| n > 0),
        "{by_leaf:?}"
    );
    // ...and the library's function is named all the same.
    let dl = by_leaf.get("plumb_dl_spin").copied().unwrap_or(0);
    assert!(dl >= 20, "{dl} samples in plumb_dl_spin: {by_leaf:?}");
    assert_no_unnamed_library_frames(&by_leaf);
    let module = p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| frames(s).last() == Some(&"plumb_dl_spin"))
        .and_then(|s| s["frames"].as_array().unwrap().last().cloned())
        .unwrap();
    assert_eq!(module["module"].as_str(), Some(lib.to_str().unwrap()));
}

#[test]
fn a_library_dlopened_by_a_process_that_exits_before_the_end_is_symbolized() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("dlexit");
    let (bin, lib) = build_dlopen(&dir.0, "plumbdlx");
    let prof = plumb_background(&[
        "profile", "cpu", "--comm", "plumbdlx", "-d", "5s", "-o", "json",
    ]);
    wait_sampling(prof.id());
    let st = Command::new(&bin)
        .arg(&lib)
        .args(["1.0", "2.5"])
        .status()
        .expect("run the dlopen program");
    // 2: dlopen failed, 3: dlsym failed; else the low bit of a sum.
    assert!(matches!(st.code(), Some(0 | 1)), "{st}");
    // Gone, and its library with it: only what was captured remains.
    std::fs::remove_file(&lib).expect("delete the library");
    let p = finish(prof);
    let by_leaf = leaves(&p);
    assert!(
        by_leaf.get("plumb_pre_spin").is_some_and(|&n| n > 0),
        "{by_leaf:?}"
    );
    let dl = by_leaf.get("plumb_dl_spin").copied().unwrap_or(0);
    // 1.5 s in the library at 99 Hz: at most about 148.
    assert!(dl >= 20, "{dl} samples in plumb_dl_spin: {by_leaf:?}");
    assert_no_unnamed_library_frames(&by_leaf);
}

/// Recursion 200 calls deep, spinning at the bottom (-O0: every call
/// keeps its frame).
const DEEP_C: &str = r#"
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
__attribute__((noinline)) unsigned long plumb_deep(int depth, double end)
{
	volatile unsigned long x = 0;
	if (depth > 0)
		return plumb_deep(depth - 1, end) + 1;
	while (now() < end)
		for (unsigned long i = 0; i < 100000; i++)
			x += i;
	return x;
}
int main(int argc, char **argv)
{
	return (int)(plumb_deep(200, now() + atof(argv[1])) & 1);
}
"#;

#[test]
fn stacks_deeper_than_the_kernel_records_are_counted_as_truncated() {
    require_root();
    let _serial = serial();
    let dir = TempDir::new("deep");
    let bin = build_c(&dir.0, "plumbdeep", DEEP_C, &["-O0"]);
    let deep = spawn(Command::new(&bin).arg("600"));
    std::thread::sleep(Duration::from_millis(200));
    let pid = deep.0.id().to_string();
    let (code, out, err) = run(&["profile", "cpu", "--pid", &pid, "-d", "2s", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let p: Value = serde_json::from_str(&out).unwrap();
    let mut cut = 0;
    for s in p["stacks"].as_array().unwrap() {
        let f = frames(s);
        if f.first() == Some(&"[truncated]") {
            cut += s["count"].as_u64().unwrap();
            // The frames kept are the innermost 127: the recursion, and at
            // most a few below it (now(), the vDSO, kernel frames).
            assert!(f.len() >= 128, "{f:?}");
            assert!(f[1..=100].iter().all(|n| *n == "plumb_deep"), "{f:?}");
        }
    }
    assert!(cut >= 30, "{cut} truncated samples");
    assert_eq!(p["stacks_truncated"].as_u64(), Some(cut));
    assert_eq!(p["max_stack_depth"], 127);
    assert!(
        err.contains(&format!(", {cut} samples with a stack cut at 127 frames")),
        "{err}"
    );
}
