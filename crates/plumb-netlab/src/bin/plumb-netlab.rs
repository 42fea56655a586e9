//! The network lab for humans: build a lab, print its pods, hold it until
//! Ctrl-C or SIGTERM, then tear it down (the same code the tests use).
//! `scripts/netlab.sh up` runs this.

use plumb_netlab::Lab;
use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "usage: plumb-netlab [--pods N] [--remote-pods K] [--k8s] [--tag WORD]
       plumb-netlab --clean   (remove what labs whose owner is gone left behind, and exit)
  --pods N         pods on node 0 (default 2)
  --remote-pods K  pods on a second node, joined to the first by a routed link (default 0)
  --k8s            give every pod a process in a kubepods-style cgroup (pod UID, container id)
  --tag WORD       a word in the namespace names (default lab)";

struct Args {
    clean: bool,
    pods: usize,
    remote: usize,
    k8s: bool,
    tag: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        clean: false,
        pods: 2,
        remote: 0,
        k8s: false,
        tag: "lab".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--pods" => {
                a.pods = value("--pods")?
                    .parse()
                    .map_err(|e| format!("--pods: {e}"))?
            }
            "--remote-pods" => {
                a.remote = value("--remote-pods")?
                    .parse()
                    .map_err(|e| format!("--remote-pods: {e}"))?
            }
            "--k8s" => a.k8s = true,
            "--clean" => a.clean = true,
            "--tag" => a.tag = value("--tag")?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// Block SIGINT and SIGTERM (they are then only ever taken by `sigwait`).
fn block_signals() -> libc::sigset_t {
    // SAFETY: signal-set manipulation on a local set, for this one thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: waits on a set of signals this thread has blocked.
    unsafe { libc::sigwait(set, &mut sig) };
}

fn build(a: &Args) -> plumb_netlab::Result<Lab> {
    let mut lab = Lab::new(&a.tag)?;
    let remote_node = if a.remote > 0 {
        Some(lab.add_node()?)
    } else {
        None
    };
    let plan = (1..=a.pods)
        .map(|i| (0, format!("p{i}")))
        .chain((1..=a.remote).map(|i| (remote_node.unwrap_or(0), format!("q{i}"))));
    for (node, name) in plan {
        if a.k8s {
            lab.add_k8s_pod_on(node, &name)?;
        } else {
            lab.add_pod_on(node, &name)?;
        }
    }
    Ok(lab)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("plumb-netlab: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.clean {
        plumb_netlab::alloc::clean_stale();
        return ExitCode::SUCCESS;
    }
    // Blocked before anything is built, so a signal that arrives while
    // building still tears the lab down.
    let signals = block_signals();
    let lab = match build(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("plumb-netlab: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "lab {} (Ctrl-C or SIGTERM tears it down)", lab.id());
    let _ = writeln!(
        out,
        "{:<22} {:<4} {:<14} {:<24} {:<36} CONTAINER_ID",
        "NETNS", "NODE", "IPV4", "IPV6", "POD_UID"
    );
    for p in lab.pods() {
        let (uid, cid) = p
            .k8s
            .as_ref()
            .map(|k| (k.pod_uid.as_str(), k.container_id.as_str()))
            .unwrap_or(("-", "-"));
        let _ = writeln!(
            out,
            "{:<22} {:<4} {:<14} {:<24} {:<36} {}",
            p.ns.name,
            p.node,
            p.ip.to_string(),
            p.ip6.to_string(),
            uid,
            cid
        );
    }
    let _ = out.flush();
    drop(out);
    wait_for_signal(&signals);
    drop(lab);
    ExitCode::SUCCESS
}
