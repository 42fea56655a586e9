//! `plumb doctor` on a lab with a DROP rule and a duplicated chain, run
//! once with JSON output and once with the table: each report lists the
//! duplicated chain with its namespace, and the drop reason with the
//! namespace it hit and exactly as many drops as the DROP rule's kernel
//! counter grew, and the run takes about `--duration`; its hottest
//! functions are not doctor's own. Only the lab's own facts are asserted,
//! so other namespaces on the node do not matter.

use plumb_core::testing::{iptables_packets, require_root};
use plumb_netlab::{Lab, Netns, Pod};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PORT: u16 = 8443;
const DATAGRAMS: u64 = 400;
const COPIES: usize = 500;
const DURATION: Duration = Duration::from_secs(6);

fn drop_counter(ns: &Netns) -> u64 {
    let listing = ns.sh("iptables -w -vnxL INPUT").expect("iptables -L");
    iptables_packets(&listing, &format!("udp dpt:{PORT}")).expect("the DROP rule's counter")
}

struct Run {
    stdout: String,
    elapsed: Duration,
    /// The DROP rule's counter growth while doctor ran.
    dropped: u64,
    /// doctor's pid.
    pid: u32,
}

/// Run doctor with `format`, send the datagrams once its tracers are
/// attached, and read the DROP rule's counter around it.
fn doctor(format: &str, client: &Pod, server: &Pod) -> Run {
    let before = drop_counter(&server.ns);
    let started = Instant::now();
    let secs = format!("{}s", DURATION.as_secs());
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["doctor", "--duration", &secs, "-o", format])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn doctor");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("doctor says when its tracers are attached");
        if line.contains("tracers attached") {
            break;
        }
    }
    let target = SocketAddr::from((server.ip, PORT));
    client
        .ns
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for i in 0..DATAGRAMS {
                s.send_to(&i.to_be_bytes(), target).expect("send");
            }
        })
        .expect("send from the client");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .expect("doctor's report");
    let status = child.wait().expect("doctor");
    let elapsed = started.elapsed();
    let stderr = reader.join().unwrap();
    assert!(status.success(), "doctor failed: {stderr}");
    Run {
        stdout,
        elapsed,
        dropped: drop_counter(&server.ns) - before,
        pid,
    }
}

/// Doctor's own threads (tracers, audit, profiler) are left out of its
/// profile: no hot function is one doctor ran. A hit names the command
/// (or the pod) that ran the function; doctor's threads are all `plumb`
/// (it names none of them).
fn assert_no_plumb_in_the_hottest_functions(v: &serde_json::Value, pid: u32) {
    for list in ["hot_kernel_functions", "hot_user_functions"] {
        for f in v[list].as_array().expect(list) {
            for hit in f["hit"].as_array().expect("hit") {
                assert_ne!(
                    hit["who"], "plumb",
                    "doctor (pid {pid}) profiled itself: {list}: {f}"
                );
            }
        }
    }
}

#[test]
fn doctor_reports_duplicates_and_the_drop_reason_with_the_pod() {
    require_root();
    let mut lab = Lab::new("doc").expect("lab");
    let client = lab.add_pod("cli").expect("client");
    let server = lab.add_pod("srv").expect("server");
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p udp --dport {PORT} -j DROP"
        ))
        .expect("drop rule");
    let mut rules = String::from("*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n");
    for _ in 0..COPIES {
        rules.push_str("-A FORWARD -p IPv4 --ip-src 10.2.207.1/24 -j ACCEPT\n");
    }
    let file = std::env::temp_dir().join(format!("plumb-doctor-{}.rules", std::process::id()));
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(rules.as_bytes()))
        .expect("rules");
    let restored = server
        .ns
        .sh(&format!("ebtables-restore < {}", file.display()));
    std::fs::remove_file(&file).expect("cleanup");
    restored.expect("ebtables");
    let title = format!(
        "chain FORWARD in table bridge filter (ebtables) has {COPIES} rules, {} of them copies of rule #1",
        COPIES - 1
    );
    let netns = server.ns.name.as_str();
    let hit = format!("netns {netns}");

    // JSON: the whole report.
    let run = doctor("json", &client, &server);
    assert_eq!(run.dropped, DATAGRAMS, "every datagram hit the DROP rule");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("doctor JSON");
    let duration = v["duration_s"].as_f64().unwrap();
    assert!(
        duration < DURATION.as_secs_f64() + 4.0 && run.elapsed < DURATION + Duration::from_secs(10),
        "doctor took {duration:.1}s ({:?} wall) for --duration {DURATION:?}",
        run.elapsed
    );
    let dup = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["title"] == title.as_str())
        .unwrap_or_else(|| panic!("duplicated chain not reported: {}", v["findings"]));
    assert_eq!(dup["data"]["copies"], COPIES - 1);
    assert_eq!(dup["netns"], netns);
    assert_eq!(dup["severity"], "critical");
    let drop = v["drops"]
        .as_array()
        .expect("drops")
        .iter()
        .find(|d| d["key"] == "NETFILTER_DROP")
        .unwrap_or_else(|| panic!("NETFILTER_DROP not reported: {}", v["drops"]));
    let ours = drop["hit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["who"] == hit.as_str())
        .unwrap_or_else(|| panic!("the drop does not name {hit}: {}", drop["hit"]));
    let lost = v["lost_events"].as_u64().unwrap();
    let seen = ours["count"].as_u64().unwrap();
    if lost == 0 {
        assert_eq!(seen, run.dropped, "drops seen = the DROP rule's counter");
    } else {
        // Events lost to a full ring buffer are counted, not hidden.
        assert!(
            seen <= run.dropped && seen + lost >= run.dropped,
            "{seen} seen, {lost} lost"
        );
    }
    assert_eq!(
        drop["more"],
        "plumb trace drop --reason NETFILTER_DROP --stack"
    );
    assert!(v["hot_kernel_functions"].is_array() && v["hot_user_functions"].is_array());
    assert_no_plumb_in_the_hottest_functions(&v, run.pid);

    // Table: the same facts, from a second run.
    let run = doctor("table", &client, &server);
    assert_eq!(run.dropped, DATAGRAMS);
    let t = &run.stdout;
    let at = t
        .find(&format!("  [CRITICAL] {title}\n      in {netns}\n"))
        .unwrap_or_else(|| panic!("the duplicated chain and its namespace are not listed:\n{t}"));
    assert!(t[at..].contains("rule #1: -p IPv4 --ip-src 10.2.207.0/24 -j ACCEPT\n"));
    let row = t
        .lines()
        .find(|l| l.contains("  NETFILTER_DROP  → "))
        .unwrap_or_else(|| panic!("no NETFILTER_DROP row:\n{t}"));
    if t.contains("events were lost (ring buffer full)") {
        assert!(row.contains(&hit), "the row names {hit}: {row}");
    } else {
        assert!(
            row.contains(&format!("{hit} ({})", run.dropped)),
            "the row names {hit} with {} drops: {row}",
            run.dropped
        );
    }
    for section in [
        "PACKET DROPS",
        "TCP RETRANSMITS",
        "TCP RESETS",
        "HOTTEST KERNEL FUNCTIONS",
        "HOTTEST USER FUNCTIONS",
    ] {
        assert!(
            t.contains(&format!("\n{section} ")) || t.contains(&format!("\n{section}\n")),
            "no {section} section:\n{t}"
        );
    }
}
