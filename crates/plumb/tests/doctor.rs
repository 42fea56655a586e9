//! `plumb doctor` on a lab with a DROP rule and a duplicated chain: the
//! report lists both, with the drop reason and the namespace it hit, and its
//! JSON holds the same facts.

use plumb_netlab::Lab;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

#[test]
fn doctor_reports_duplicates_and_the_drop_reason_with_the_pod() {
    plumb_core::testing::require_root();
    let mut lab = Lab::new("doc").expect("lab");
    let client = lab.add_pod("cli").expect("client");
    let server = lab.add_pod("srv").expect("server");
    let port = 8443;
    server
        .ns
        .sh(&format!(
            "iptables -w -A INPUT -p tcp --dport {port} -j DROP"
        ))
        .expect("drop rule");
    let mut rules = String::from("*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n");
    for _ in 0..500 {
        rules.push_str("-A FORWARD -p IPv4 --ip-src 10.2.207.1/24 -j ACCEPT\n");
    }
    let file = std::env::temp_dir().join(format!("plumb-doctor-{}.rules", std::process::id()));
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(rules.as_bytes()))
        .expect("rules");
    server
        .ns
        .sh(&format!("ebtables-restore < {}", file.display()))
        .expect("ebtables");
    std::fs::remove_file(&file).expect("cleanup");

    let doctor = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["doctor", "--duration", "6s", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn doctor");
    // Let the tracers attach, then knock on the closed port.
    std::thread::sleep(Duration::from_secs(2));
    let target = SocketAddr::from((server.ip, port));
    let r = client
        .ns
        .run(move || TcpStream::connect_timeout(&target, Duration::from_millis(1500)))
        .expect("run");
    assert!(r.is_err());
    let out = doctor.wait_with_output().expect("doctor");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");

    let dup = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["data"]["chain"] == "FORWARD" && f["data"]["tool"] == "ebtables")
        .unwrap_or_else(|| panic!("duplicated chain not reported: {}", v["findings"]));
    assert_eq!(dup["data"]["copies"], 499);
    assert_eq!(dup["netns"], server.ns.name.as_str());

    let drop = v["drops"]
        .as_array()
        .expect("drops")
        .iter()
        .find(|d| d["key"] == "NETFILTER_DROP")
        .unwrap_or_else(|| panic!("NETFILTER_DROP not reported: {}", v["drops"]));
    assert!(drop["count"].as_u64().unwrap() >= 1);
    let hit = format!("netns {}", server.ns.name);
    assert!(
        drop["hit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_str().unwrap().starts_with(&hit)),
        "the drop names the namespace it hit: {}",
        drop["hit"]
    );
    assert_eq!(
        drop["more"],
        "plumb trace drop --reason NETFILTER_DROP --stack"
    );
}
