//! Root tests of `plumb capture` in the network lab: a load of a known
//! number of UDP datagrams to two ports of one pod, captured with a filter
//! for one of them, read back by tshark (Debian's, an independent reader
//! of the pcapng plumb writes): the count, the 5-tuple, the comments, the
//! kernel's statistics, the limits, a ring too small for a burst, and
//! captures stopped at random moments. Bad input is checked as the one
//! line a user reads.

mod support;

use plumb_core::testing::{patience, require_root};
use plumb_netlab::{Lab, Netns, Pod};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// Start `plumb capture ARGS -v` (inside `node`'s namespace when given,
/// as a node's agent runs) and wait until its `points` sockets are open.
fn start(node: Option<&Netns>, args: &[&str], points: usize) -> Proc {
    let mut cmd = match node {
        Some(n) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", n.path().display()))
                .arg(env!("CARGO_BIN_EXE_plumb"));
            c
        }
        None => plumb(),
    };
    cmd.arg("-v").arg("capture").args(args);
    let p = Proc::spawn(cmd);
    let mut seen = Vec::new();
    for _ in 0..points {
        if wait_line(&p.err, Duration::from_secs(20), &mut seen, |l| {
            l.starts_with("plumb: capturing on ")
        })
        .is_none()
        {
            panic!("capture did not start: {seen:?}");
        }
    }
    p
}

/// Stop a capture with SIGINT; its exit code and its last stderr line.
fn stop(mut p: Proc) -> (i32, String) {
    p.signal(libc::SIGINT);
    let code = p
        .wait(Duration::from_secs(20))
        .expect("capture exits on SIGINT");
    let err = drain(&p.err);
    (code, err.last().cloned().unwrap_or_default())
}

/// `n` datagrams of `size` bytes from `from` to `to:port`, from source
/// port `sport`.
fn send(from: &Pod, sport: u16, to: Ipv4Addr, port: u16, n: usize, size: usize) {
    let ip = from.ip;
    from.ns
        .run(move || {
            let s = UdpSocket::bind((ip, sport)).expect("bind sender");
            let buf = vec![0x5au8; size];
            for _ in 0..n {
                s.send_to(&buf, (to, port)).expect("send");
            }
        })
        .expect("sender in the pod");
}

/// The number in `plumb: N packets, M dropped by the kernel`.
fn end_counts(line: &str) -> (u64, u64) {
    let rest = line
        .strip_prefix("plumb: ")
        .unwrap_or_else(|| panic!("not the end line: {line:?}"));
    let words: Vec<&str> = rest.split_whitespace().collect();
    (
        words[0].parse().expect("packets"),
        words[2].parse().expect("dropped"),
    )
}

/// (received, dropped, delivered) of each interface statistics block.
fn isb(file: &Path) -> Vec<(u64, u64, u64)> {
    use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption as O;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let bytes = std::fs::read(file).expect("read capture");
    let mut r = PcapNgReader::new(&bytes[..]).expect("pcapng");
    let mut out = Vec::new();
    while let Some(b) = r.next_block() {
        if let Block::InterfaceStatistics(s) = b.expect("block") {
            let mut v = (0, 0, 0);
            for o in &s.options {
                match o {
                    O::IsbIfRecv(n) => v.0 = *n,
                    O::IsbIfDrop(n) => v.1 = *n,
                    O::IsbUsrDeliv(n) => v.2 = *n,
                    _ => {}
                }
            }
            out.push(v);
        }
    }
    out
}

fn tmp(tag: &str) -> TempDir {
    TempDir::new(tag)
}

