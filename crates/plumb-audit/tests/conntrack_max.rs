//! Root test of the audit's conntrack check: a lab namespace's table
//! flooded past a lowered nf_conntrack_max, reported with exactly the
//! kernel's own counters.
//!
//! nf_conntrack_max is one host-wide value: while it is low, every
//! namespace on the host is held to it, those of tests running beside this
//! one included. So this is the only test of its binary. Cargo runs the
//! tests of one binary on parallel threads, but the test binaries one after
//! another, so nothing else of the suite runs while the limit is low; a
//! process-wide lock would instead have to be taken by every test of a
//! shared binary that creates conntrack entries, and a new test that forgot
//! it would bring the flakiness back. A file lock also serialises it with
//! other cargo runs on the same machine.
//!
//! The kernel's counters can move at any moment (a late SYN retransmit, a
//! packet the kernel sends on its own), and the test cannot read them at
//! the instant the audit does. So it reads them just before and just after
//! each of the audit's two readings: the counters only grow, so when both
//! readings of a bracket agree, the audit's, taken between them, must equal
//! them exactly. When something moved them meanwhile, the attempt is
//! repeated.

use plumb_audit::Options;
use plumb_netlab::Netns;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// nf_conntrack_max, host-wide (read-only inside other namespaces).
const CT_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Attempts at a reading the kernel's counters did not move around.
const ATTEMPTS: usize = 5;

/// Holds the lock that serialises runs lowering nf_conntrack_max, and puts
/// the old value back however the test ends.
struct CtMaxGuard {
    old: String,
    _lock: std::fs::File,
}

impl CtMaxGuard {
    fn lock() -> std::fs::File {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::create("/run/lock/plumb-nf-conntrack-max.lock")
            .or_else(|_| std::fs::File::create("/tmp/plumb-nf-conntrack-max.lock"))
            .expect("lock file");
        // SAFETY: flock on a descriptor we own; released when it closes.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        f
    }

    fn set(lock: std::fs::File, max: u64) -> CtMaxGuard {
        let old = std::fs::read_to_string(CT_MAX).expect("read nf_conntrack_max");
        let g = CtMaxGuard { old, _lock: lock };
        std::fs::write(CT_MAX, max.to_string()).expect("lower nf_conntrack_max");
        g
    }
}

impl Drop for CtMaxGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(CT_MAX, self.old.trim());
    }
}

