//! Root tests of the audit against real kernel state in lab namespaces:
//! duplicated ebtables / iptables (nft and legacy) / nftables rules, BPF
//! maps at capacity and half full, and XDP on a namespace's interface, each
//! checked against the kernel's own counts. (The conntrack flood lowers a
//! host-wide limit, so it has a test binary of its own: conntrack_max.rs.)

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
    assert_eq!(
        dups[0].data["normalised"],
        "--ip-src 10.2.207.0/24 -p ipv4 -j ACCEPT"
    );
    assert_eq!(dups[0].severity, plumb_audit::finding::Severity::Critical);
    // The report measures every chain, duplicated or not.
    let size = |chain: &str| {
        r.scopes[0]
            .chains
            .iter()
            .find(|c| c.tool == "ebtables" && c.table == "filter" && c.chain == chain)
            .map(|c| c.rules)
    };
    assert_eq!(size("FORWARD"), Some(copies));
    assert_eq!(size("OUTPUT"), Some(200));
    assert_eq!(size("INPUT"), Some(0));
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
    // Each table once, whichever tools list it (iptables-save repeats one
    // backend, nft lists the nft-backed tables again).
    let mut tables: Vec<(&str, &str, &str)> = r.scopes[0]
        .chains
        .iter()
        .map(|c| (c.tool, c.family, c.table.as_str()))
        .collect();
    tables.dedup();
    let mut unique = tables.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(tables.len(), unique.len(), "a table read twice: {tables:?}");
    let rules = |tool: &str, chain: &str| {
        r.scopes[0]
            .chains
            .iter()
            .filter(|c| c.tool == tool && c.chain == chain)
            .map(|c| c.rules)
            .sum::<usize>()
    };
    assert_eq!(rules("iptables", "INPUT"), 70);
    assert_eq!(rules("iptables-legacy", "OUTPUT"), 5);
    assert_eq!(rules("nft", "c"), 7);
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
        MapHandle::create(MapType::Hash, Some("plumb_t_half"), 4, 4, 4096, &opts).expect("hash");
    for k in 0u32..200 {
        lru.update(&k.to_ne_bytes(), &k.to_ne_bytes(), MapFlags::ANY)
            .expect("lru update");
    }
    // Big enough for many hash buckets: a batch ends at a bucket boundary.
    for k in 0u32..2048 {
        hash.update(&k.to_ne_bytes(), &k.to_ne_bytes(), MapFlags::ANY)
            .expect("hash update");
    }
    let lru_id = lru.info().expect("info").info.id;
    let hash_id = hash.info().expect("info").info.id;
    // Per-CPU values come one slot per CPU: counted all the same.
    let pcpu = MapHandle::create(MapType::PercpuHash, Some("plumb_t_pcpu"), 4, 4, 4096, &opts)
        .expect("percpu hash");
    let ncpus = libbpf_rs::num_possible_cpus().expect("cpus");
    for k in 0u32..1000 {
        let per_cpu: Vec<Vec<u8>> = (0..ncpus).map(|_| k.to_ne_bytes().to_vec()).collect();
        pcpu.update_percpu(&k.to_ne_bytes(), &per_cpu, MapFlags::ANY)
            .expect("percpu update");
    }
    let pcpu_id = pcpu.info().expect("info").info.id;
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
                r.maps.iter().filter(|m| m.id == lru_id).collect::<Vec<_>>()
            )
        });
    let entries = f.data["entries"].as_u64().unwrap();
    let oracle = lru.keys().count() as u64;
    assert_eq!(entries, oracle, "the entry count is what the map holds");
    assert_eq!(
        f.title,
        format!("BPF LRU map plumb_t_lru (id {lru_id}) is at capacity ({oracle}/64): it is evicting entries")
    );
    assert_eq!(f.severity, plumb_audit::finding::Severity::Critical);
    assert_eq!(f.data["evicting"], true);
    // The half-full hash map is listed as created, and not flagged.
    let listed = r
        .maps
        .iter()
        .find(|m| m.id == hash_id)
        .unwrap_or_else(|| panic!("map {hash_id} not listed"));
    assert_eq!(
        (
            listed.name.as_str(),
            listed.ty.as_str(),
            listed.entries,
            listed.max_entries,
            listed.partial
        ),
        ("plumb_t_half", "Hash", Some(2048), 4096, false)
    );
    let listed = r
        .maps
        .iter()
        .find(|m| m.id == pcpu_id)
        .expect("percpu map listed");
    assert_eq!((listed.entries, listed.max_entries), (Some(1000), 4096));
    assert!(
        !r.findings.iter().any(|f| f.data["id"] == hash_id),
        "half-full hash map is not flagged"
    );
    // The table output lists both.
    let text = plumb_audit::render(&r, true);
    let row = text
        .lines()
        .find(|l| l.contains("plumb_t_half"))
        .unwrap_or_else(|| panic!("no row for the hash map:\n{text}"));
    assert!(row.contains("2048/4096 (50%)"), "{row}");
}