#[test]
fn a_pod_capture_holds_exactly_the_filtered_datagrams_named_by_netns_and_direction() {
    require_root();
    let mut lab = Lab::new("cap").expect("lab");
    let a = lab.add_pod("a").expect("pod a");
    let b = lab.add_pod("b").expect("pod b");
    let dir = tmp("capture");
    let file = dir.path().join("b.pcapng");
    let b_in = b.ns.snmp("Udp", "NoPorts").expect("counter");
    let cap = start(
        None,
        &[
            "--netns",
            &b.ns.name,
            "udp",
            "dst",
            "port",
            "7001",
            "-w",
            file.to_str().unwrap(),
        ],
        1,
    );
    send(&a, 6001, b.ip, 7001, 300, 64);
    send(&a, 6001, b.ip, 7002, 40, 64);
    std::thread::sleep(Duration::from_millis(200));
    let (code, end) = stop(cap);
    assert_eq!(code, 0, "{end}");
    // The kernel counted every datagram (nobody listens: NoPorts).
    assert_eq!(b.ns.snmp("Udp", "NoPorts").unwrap() - b_in, 340);
    let rows = tshark_fields(
        &file,
        &[
            "ip.src",
            "udp.srcport",
            "ip.dst",
            "udp.dstport",
            "frame.len",
            "frame.comment",
            "frame.interface_name",
        ],
    );
    assert_eq!(rows.len(), 300, "{rows:?}");
    let comment = format!("netns {}, in", b.ns.name);
    for r in &rows {
        assert_eq!(
            r[..5],
            [
                a.ip.to_string(),
                "6001".into(),
                b.ip.to_string(),
                "7001".into(),
                "106".into()
            ],
            "{r:?}"
        );
        assert!(r[5].ends_with(&comment), "{r:?}");
        assert_eq!(r[6], "eth0");
    }
    assert_eq!(end_counts(&end), (300, 0), "{end}");
    // The statistics block: the kernel received 300 after the filter, dropped none.
    assert_eq!(isb(&file), vec![(300, 0, 300)]);
}

#[test]
fn node_side_shows_the_same_datagrams_leaving_the_pod_on_the_nodes_veth() {
    require_root();
    let mut lab = Lab::new("capn").expect("lab");
    let a = lab.add_pod("a").expect("pod a");
    let b = lab.add_pod("b").expect("pod b");
    let dir = tmp("capture-node");
    let file = dir.path().join("a.pcapng");
    let node = lab.node(0).clone();
    let cap = start(
        Some(&node),
        &[
            "--netns",
            &a.ns.name,
            "--node-side",
            "udp",
            "port",
            "7003",
            "-w",
            file.to_str().unwrap(),
        ],
        2,
    );
    send(&a, 6003, b.ip, 7003, 120, 200);
    std::thread::sleep(Duration::from_millis(200));
    let (code, end) = stop(cap);
    assert_eq!(code, 0, "{end}");
    let rows = tshark_fields(
        &file,
        &["frame.comment", "frame.interface_name", "udp.length"],
    );
    let pod_side: Vec<_> = rows
        .iter()
        .filter(|r| !r[0].contains("node side") && r[0].ends_with(", out") && r[1] == "eth0")
        .collect();
    let node_side: Vec<_> = rows
        .iter()
        .filter(|r| {
            r[0].contains(&format!("netns {}, node side of the pod's eth0", node.name))
                && r[0].ends_with(", in")
        })
        .collect();
    assert_eq!(pod_side.len(), 120, "{rows:?}");
    assert_eq!(node_side.len(), 120, "{rows:?}");
    assert_eq!(rows.len(), 240, "{rows:?}");
    assert!(
        node_side.iter().all(|r| r[1] != "eth0" && r[2] == "208"),
        "{node_side:?}"
    );
    // Time order across the two interfaces.
    let ts = tshark_fields(&file, &["frame.time_epoch"]);
    let t: Vec<f64> = ts.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "out of time order");
    assert_eq!(end_counts(&end), (240, 0));
}

