//! The lab binary, and what happens to a lab whose owner is SIGKILLed: its
//! namespaces, process and cgroups stay behind (no `Drop` ran) and are
//! removed by the next lab start.

use plumb_netlab::{cgroup, Lab};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[test]
fn a_killed_owners_lab_is_removed_at_the_next_start() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the lab needs root");
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumb-netlab"))
        .args([
            "--pods",
            "1",
            "--remote-pods",
            "1",
            "--k8s",
            "--tag",
            "dead",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start plumb-netlab");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut lines = Vec::new();
    let mut line = String::new();
    while lines.len() < 4 {
        line.clear();
        assert!(
            out.read_line(&mut line).expect("read") > 0,
            "plumb-netlab exited early: {lines:?}"
        );
        lines.push(line.trim_end().to_string());
    }
    let id: u32 = lines[0]
        .strip_prefix("lab ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("first line names the lab: {lines:?}"));
    let rows: Vec<Vec<&str>> = lines[2..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][1], "0", "p1 on node 0: {lines:?}");
    assert_eq!(rows[1][1], "1", "q1 on node 1: {lines:?}");
    let ns: Vec<PathBuf> = rows
        .iter()
        .map(|r| PathBuf::from("/run/netns").join(r[0]))
        .collect();
    let cg = cgroup::v2_root()
        .expect("cgroup v2")
        .join(cgroup::lab_slice(id));
    assert!(ns.iter().all(|p| p.exists()) && cg.exists());
    // The pods answer each other across the nodes.
    let ping = Command::new("nsenter")
        .arg(format!("--net={}", ns[0].display()))
        .args(["ping", "-c1", "-W2", rows[1][2]])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "cross-node ping");

    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(ns.iter().all(|p| p.exists()), "a SIGKILL leaves it behind");
    let next = Lab::new("next").expect("next lab");
    for p in &ns {
        assert!(!p.exists(), "{} removed at the next lab start", p.display());
    }
    assert!(!cg.exists(), "{} removed", cg.display());
    drop(next);
}