/// An XDP program (`return XDP_PASS`) loaded by the test and attached to
/// a lab namespace's eth0; detached and closed on drop.
struct XdpPass {
    ns: Netns,
    fd: i32,
    ifindex: i32,
}

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;

impl XdpPass {
    fn attach(ns: &Netns) -> XdpPass {
        use libbpf_rs::libbpf_sys as sys;
        // r0 = XDP_PASS (2); exit.
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        // SAFETY: two 8-byte instructions in the kernel's bpf_insn layout;
        // names are NUL-terminated.
        let fd = unsafe {
            sys::bpf_prog_load(
                sys::BPF_PROG_TYPE_XDP,
                c"plumb_t_xdp".as_ptr(),
                c"GPL".as_ptr(),
                insns.as_ptr().cast(),
                insns.len() as _,
                std::ptr::null_mut(),
            )
        };
        assert!(fd >= 0, "load the XDP program: {fd}");
        let ifindex = ns
            .run(move || {
                // SAFETY: if_nametoindex and bpf_xdp_attach on this thread,
                // inside the namespace; fd is a loaded XDP program.
                unsafe {
                    let i = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
                    let r = sys::bpf_xdp_attach(i, fd, XDP_FLAGS_SKB_MODE, std::ptr::null());
                    (i, r)
                }
            })
            .unwrap();
        assert!(ifindex.0 > 0 && ifindex.1 == 0, "attach XDP: {ifindex:?}");
        XdpPass {
            ns: ns.clone(),
            fd,
            ifindex: ifindex.0,
        }
    }
}

impl Drop for XdpPass {
    fn drop(&mut self) {
        let i = self.ifindex;
        let _ = self.ns.run(move || {
            // SAFETY: detach whatever XDP program eth0 has, in its namespace.
            unsafe {
                libbpf_rs::libbpf_sys::bpf_xdp_detach(i, XDP_FLAGS_SKB_MODE, std::ptr::null())
            }
        });
        // SAFETY: closing the program descriptor this guard owns.
        unsafe { libc::close(self.fd) };
    }
}

#[test]
fn xdp_program_in_a_namespace_without_netfilter_rules_is_reported() {
    root();
    let mut lab = Lab::new("xdp").expect("lab");
    let pod = lab.add_pod("p").expect("pod");
    let _xdp = XdpPass::attach(&pod.ns);
    let r = audit(&pod.ns, "datapath");
    let scope = &r.scopes[0];
    assert_eq!(scope.netfilter_rules, 0);
    let d = scope.datapath.as_ref().expect("datapath");
    let progs = d.tc_xdp_programs.clone().expect("bpftool listed the hooks");
    assert_eq!(progs.len(), 1, "{progs:?}");
    assert!(
        progs[0].starts_with("plumb_t_xdp (id ") && progs[0].ends_with(") on eth0 (xdp generic)"),
        "{progs:?}"
    );
    let f = r
        .findings
        .iter()
        .find(|f| f.check == "datapath")
        .expect("a datapath finding for the namespace");
    assert_eq!(
        f.title,
        "no kube-proxy chains, 1 BPF programs on TC/XDP hooks"
    );
    assert!(
        f.evidence.contains(&format!("BPF on TC/XDP: {}", progs[0])),
        "{:?}",
        f.evidence
    );
    assert_eq!(f.netns.as_deref(), Some(pod.ns.path().to_str().unwrap()));
}