#[test]
fn max_packets_max_bytes_and_duration_stop_the_capture() {
    require_root();
    let mut lab = Lab::new("capl").expect("lab");
    let a = lab.add_pod("a").expect("pod a");
    let b = lab.add_pod("b").expect("pod b");
    let dir = tmp("capture-limits");
    // --max-packets 25 of 200.
    let f1 = dir.path().join("n.pcapng");
    let mut cap = start(
        None,
        &[
            "--netns",
            &b.ns.name,
            "udp port 7010",
            "--max-packets",
            "25",
            "-w",
            f1.to_str().unwrap(),
        ],
        1,
    );
    send(&a, 6010, b.ip, 7010, 200, 64);
    assert_eq!(
        cap.wait(Duration::from_secs(10)),
        Some(0),
        "--max-packets did not stop it"
    );
    let end = drain(&cap.err).last().cloned().unwrap_or_default();
    assert_eq!(tshark_fields(&f1, &["udp.dstport"]).len(), 25);
    assert!(
        end.starts_with("plumb: 25 packets, 0 dropped by the kernel (stopped by --max-packets 25"),
        "{end}"
    );
    // --max-bytes 1060: ten 106-byte frames fit, the eleventh does not.
    let f2 = dir.path().join("b.pcapng");
    let mut cap = start(
        None,
        &[
            "--netns",
            &b.ns.name,
            "udp port 7011",
            "--max-bytes",
            "1060",
            "-w",
            f2.to_str().unwrap(),
        ],
        1,
    );
    send(&a, 6011, b.ip, 7011, 50, 64);
    assert_eq!(
        cap.wait(Duration::from_secs(10)),
        Some(0),
        "--max-bytes did not stop it"
    );
    assert_eq!(tshark_fields(&f2, &["udp.dstport"]).len(), 10);
    // --duration 1s ends by itself, with what came before.
    let f3 = dir.path().join("d.pcapng");
    let t0 = Instant::now();
    let mut cap = start(
        None,
        &[
            "--netns",
            &b.ns.name,
            "udp port 7012",
            "--duration",
            "1s",
            "-w",
            f3.to_str().unwrap(),
        ],
        1,
    );
    send(&a, 6012, b.ip, 7012, 30, 64);
    assert_eq!(cap.wait(Duration::from_secs(10)), Some(0));
    assert!(t0.elapsed() < patience(Duration::from_secs(8)));
    assert_eq!(tshark_fields(&f3, &["udp.dstport"]).len(), 30);
    let end = drain(&cap.err).last().cloned().unwrap_or_default();
    assert!(end.contains("(stopped by --duration 1s)"), "{end}");
}

#[test]
fn a_ring_too_small_for_a_burst_counts_what_the_kernel_dropped() {
    require_root();
    let mut lab = Lab::new("capr").expect("lab");
    let a = lab.add_pod("a").expect("pod a");
    let b = lab.add_pod("b").expect("pod b");
    let dir = tmp("capture-ring");
    let file = dir.path().join("r.pcapng");
    // Two 4 KiB blocks: three 1 kB datagrams each.
    let cap = start(
        None,
        &[
            "--netns",
            &b.ns.name,
            "udp port 7020",
            "-B",
            "8KiB",
            "-w",
            file.to_str().unwrap(),
        ],
        1,
    );
    let n = 20_000;
    send(&a, 6020, b.ip, 7020, n, 1000);
    std::thread::sleep(Duration::from_millis(300));
    let (code, end) = stop(cap);
    assert_eq!(code, 0, "{end}");
    let (written, dropped) = end_counts(&end);
    let in_file = tshark_fields(&file, &["udp.dstport"]).len() as u64;
    assert_eq!(in_file, written, "{end}");
    assert!(dropped > 0, "the burst fit in the ring: {end}");
    // Every datagram sent is in the file or in the kernel's drop count.
    assert_eq!(written + dropped, n as u64, "{end}");
    assert_eq!(isb(&file), vec![(n as u64, dropped, written)]);
}

