//! `plumb audit` from the command line: JSON and table output on a lab
//! namespace with a duplicated chain, bad flags as one line and an exit
//! code, and `--all-netns` naming the pod that owns a namespace from the
//! kubepods-style cgroup of a process inside it.

mod support;

use plumb_core::testing::require_root;
use plumb_netlab::{Lab, Netns};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use support::run;

fn restore_ebtables(ns: &Netns, text: &str) {
    let path = std::env::temp_dir().join(format!("plumb-audit-cli-{}.rules", ns.name));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("rules file");
    let r = ns.sh(&format!("ebtables-restore < {}", path.display()));
    std::fs::remove_file(&path).expect("cleanup");
    r.expect("ebtables-restore");
}

#[test]
fn json_and_table_hold_the_lab_duplicate_chain() {
    require_root();
    let mut lab = Lab::new("acli").expect("lab");
    let pod = lab.add_pod("p").expect("pod");
    let mut rules = String::from("*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n");
    for _ in 0..50 {
        rules.push_str("-A FORWARD -p IPv4 --ip-src 10.2.207.1/24 -j ACCEPT\n");
    }
    for i in 0..20 {
        rules.push_str(&format!(
            "-A OUTPUT -p IPv4 --ip-dst 10.3.{i}.0/24 -j ACCEPT\n"
        ));
    }
    restore_ebtables(&pod.ns, &rules);
    let path = pod.ns.path();
    let path = path.to_str().unwrap();

    let (code, out, err) = run(&[
        "audit",
        "--netns",
        path,
        "--only",
        "netfilter",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("audit JSON");
    let dups: Vec<&serde_json::Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["data"]["copies"].is_u64())
        .collect();
    assert_eq!(dups.len(), 1, "only FORWARD is duplicated: {dups:?}");
    let title = "chain FORWARD in table bridge filter (ebtables) has 50 rules, 49 of them copies of rule #1";
    assert_eq!(dups[0]["title"], title);
    assert_eq!(dups[0]["data"]["copies"], 49);
    assert_eq!(dups[0]["netns"], path);
    let chain = |name: &str| {
        v["scopes"][0]["chains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["tool"] == "ebtables" && c["chain"] == name)
            .map(|c| c["rules"].as_u64().unwrap())
    };
    assert_eq!((chain("FORWARD"), chain("OUTPUT")), (Some(50), Some(20)));

    let (code, table, err) = run(&["audit", "--netns", path, "--only", "netfilter"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains(&format!("[CRITICAL] netfilter: {title}\n"))
            || table.contains(&format!("[WARNING] netfilter: {title}\n")),
        "{table}"
    );
    assert!(
        table.contains("- rule #1: -p IPv4 --ip-src 10.2.207.0/24 -j ACCEPT\n"),
        "{table}"
    );
    let row = |chain: &str| {
        table
            .lines()
            .find(|l| l.ends_with(&format!("bridge filter {chain} (ebtables)")))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
    };
    assert_eq!(
        (row("FORWARD").as_deref(), row("OUTPUT").as_deref()),
        (Some("50"), Some("20")),
        "{table}"
    );
}

#[test]
fn a_bad_only_value_is_one_line_and_exit_2() {
    let (code, out, err) = run(&["audit", "--only", "netfilter,bogus"]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert_eq!(
        err,
        "plumb: bad value for --only: unknown check 'bogus'; checks are: netfilter, conntrack, bpf-maps, datapath, interfaces\n"
    );
}

#[test]
fn a_missing_netns_path_is_one_line_and_fails() {
    let missing = format!("/run/netns/plumb-no-such-{}", std::process::id());
    let (code, out, err) = run(&["audit", "--netns", &missing]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert_eq!(
        err,
        format!("plumb: cannot open network namespace {missing}: No such file or directory (os error 2)\n")
    );
    let (code, _, err) = run(&["audit", "--netns", "/proc/self/ns/mnt"]);
    assert_ne!(code, 0);
    assert_eq!(err, "plumb: /proc/self/ns/mnt is not a network namespace\n");
}

/// A process inside a lab namespace, in a cgroup laid out as the kubelet
/// (systemd driver) and containerd lay out a pod's container. Killed and
/// its cgroups removed on drop.
struct FakeContainer {
    child: Child,
    cgroups: Vec<PathBuf>,
}

impl FakeContainer {
    fn start(ns: &Netns, uid: &str, id: &str) -> FakeContainer {
        let v2 = plumb_core::enrich::cgroupfs::CgroupFs::discover()
            .expect("a cgroup v2 hierarchy")
            .root()
            .to_path_buf();
        let top = v2.join(format!("plumb-test-{}.slice", std::process::id()));
        let pod = top.join(format!(
            "kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        let scope = pod.join(format!("cri-containerd-{id}.scope"));
        let mut c = FakeContainer {
            // nsenter execs sleep in the namespace: the child is the process.
            child: Command::new("nsenter")
                .arg(format!("--net={}", ns.path().display()))
                .args(["sleep", "300"])
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep in the namespace"),
            cgroups: Vec::new(),
        };
        for dir in [&top, &pod, &scope] {
            std::fs::create_dir(dir).expect("create cgroup");
            c.cgroups.push(dir.clone());
        }
        // Wait until nsenter has entered the namespace and exec'd.
        let pid = c.child.id();
        let want = format!("net:[{}]", ns.inode);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .map(|l| l.to_string_lossy() != want)
            .unwrap_or(true)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep never entered {}",
                ns.name
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::fs::write(scope.join("cgroup.procs"), pid.to_string()).expect("move into cgroup");
        c
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in self.cgroups.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn all_netns_finds_the_lab_namespaces_and_names_the_pod() {
    require_root();
    let mut lab = Lab::new("aall").expect("lab");
    let owned = lab.add_pod("own").expect("pod");
    let bare = lab.add_pod("bare").expect("pod");
    let uid = format!(
        "5e1f{:04x}-9a3b-4c2d-8e7f-0a1b2c3d4e5f",
        std::process::id() % 0x10000
    );
    let id = format!("{:064x}", 0xc0ffee_u64 + u64::from(std::process::id()));
    let _container = FakeContainer::start(&owned.ns, &uid, &id);

    let (code, out, err) = run(&["audit", "--all-netns", "--only", "interfaces", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("audit JSON");
    let scope = |name: &str| {
        v["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} not audited: {}", v["scopes"]))
            .clone()
    };
    assert_eq!(scope("host")["host"], true);
    let node = scope(&lab.node(0).name);
    assert_eq!(node["inode"], lab.node(0).inode);
    let b = scope(&bare.ns.name);
    assert_eq!(b["inode"], bare.ns.inode);
    assert!(b["owner"].is_null(), "nothing runs in it: {}", b["owner"]);
    let o = scope(&owned.ns.name);
    assert_eq!(o["inode"], owned.ns.inode);
    assert_eq!(o["owner"]["pod_uid"], uid.as_str());
    assert_eq!(o["owner"]["container_id"], id.as_str());
    assert_eq!(o["owner"]["pid"], _container.child.id());
    let text = format!("pod uid {uid}, container {}", &id[..12]);
    assert_eq!(o["owner"]["text"], text.as_str());

    let (code, table, err) = run(&["audit", "--all-netns", "--only", "interfaces"]);
    assert_eq!(code, 0, "{err}");
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with(&owned.ns.name))
        .unwrap_or_else(|| panic!("no row for {}:\n{table}", owned.ns.name));
    assert!(row.ends_with(&text), "{row}");
    assert!(row.contains(&owned.ns.inode.to_string()), "{row}");
}
