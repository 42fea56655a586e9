//! Root tests of the audit against real kernel state in lab namespaces:
//! duplicated ebtables / iptables (nft and legacy) / nftables rules, BPF
//! maps at capacity, and conntrack counts.

use plumb_audit::{run, Options};
use plumb_netlab::{Lab, Netns};
use std::io::Write;

fn root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the audit tests need root (CI runs them as root)"
    );
}

fn audit(ns: &Netns, only: &str) -> plumb_audit::Report {
    run(&Options {
        only: vec![only.to_string()],
        netns: Some(ns.path()),
        ..Default::default()
    })
    .expect("audit")
}

/// Feed a restore file to `tool` inside the namespace.
fn restore(ns: &Netns, tool: &str, text: &str) {
    let path = std::env::temp_dir().join(format!("plumb-audit-{}-{}.rules", ns.name, tool));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("rules file");
    ns.sh(&format!("{tool} < {}", path.display()))
        .expect("restore");
    std::fs::remove_file(&path).expect("cleanup");
}

#[test]
fn ebtables_copies_added_with_host_bits_set_are_counted() {
    root();
    let mut lab = Lab::new("ebt").expect("lab");
    let pod = lab.add_pod("p").expect("pod");
    let copies = 3000;
    let mut text = String::from("*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n");
    for _ in 0..copies {
        // The host bit is set, as in the story: the kernel keeps 10.2.207.0/24.
        text.push_str("-A FORWARD -p IPv4 --ip-src 10.2.207.1/24 -j ACCEPT\n");
    }
    for i in 0..200 {
        text.push_str(&format!(
            "-A OUTPUT -p IPv4 --ip-dst 10.3.{i}.0/24 -j ACCEPT\n"
        ));
    }
    restore(&pod.ns, "ebtables-restore", &text);
    let r = audit(&pod.ns, "netfilter");
    let dups: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.title.contains("copies of rule"))
        .collect();
    assert_eq!(
        dups.len(),
        1,
        "only FORWARD is duplicated: {:?}",
        dups.iter().map(|f| &f.title).collect::<Vec<_>>()
    );
    assert_eq!(
        dups[0].title,
        format!("chain FORWARD in table bridge filter (ebtables) has {copies} rules, {} of them copies of rule #1", copies - 1)
    );
    assert_eq!(
        dups[0].data["rule"],
        "-p IPv4 --ip-src 10.2.207.0/24 -j ACCEPT"
    );
    assert_eq!(dups[0].data["copies"], copies - 1);
    assert_eq!(dups[0].severity, plumb_audit::finding::Severity::Critical);
}

#[test]
fn iptables_nft_legacy_and_native_nft_duplicates() {
    root();
    let mut lab = Lab::new("ipt").expect("lab");
    let pod = lab.add_pod("p").expect("pod");
    let mut text = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
    for i in 0..40 {
        // Spelled three ways; one rule to the kernel.
        let spelling = match i % 3 {
            0 => "-A INPUT -s 10.9.0.1/16 -p tcp --dport 80 -j DROP",
            1 => "-A INPUT -p tcp -m tcp --destination-port 80 --source 10.9.0.0/16 -j DROP",
            _ => "-A INPUT --protocol tcp --dport 80 -s 10.9.255.255/255.255.0.0 -j DROP",
        };
        text.push_str(spelling);
        text.push('\n');
    }
    for i in 0..30 {
        text.push_str(&format!("-A INPUT -p tcp --dport {} -j ACCEPT\n", 1000 + i));
    }
    text.push_str("COMMIT\n");
    restore(&pod.ns, "iptables-restore", &text);
    pod.ns
        .sh("for i in 1 2 3 4 5; do iptables-legacy -A OUTPUT -d 10.7.7.7/32 -j DROP; done")
        .expect("legacy");
    pod.ns
        .sh("nft add table inet plumbt && nft add chain inet plumbt c '{ type filter hook input priority 10; }' && \
             for i in 1 2 3 4 5 6; do nft add rule inet plumbt c tcp dport 8080 drop; done && \
             nft add rule inet plumbt c tcp dport 8081 drop")
        .expect("nft");
    let r = audit(&pod.ns, "netfilter");
    let find = |tool: &str| {
        r.findings
            .iter()
            .find(|f| f.data["tool"] == tool)
            .unwrap_or_else(|| {
                panic!(
                    "no {tool} finding in {:?}",
                    r.findings.iter().map(|f| &f.title).collect::<Vec<_>>()
                )
            })
    };
    let ipt = find("iptables");
    assert_eq!(
        ipt.title,
        "chain INPUT in table ip filter (iptables) has 70 rules, 39 of them copies of rule #1"
    );
    let legacy = find("iptables-legacy");
    assert_eq!(legacy.data["copies"], 4);
    assert_eq!(legacy.data["chain"], "OUTPUT");
    let nft = find("nft");
    assert_eq!(
        (nft.data["table"].as_str(), nft.data["copies"].as_u64()),
        (Some("plumbt"), Some(5))
    );
    assert_eq!(
        r.findings
            .iter()
            .filter(|f| f.data["copies"].is_u64())
            .count(),
        3,
        "no other duplicates"
    );
}

