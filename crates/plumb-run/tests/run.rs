//! Root tests of `plumb run`: small CO-RE objects built from tests/bpf
//! (by this crate's build script, as a user builds theirs) are loaded,
//! attached where the selection says, and their maps checked against the
//! traffic and the system calls each test makes, exactly, in the columns,
//! JSON and Prometheus outputs. Errors are checked as the one line a user
//! reads, through the binary.

use plumb_core::testing::{assert_no_programs_left, patience, require_root};
use plumb_netlab::Lab;
use plumb_run::{Error, Format, Options, Summary, Target};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

const PROTO_COUNT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/proto_count.bpf.o"));
const SYS_COUNT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sys_count.bpf.o"));
const IF_COUNT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/if_count.bpf.o"));
const REFUSED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/refused.bpf.o"));
const KPROBE_COUNT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kprobe_count.bpf.o"));
const NO_PROGRAMS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/no_programs.bpf.o"));
const CG_COUNT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cg_count.bpf.o"));
const UPROBE_COUNT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uprobe_count.bpf.o"));
const FENTRY_COUNT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fentry_count.bpf.o"));

/// A temporary directory holding the objects as files, removed on drop.
struct Objects(PathBuf);

impl Objects {
    fn new() -> Objects {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("plumb-run-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in [
            ("proto_count.bpf.o", PROTO_COUNT),
            ("sys_count.bpf.o", SYS_COUNT),
            ("if_count.bpf.o", IF_COUNT),
            ("refused.bpf.o", REFUSED),
            ("kprobe_count.bpf.o", KPROBE_COUNT),
            ("no_programs.bpf.o", NO_PROGRAMS),
            ("cg_count.bpf.o", CG_COUNT),
            ("uprobe_count.bpf.o", UPROBE_COUNT),
            ("fentry_count.bpf.o", FENTRY_COUNT),
        ] {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        Objects(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Objects {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn options(object: PathBuf, target: Target, format: Format) -> Options {
    Options {
        object,
        target,
        attach: Vec::new(),
        set: Vec::new(),
        duration: None,
        interval: None,
        format,
        max_series: 1000,
        node: "test-node".into(),
        width: None,
    }
}

struct Ran {
    summary: Summary,
    out: String,
    notes: String,
}

/// Run `opts` on a thread; once everything is attached, do `during`, then
/// stop the run and return what it printed. Checks nothing is left loaded.
fn run_while(opts: Options, during: impl FnOnce(&Summary)) -> Ran {
    let stop = Arc::new(AtomicBool::new(false));
    let out = Shared::default();
    let (tx, rx) = mpsc::channel();
    let (s2, o2) = (stop.clone(), out.clone());
    let th = std::thread::spawn(move || {
        let mut notes = Vec::new();
        let mut ready = |s: &Summary| {
            let _ = tx.send(s.clone());
        };
        let r = plumb_run::run(&opts, &s2, o2, &mut notes, &mut ready);
        (r, String::from_utf8_lossy(&notes).into_owned())
    });
    let started = rx.recv_timeout(patience(Duration::from_secs(60)));
    if let Ok(s) = &started {
        during(s);
    }
    stop.store(true, Ordering::Relaxed);
    let (r, notes) = th.join().expect("the run panicked");
    let summary = r.unwrap_or_else(|e| panic!("plumb run failed: {e}\nnotes: {notes}"));
    assert_no_programs_left(&summary.prog_ids);
    Ran {
        summary,
        out: out.text(),
        notes,
    }
}

/// `count` pings from the pod's node to the pod, each answered.
fn ping(lab: &Lab, node: usize, ip: std::net::Ipv4Addr, count: u32) {
    lab.node(node)
        .sh(&format!("ping -q -n -c {count} -i 0.2 -W 2 {ip}"))
        .expect("ping the pod");
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_protocol_counter_counts_a_pods_pings_in_every_output() {
    require_root();
    let objects = Objects::new();
    let mut lab = Lab::new("run-proto").unwrap();
    let pod = lab.add_pod("proto").unwrap();
    let target = Target {
        what: "lab pod".into(),
        netns: Some(pod.ns.path()),
        ..Target::default()
    };
    const PINGS: u32 = 5;
    // In the pod's namespace the socket sees each echo request come in and
    // each reply go out: 2 ICMP packets per ping, 98 bytes each (Ethernet,
    // IPv4, ICMP header and ping's 56 bytes).
    let (packets, bytes) = (2 * PINGS as u64, 2 * PINGS as u64 * 98);
    for format in [Format::Columns, Format::Json, Format::Prometheus] {
        let ran = run_while(
            options(objects.path("proto_count.bpf.o"), target.clone(), format),
            |_| ping(&lab, 0, pod.ip, PINGS),
        );
        assert!(
            ran.notes.contains(&format!(
                "count_protocols: socket filter on a packet socket in {}",
                pod.ns.path().display()
            )),
            "{}",
            ran.notes
        );
        match format {
            Format::Columns => {
                let row = ran
                    .out
                    .lines()
                    .find(|l| l.split_whitespace().next() == Some("1"))
                    .unwrap_or_else(|| panic!("no proto 1 row:\n{}", ran.out));
                assert_eq!(
                    row.split_whitespace().collect::<Vec<_>>(),
                    ["1", &packets.to_string(), &bytes.to_string()],
                    "{}",
                    ran.out
                );
                assert!(ran.out.contains("PROTO    PACKETS  BYTES"), "{}", ran.out);
            }
            Format::Json => {
                let lines = json_lines(&ran.out);
                let icmp = lines
                    .iter()
                    .find(|l| l["key"]["proto"] == json!(1))
                    .unwrap_or_else(|| panic!("{}", ran.out));
                assert_eq!(
                    icmp,
                    &json!({"node": "test-node", "object": "proto_count", "map": "proto_count",
                            "key": {"proto": 1}, "value": {"packets": packets, "bytes": bytes}})
                );
            }
            Format::Prometheus => {
                assert!(
                    ran.out.contains(&format!(
                        "proto_count_proto_count_packets{{proto=\"1\"}} {packets}\n"
                    )),
                    "{}",
                    ran.out
                );
                assert!(
                    ran.out.contains(&format!(
                        "proto_count_proto_count_bytes{{proto=\"1\"}} {bytes}\n"
                    )),
                    "{}",
                    ran.out
                );
                promtool_accepts(&ran.out);
            }
        }
    }
}

fn promtool_accepts(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = p.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A shell that, once told through `fifo`, writes `n` times `len` bytes to /dev/null.
fn writer(dir: &Path, tag: &str, n: u32, len: usize) -> (std::process::Child, PathBuf) {
    let fifo = dir.join(format!("go-{tag}"));
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let text = "x".repeat(len);
    let script = format!("read go < '{}'; i=0; while [ $i -lt {n} ]; do printf '%s' {text} > /dev/null; i=$((i+1)); done", fifo.display());
    let child = Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    (child, fifo)
}

/// Open `fifo` for the child reading it and say go; fail (not hang) if
/// the child is gone.
fn tell(fifo: &Path, child: &mut std::process::Child) {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = std::time::Instant::now() + patience(Duration::from_secs(20));
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(mut f) => {
                f.write_all(b"go\n").unwrap();
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if let Some(st) = child.try_wait().unwrap() {
                    panic!("the writer ended before it was told to go: {st}");
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the writer never opened {}",
                    fifo.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{}: {e}", fifo.display()),
        }
    }
}

#[test]
fn a_tracepoint_counter_with_a_struct_key_a_histogram_a_per_cpu_map_and_records() {
    require_root();
    let objects = Objects::new();
    const WRITES: u32 = 7;
    const LEN: usize = 19; // log2 bucket 4: 16..31
    for format in [Format::Json, Format::Columns, Format::Prometheus] {
        let (mut child, fifo) = writer(&objects.0, &format!("{format:?}"), WRITES, LEN);
        let pid = child.id();
        let target = Target {
            what: "process".into(),
            pid: Some(pid),
            ..Target::default()
        };
        let mut opts = options(objects.path("sys_count.bpf.o"), target.clone(), format);
        opts.set = vec![("marker_len".into(), LEN.to_string())];
        // Columns also print every 150 ms: the run lasts longer than that.
        if format == Format::Columns {
            opts.interval = Some(Duration::from_millis(150));
        }
        let ran = run_while(opts, |s| {
            assert!(
                s.globals.contains(&format!("plumb_target_pid={pid}")),
                "{:?}",
                s.globals
            );
            tell(&fifo, &mut child);
            assert!(child.wait().unwrap().success());
            if format == Format::Columns {
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        assert!(
            ran.notes
                .contains("map raw_writes has no BTF for its key or value: shown as bytes"),
            "{}",
            ran.notes
        );
        assert!(
            ran.notes
                .contains("map stacks: a StackTrace map is not decoded; it is left out"),
            "{}",
            ran.notes
        );
        let pid_s = pid.to_string();
        match format {
            Format::Json => {
                let lines = json_lines(&ran.out);
                let find = |map: &str| {
                    lines
                        .iter()
                        .filter(|l| l["map"] == json!(map))
                        .cloned()
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    find("writes"),
                    vec![
                        json!({"node": "test-node", "object": "sys_count", "map": "writes",
                    "key": {"pid": pid, "comm": "sh", "fd": 1}, "value": WRITES})
                    ]
                );
                assert_eq!(
                    find("writes_percpu"),
                    vec![
                        json!({"node": "test-node", "object": "sys_count", "map": "writes_percpu",
                    "key": {"key": pid}, "value": WRITES})
                    ]
                );
                assert_eq!(
                    find("write_sizes"),
                    vec![
                        json!({"node": "test-node", "object": "sys_count", "map": "write_sizes",
                    "key": {"key": 4}, "value": WRITES})
                    ]
                );
                let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                assert_eq!(
                    find("raw_writes"),
                    vec![
                        json!({"node": "test-node", "object": "sys_count", "map": "raw_writes",
                    "key": {"key": hex(&pid.to_le_bytes())}, "value": hex(&u64::from(WRITES).to_le_bytes())})
                    ]
                );
                for map in ["events", "perf_events"] {
                    let recs = find(map);
                    assert_eq!(recs.len(), WRITES as usize, "{map}: {}", ran.out);
                    for r in recs {
                        assert_eq!(
                            r["record"],
                            json!({"pid": pid, "fd": 1, "count": LEN, "comm": "sh"})
                        );
                    }
                }
                assert_eq!(
                    (ran.summary.records, ran.summary.lost),
                    (2 * WRITES as u64, 0)
                );
            }
            Format::Columns => {
                // Printed every interval and once at the end: the last is read.
                let dumps = ran
                    .out
                    .lines()
                    .filter(|l| l.starts_with("map writes at "))
                    .count();
                assert!(
                    dumps >= 3,
                    "{dumps} readings in 650 ms at a 150 ms interval:\n{}",
                    ran.out
                );
                let row = |map: &str| -> Vec<String> {
                    let lines: Vec<&str> = ran.out.lines().collect();
                    let at = lines
                        .iter()
                        .rposition(|l| l.starts_with(&format!("map {map} at")))
                        .unwrap();
                    lines
                        .get(at + 2)
                        .copied()
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_string)
                        .collect()
                };
                assert_eq!(
                    row("writes"),
                    [pid_s.as_str(), "sh", "1", &WRITES.to_string()],
                    "{}",
                    ran.out
                );
                assert_eq!(
                    row("writes_percpu"),
                    [pid_s.as_str(), &WRITES.to_string()],
                    "{}",
                    ran.out
                );
                let hist = row("write_sizes");
                assert_eq!(
                    &hist[..3],
                    ["[16,", "31]", &WRITES.to_string()],
                    "{}",
                    ran.out
                );
                assert!(
                    hist[3].starts_with("|@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|"),
                    "{}",
                    ran.out
                );
                let recs: Vec<&str> = ran
                    .out
                    .lines()
                    .filter(|l| l.starts_with("events "))
                    .collect();
                assert_eq!(recs.len(), WRITES as usize, "{}", ran.out);
                assert_eq!(
                    recs[0].split_whitespace().collect::<Vec<_>>(),
                    ["events", &pid_s, "1", &LEN.to_string(), "sh"]
                );
            }
            Format::Prometheus => {
                assert!(
                    ran.out.contains(&format!(
                        "sys_count_writes{{pid=\"{pid}\",comm=\"sh\",fd=\"1\"}} {WRITES}\n"
                    )),
                    "{}",
                    ran.out
                );
                assert!(
                    ran.out.contains(&format!(
                        "sys_count_writes_percpu{{key=\"{pid}\"}} {WRITES}\n"
                    )),
                    "{}",
                    ran.out
                );
                assert!(
                    ran.out.contains(&format!(
                        "sys_count_write_sizes_bucket{{le=\"31\"}} {WRITES}\n"
                    )),
                    "{}",
                    ran.out
                );
                assert!(
                    ran.out
                        .contains(&format!("sys_count_write_sizes_count {WRITES}\n")),
                    "{}",
                    ran.out
                );
                promtool_accepts(&ran.out);
            }
        }
    }
}

#[test]
fn xdp_and_tc_counters_on_a_pods_interface_are_taken_off_after() {
    require_root();
    let objects = Objects::new();
    let mut lab = Lab::new("run-if").unwrap();
    let pod = lab.add_pod("ifc").unwrap();
    let target = Target {
        what: "lab pod".into(),
        netns: Some(pod.ns.path()),
        ..Target::default()
    };
    const PINGS: u32 = 4;
    let ran = run_while(
        options(objects.path("if_count.bpf.o"), target, Format::Json),
        |_| {
            let qdiscs = pod.ns.sh("tc qdisc show").unwrap();
            assert!(qdiscs.contains("clsact"), "{qdiscs}");
            ping(&lab, 0, pod.ip, PINGS)
        },
    );
    let ifaces: Vec<&String> = ran.summary.attached.iter().collect();
    assert_eq!(ifaces.len(), 2, "{ifaces:?}");
    assert!(ifaces[0].starts_with("xdp_count: XDP on "), "{ifaces:?}");
    assert!(
        ifaces[1].starts_with("tc_count: TC ingress on "),
        "{ifaces:?}"
    );
    let lines = json_lines(&ran.out);
    for map in ["xdp_protos", "tc_protos"] {
        // Only echo requests come in: one ICMP packet per ping. (The
        // node's IGMP reports come in too; they are not ours to count.)
        let icmp: Vec<&Value> = lines
            .iter()
            .filter(|l| l["map"] == json!(map) && l["key"] == json!({"key": 1}))
            .collect();
        assert_eq!(icmp.len(), 1, "{}", ran.out);
        assert_eq!(icmp[0]["value"], json!(PINGS), "{}", ran.out);
    }
    let qdiscs = pod.ns.sh("tc qdisc show").unwrap();
    assert!(
        !qdiscs.contains("clsact"),
        "a clsact qdisc was left: {qdiscs}"
    );
    let links = pod.ns.sh("ip -d link show").unwrap();
    assert!(
        !links.contains("prog/xdp"),
        "an XDP program was left: {links}"
    );
}

/// A cgroup of the test's own below the cgroup v2 root, removed on drop
/// (with the processes the test put there).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(tag: &str) -> TestCgroup {
        let root = plumb_netlab::cgroup::v2_root().expect("a cgroup v2 hierarchy");
        let dir = root.join(format!("plumb-run-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        plumb_netlab::cgroup::remove_tree(&self.0);
    }
}

#[test]
fn a_cgroup_program_counts_what_the_selected_cgroup_sends() {
    require_root();
    let objects = Objects::new();
    let mut lab = Lab::new("run-cg").unwrap();
    let a = lab.add_pod("cga").unwrap();
    let b = lab.add_pod("cgb").unwrap();
    let cg = TestCgroup::new("cg");
    let target = Target {
        what: "cgroup".into(),
        cgroup: Some(cg.0.clone()),
        ..Target::default()
    };
    const PINGS: u32 = 3;
    let ran = run_while(
        options(objects.path("cg_count.bpf.o"), target, Format::Json),
        |_| {
            // A shell in pod a moves itself into the cgroup, then pings pod b:
            // the cgroup sends one ICMP echo request per ping.
            let procs = cg.0.join("cgroup.procs");
            a.ns.sh(&format!(
                "echo $$ > '{}' && ping -q -n -c {PINGS} -i 0.2 -W 2 {}",
                procs.display(),
                b.ip
            ))
            .expect("ping from the cgroup");
        },
    );
    assert_eq!(
        ran.summary.attached,
        [format!("cg_egress: cgroup {}", cg.0.display())]
    );
    let lines = json_lines(&ran.out);
    assert_eq!(
        lines,
        vec![
            json!({"node": "test-node", "object": "cg_count", "map": "egress_protos",
        "key": {"key": 1}, "value": PINGS})
        ],
        "{}",
        ran.out
    );
}

/// The function the uprobe test probes, in this test executable.
#[no_mangle]
#[inline(never)]
pub extern "C" fn plumb_run_test_marker(x: u64) -> u64 {
    std::hint::black_box(x.wrapping_mul(3))
}

#[test]
fn a_uprobe_goes_where_attach_says_and_counts_each_call() {
    require_root();
    let objects = Objects::new();
    let exe = std::env::current_exe().unwrap();
    const CALLS: u64 = 11;
    let mut opts = options(
        objects.path("uprobe_count.bpf.o"),
        Target::default(),
        Format::Json,
    );
    opts.attach = vec![(
        "uprobe".into(),
        format!("{}:plumb_run_test_marker", exe.display()),
    )];
    let ran = run_while(opts, |_| {
        for i in 0..CALLS {
            plumb_run_test_marker(i);
        }
    });
    assert_eq!(
        ran.summary.attached,
        [format!("on_call: {}:plumb_run_test_marker", exe.display())]
    );
    let lines = json_lines(&ran.out);
    assert_eq!(
        lines,
        vec![
            json!({"node": "test-node", "object": "uprobe_count", "map": "calls",
        "key": {"key": std::process::id()}, "value": CALLS})
        ],
        "{}",
        ran.out
    );
}

/// The plumb binary this workspace built (next to the test executables).
fn plumb() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("plumb");
    assert!(
        bin.exists(),
        "{} is not built: cargo test --workspace builds it",
        bin.display()
    );
    bin
}

fn plumb_fails(args: &[&str]) -> (i32, String) {
    let o = Command::new(plumb())
        .arg("run")
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "plumb run {args:?} succeeded: {err}");
    assert!(!err.contains("panicked"), "{err}");
    (o.status.code().unwrap_or(-1), err)
}

#[test]
fn bad_objects_and_arguments_are_one_clear_line() {
    require_root();
    let objects = Objects::new();
    let text = objects.path("notes.txt");
    std::fs::write(&text, "not an object\n").unwrap();
    let p = |n: &str| objects.path(n).to_string_lossy().into_owned();
    let t = text.to_string_lossy().into_owned();

    let (code, err) = plumb_fails(&[&t]);
    assert_eq!(
        (code, err.trim()),
        (
            2,
            format!("plumb: {t} is not an ELF file (a BPF object is built with clang -target bpf)")
                .as_str()
        )
    );

    let (code, err) = plumb_fails(&["/bin/true"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("plumb: /bin/true is not a BPF object libbpf can open: "),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let (code, err) = plumb_fails(&[&p("no_programs.bpf.o")]);
    assert_eq!(
        (code, err.trim()),
        (
            2,
            format!("plumb: {} holds no BPF programs", p("no_programs.bpf.o")).as_str()
        )
    );

    let (code, err) = plumb_fails(&[&p("sys_count.bpf.o"), "--set", "nosuch=1"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim(), "plumb: --set nosuch: no such read-only global; the object has: plumb_target_pid, marker_len");

    let (code, err) = plumb_fails(&[&p("sys_count.bpf.o"), "--set", "marker_len=-3"]);
    assert_eq!(
        (code, err.trim()),
        (
            2,
            "plumb: --set marker_len: -3 does not fit its 64-bit unsigned integer"
        )
    );

    let (code, err) = plumb_fails(&[&p("sys_count.bpf.o"), "--attach", "xdp=eth0"]);
    assert_eq!(
        (code, err.trim()),
        (
            2,
            "plumb: --attach xdp: the object has no program in that section (or of that name)"
        )
    );

    let (code, err) = plumb_fails(&[&p("if_count.bpf.o")]);
    assert_eq!(code, 2);
    assert!(
        err.trim()
            .starts_with("plumb: program xdp_count (xdp) needs a target: interfaces:"),
        "{err}"
    );

    // The verifier's refusal names the program and shows its own words.
    let (code, err) = plumb_fails(&[&p("refused.bpf.o")]);
    assert_eq!(code, 1);
    let first = err.lines().next().unwrap();
    assert!(
        first.starts_with("plumb: the kernel's verifier rejected program no_null_check: "),
        "{err}"
    );
    assert!(err.contains("verifier log (last lines):"), "{err}");
    assert!(
        err.contains("invalid mem access 'map_value_or_null'"),
        "{err}"
    );

    // A bad --netns is the filter's own message.
    let (code, err) = plumb_fails(&[&p("proto_count.bpf.o"), "--netns", "plumb-no-such-ns"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no network namespace named 'plumb-no-such-ns'"),
        "{err}"
    );
}

/// This host has no kprobes and refuses fentry: each object says why in
/// one line, and nothing stays loaded (the process is gone with it).
#[test]
fn kprobe_and_fentry_sections_say_why_they_cannot_run_here() {
    require_root();
    if Path::new("/sys/kernel/tracing/kprobe_events").exists() {
        // A kernel with kprobes: the guest test below is the check.
        return;
    }
    let objects = Objects::new();
    let (code, err) = plumb_fails(&[&objects.path("kprobe_count.bpf.o").to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(
        err.trim().starts_with(
            "plumb: program count_getpid (kprobe/__x64_sys_getpid) cannot attach here: this kernel has no kprobes"
        ),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, err) = plumb_fails(&[&objects.path("fentry_count.bpf.o").to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(
        err.trim()
            .starts_with("plumb: the kernel refused to load program fentry_open: "),
        "{err}"
    );
    assert!(
        err.trim().ends_with(
            "(this kernel may refuse fentry/fexit programs: a kprobe or tracepoint may do)"
        ),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Run `object` while a thread of ours does `call` `CALLS` times; the
/// count `map` keeps for this process.
fn count_calls(objects: &Objects, object: &str, call: fn()) -> Value {
    const CALLS: usize = 9;
    let (tx, rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // Asked before the run: std::process::id() is a getpid call too.
    let me = std::process::id();
    let caller = std::thread::spawn(move || {
        rx.recv().unwrap();
        for _ in 0..CALLS {
            call();
        }
        done_tx.send(()).unwrap();
    });
    let ran = run_while(
        options(objects.path(object), Target::default(), Format::Json),
        |_| {
            tx.send(()).unwrap();
            done_rx.recv().unwrap();
        },
    );
    caller.join().unwrap();
    let lines = json_lines(&ran.out);
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| l["key"] == json!({"key": me}))
        .collect();
    assert_eq!(mine.len(), 1, "{object}: {}", ran.out);
    assert_eq!(mine[0]["value"], json!(CALLS), "{object}: {}", ran.out);
    mine[0].clone()
}

/// Run in the kernel-matrix guests (Debian kernels have kprobes and
/// fentry): a kprobe counter counts getpid calls and an fentry counter
/// opens, exactly.
#[test]
#[ignore = "needs kprobes and fentry: run in the kernel-matrix guests (scripts/guest-suite.sh)"]
fn kprobe_and_fentry_counters_count_calls_in_a_guest() {
    require_root();
    let objects = Objects::new();
    count_calls(&objects, "kprobe_count.bpf.o", || {
        // SAFETY: getpid has no preconditions; the raw syscall, not a cache.
        unsafe { libc::syscall(libc::SYS_getpid) };
    });
    count_calls(&objects, "fentry_count.bpf.o", || {
        // SAFETY: a NUL-terminated path; the fd is closed at once.
        unsafe {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            assert!(fd >= 0);
            libc::close(fd);
        }
    });
}

/// Random and truncated ELF input: an error, never a panic.
#[test]
fn truncated_and_mutated_objects_are_errors_not_panics() {
    let dir = Objects::new();
    let f = dir.path("fuzz.o");
    for cut in (0..PROTO_COUNT.len()).step_by(97) {
        std::fs::write(&f, &PROTO_COUNT[..cut]).unwrap();
        let r = plumb_run::object::open(&f);
        assert!(r.is_err() || cut > 64, "a {cut}-byte cut opened");
    }
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..300 {
        let mut m = SYS_COUNT.to_vec();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % m.len();
            m[i] = (x >> 32) as u8;
        }
        std::fs::write(&f, &m).unwrap();
        if let Ok(o) = plumb_run::object::open(&f) {
            let _ = o.rodata_globals();
        }
    }
    assert!(matches!(
        plumb_run::object::open(Path::new("/nonexistent.o")),
        Err(Error::Read { .. })
    ));
}