#[test]
fn a_capture_stopped_at_any_moment_leaves_a_file_tshark_reads() {
    require_root();
    let mut lab = Lab::new("capi").expect("lab");
    let a = lab.add_pod("a").expect("pod a");
    let b = lab.add_pod("b").expect("pod b");
    let dir = tmp("capture-int");
    let ip = b.ip;
    let flood = {
        let a = a.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                send(&a, 0, ip, 7030, 500, 300);
            }
        })
    };
    for (i, after_ms) in [0u64, 7, 40, 130, 333, 900].into_iter().enumerate() {
        let file = dir.path().join(format!("i{i}.pcapng"));
        let mut cmd = plumb();
        cmd.args([
            "capture",
            "--netns",
            &b.ns.name,
            "udp port 7030",
            "-w",
            file.to_str().unwrap(),
        ]);
        let mut p = Proc::spawn(cmd);
        std::thread::sleep(Duration::from_millis(after_ms));
        p.signal(libc::SIGINT);
        // -1: the signal came before plumb had set its handler (it died
        // of it, as any program does at that point).
        let code = p.wait(Duration::from_secs(20));
        assert!(matches!(code, Some(0) | Some(-1)), "{code:?}");
        let end = drain(&p.err);
        if let Ok(m) = std::fs::metadata(&file) {
            if m.len() == 0 {
                continue; // stopped before the file was begun
            }
            let n = tshark_fields(&file, &["udp.dstport"]).len() as u64;
            if let Some(l) = end
                .iter()
                .find(|l| l.starts_with("plumb: ") && l.contains(" packets, "))
            {
                assert_eq!(end_counts(l).0, n, "{l}");
            }
        }
    }
    flood.join().unwrap();
}

#[test]
fn stdout_streams_into_tshark() {
    require_root();
    let mut lab = Lab::new("caps").expect("lab");
    let a = lab.add_pod("a").expect("pod a");
    let b = lab.add_pod("b").expect("pod b");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "{} -v capture --netns {} 'udp port 7040' --max-packets 17 -w - | tshark -r - -T fields -e udp.srcport",
        env!("CARGO_BIN_EXE_plumb"),
        b.ns.name
    ));
    let mut p = Proc::spawn(cmd);
    let mut seen = Vec::new();
    wait_line(&p.err, Duration::from_secs(20), &mut seen, |l| {
        l.starts_with("plumb: capturing on ")
    })
    .unwrap_or_else(|| panic!("{seen:?}"));
    send(&a, 6040, b.ip, 7040, 17, 64);
    assert_eq!(p.wait(Duration::from_secs(20)), Some(0));
    let out = drain(&p.out);
    assert_eq!(out, vec!["6040".to_string(); 17]);
}

#[test]
fn bad_input_gets_one_line() {
    require_root();
    let mut lab = Lab::new("cape").expect("lab");
    let b = lab.add_pod("b").expect("pod b");
    let dir = tmp("capture-bad");
    let ok = dir.path().join("x.pcapng");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--netns",
                &b.ns.name,
                "tcp prot 80",
                "-w",
                ok.to_str().unwrap(),
            ],
            "bad filter expression \"tcp prot 80\": can't parse filter expression: syntax error",
        ),
        (
            vec![
                "--netns",
                &b.ns.name,
                "udp",
                "-w",
                "/proc/no-such-dir/x.pcapng",
            ],
            "cannot write /proc/no-such-dir/x.pcapng",
        ),
        (
            vec![
                "--netns",
                "plumb-no-such-netns",
                "udp",
                "-w",
                ok.to_str().unwrap(),
            ],
            "plumb-no-such-netns",
        ),
        (
            vec![
                "--netns",
                &b.ns.name,
                "-i",
                "nosuch0",
                "-w",
                ok.to_str().unwrap(),
            ],
            "no interface \"nosuch0\" in netns",
        ),
        (
            vec!["udp", "-w", ok.to_str().unwrap()],
            "say where to capture",
        ),
        (
            vec![
                "--interface",
                "lo",
                "--node-side",
                "-w",
                ok.to_str().unwrap(),
            ],
            "--node-side needs --pod, -l or --netns",
        ),
        (
            vec!["--pod", "no-such-pod-7f3a", "-w", ok.to_str().unwrap()],
            "no-such-pod-7f3a",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["capture"];
        all.extend(&args);
        let (code, out, err) = run(&all);
        assert_ne!(code, 0, "{args:?}: {err}");
        assert!(out.is_empty());
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"));
        assert!(!ok.exists(), "{args:?} left a file behind");
    }
}