#[test]
fn lru_map_past_capacity_is_flagged_half_full_hash_is_not() {
    root();
    use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let lru =
        MapHandle::create(MapType::LruHash, Some("plumb_t_lru"), 4, 4, 64, &opts).expect("lru");
    let hash =
        MapHandle::create(MapType::Hash, Some("plumb_t_half"), 4, 4, 64, &opts).expect("hash");
    for k in 0u32..200 {
        lru.update(&k.to_ne_bytes(), &k.to_ne_bytes(), MapFlags::ANY)
            .expect("lru update");
    }
    for k in 0u32..32 {
        hash.update(&k.to_ne_bytes(), &k.to_ne_bytes(), MapFlags::ANY)
            .expect("hash update");
    }
    let lru_id = lru.info().expect("info").info.id;
    let hash_id = hash.info().expect("info").info.id;
    let r = run(&Options {
        only: vec!["bpf-maps".into()],
        ..Default::default()
    })
    .expect("audit");
    let f = r
        .findings
        .iter()
        .find(|f| f.data["id"] == lru_id)
        .unwrap_or_else(|| {
            panic!(
                "the full LRU map is not reported: {:?}",
                plumb_audit::bpfmaps::collect(std::time::Duration::from_secs(1))
                    .into_iter()
                    .filter(|m| m.id == lru_id)
                    .collect::<Vec<_>>()
            )
        });
    assert!(
        f.title.starts_with(&format!(
            "BPF LRU map plumb_t_lru (id {lru_id}) is at capacity ("
        )),
        "{}",
        f.title
    );
    assert!(
        f.title.ends_with("/64): it is evicting entries"),
        "{}",
        f.title
    );
    assert_eq!(f.data["evicting"], true);
    let entries = f.data["entries"].as_u64().unwrap();
    let oracle = lru.keys().count() as u64;
    assert_eq!(entries, oracle, "the entry count is what the map holds");
    assert!(
        !r.findings.iter().any(|f| f.data["id"] == hash_id),
        "half-full hash map is not flagged"
    );
}

#[test]
fn conntrack_count_agrees_with_the_kernel() {
    root();
    let mut lab = Lab::new("ct").expect("lab");
    let client = lab.add_pod("c").expect("client");
    let server = lab.add_pod("s").expect("server");
    // Conntrack only tracks a namespace that has rules needing it.
    server
        .ns
        .sh("iptables -w -A INPUT -m conntrack --ctstate NEW -j ACCEPT")
        .expect("ct rule");
    let ip = server.ip;
    let listener = server
        .ns
        .run(|| std::net::TcpListener::bind(("0.0.0.0", 7000)))
        .unwrap()
        .unwrap();
    let n = 25;
    client
        .ns
        .run(move || {
            for _ in 0..n {
                let _ = std::net::TcpStream::connect((ip, 7000)).expect("connect");
            }
        })
        .unwrap();
    drop(listener);
    let c = plumb_audit::conntrack::collect(&plumb_audit::Runner::netns(server.ns.path()))
        .expect("conntrack");
    let oracle: u64 = server
        .ns
        .sh("conntrack -C")
        .expect("conntrack -C")
        .trim()
        .parse()
        .expect("number");
    assert!(c.count >= n, "{} entries for {n} connections", c.count);
    assert_eq!(c.count, oracle, "our count is the kernel's");
    assert!(c.max > 0);
    // nf_conntrack_max cannot be lowered inside a namespace on this kernel
    // (it is read-only there), so a full table is tested with fixtures.
    let w = server
        .ns
        .cmd("echo 10 > /proc/sys/net/netfilter/nf_conntrack_max")
        .unwrap();
    assert!(
        !w.status.success(),
        "nf_conntrack_max became writable per namespace: extend this test"
    );
}