/// The largest conntrack table of any network namespace on the node:
/// lowering the host-wide limit below it would make that namespace drop.
fn largest_conntrack_table() -> u64 {
    let mut net = plumb_core::enrich::netns::NetResolver::new();
    net.rescan();
    net.all()
        .into_iter()
        .filter_map(|i| {
            let path = match (&i.name, i.pid, i.host) {
                (_, _, true) => "/proc/1/ns/net".to_string(),
                (Some(n), _, _) => format!("/run/netns/{n}"),
                (None, Some(p), _) => format!("/proc/{p}/ns/net"),
                _ => return None,
            };
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={path}"))
                .args(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// The kernel's view of a namespace's table, through conntrack-tools'
/// netlink reading (not our /proc parser).
#[derive(Debug, PartialEq, Eq)]
struct Kernel {
    /// `conntrack -C`.
    count: u64,
    /// `conntrack -S`, summed over CPUs.
    stats: BTreeMap<String, u64>,
}

fn kernel(ns: &Netns) -> Kernel {
    let text = ns.sh("conntrack -S").expect("conntrack -S");
    let mut stats = BTreeMap::new();
    for word in text.split_whitespace() {
        if let Some((k, v)) = word.split_once('=') {
            if let Ok(v) = v.parse::<u64>() {
                *stats.entry(k.to_string()).or_insert(0) += v;
            }
        }
    }
    let count = ns
        .sh("conntrack -C")
        .expect("conntrack -C")
        .trim()
        .parse()
        .expect("conntrack -C prints a number");
    Kernel { count, stats }
}

#[test]
fn conntrack_flood_against_a_small_max_is_reported_with_the_kernels_counters() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the audit tests need root (CI runs them as root)"
    );
    let mut lab = plumb_netlab::Lab::new("ctf").expect("lab");
    let client = lab.add_pod("c").expect("client");
    let server = lab.add_pod("s").expect("server");
    // nf_conntrack_max is read-only inside a namespace on this kernel, so
    // the host's value is lowered (the limit each namespace's count is
    // held to), under a lock and a guard that restores it.
    let w = server
        .ns
        .cmd("echo 10 > /proc/sys/net/netfilter/nf_conntrack_max")
        .expect("run sh in the namespace");
    assert!(
        !w.status.success(),
        "nf_conntrack_max became writable per namespace: lower it there instead"
    );
    // Conntrack tracks a namespace only once a rule needs it.
    server
        .ns
        .sh("iptables -w -A INPUT -p tcp --dport 7000 -m conntrack --ctstate NEW -j ACCEPT")
        .expect("ct rule");
    let ip = server.ip;
    let listener = server
        .ns
        .run(|| std::net::TcpListener::bind(("0.0.0.0", 7000)))
        .expect("enter the namespace")
        .expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            held.len()
        })
    };

    let lock = CtMaxGuard::lock();
    // Room for every other namespace's table, plus a margin our flows fill.
    let max = largest_conntrack_table() + 150;
    let guard = CtMaxGuard::set(lock, max);
    let connect = move |n: u64, timeout_ms: u64| {
        (0..n)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(
                    &(ip, 7000).into(),
                    Duration::from_millis(timeout_ms),
                )
                .ok()
            })
            .collect::<Vec<_>>()
    };
    // Established connections are "assured": the kernel cannot evict them
    // early, so once the table is full new ones are dropped. The namespace
    // may already track a few packets of its own (IGMP reports when eth0
    // came up); fill what is left.
    let room = max - kernel(&server.ns).count;
    let held = client.ns.run(move || connect(room, 1000)).expect("enter");
    assert!(
        held.len() as u64 + 3 >= room,
        "{} of {room} connected",
        held.len()
    );

    let opts = Options {
        only: vec!["conntrack".into()],
        netns: Some(server.ns.path()),
        sample: Duration::ZERO,
        ..Default::default()
    };
    let mut attempt = 0;
    let (before, after, report) = loop {
        attempt += 1;
        let b0 = kernel(&server.ns);
        let audit = plumb_audit::Audit::start(&opts).expect("audit");
        let b1 = kernel(&server.ns);
        let refused = client.ns.run(move || connect(20, 100)).expect("enter");
        assert!(
            refused.is_empty(),
            "{} connections got through",
            refused.len()
        );
        let a0 = kernel(&server.ns);
        let report = audit.finish(&AtomicBool::new(false));
        let a1 = kernel(&server.ns);
        if b0 == b1 && a0 == a1 {
            break (b0, a0, report);
        }
        assert!(
            attempt < ATTEMPTS,
            "the kernel's counters moved around the audit's readings in each of \
             {ATTEMPTS} attempts; last: {b0:?} then {b1:?}, {a0:?} then {a1:?}"
        );
        eprintln!(
            "attempt {attempt}: the kernel's counters moved around one of the audit's \
             readings ({b0:?} then {b1:?}, {a0:?} then {a1:?}); again"
        );
    };
    drop(guard);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(accepted.join().expect("accept thread"), held.len());
    drop(held);

    let drops = after.stats["drop"] - before.stats["drop"];
    assert!(
        drops >= 20,
        "the kernel dropped {drops} SYNs for 20 refused connections"
    );
    let scope = &report.scopes[0];
    let c = scope.conntrack.as_ref().expect("conntrack readings");
    assert_eq!((c.after.count, c.after.max), (after.count, max));
    assert_eq!(after.count, max, "the table is full");
    for k in plumb_audit::conntrack::PRESSURE {
        assert_eq!(
            c.before.stats[k], before.stats[k],
            "{k} before, as the kernel counts"
        );
        assert_eq!(
            c.after.stats[k], after.stats[k],
            "{k} after, as the kernel counts"
        );
    }
    let f = report
        .findings
        .iter()
        .find(|f| f.check == "conntrack")
        .unwrap_or_else(|| panic!("no conntrack finding: {:?}", report.findings));
    assert_eq!(f.severity, plumb_audit::finding::Severity::Critical);
    assert!(
        f.title.starts_with(&format!(
            "conntrack table is 100% full ({max}/{max} entries); drop +{drops}"
        )),
        "{}",
        f.title
    );
    assert_eq!(f.data["growth"]["drop"], drops);
    assert_eq!(f.netns.as_deref(), server.ns.path().to_str());
}
