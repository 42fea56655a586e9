//! Root tests: the exec gadget against real execs.

use crate::event::Event;
use crate::filter::{Filter, FilterArgs};
use crate::gadgets::Body;
use crate::runner::RunOptions;
use crate::testing::{self, marker, require_root};
use std::process::Command;
use std::time::Duration;

fn exec_of(e: &Event) -> Option<&super::Exec> {
    match &e.body {
        Body::Exec(x) => Some(x),
        _ => None,
    }
}

fn has_arg(e: &Event, m: &str) -> bool {
    exec_of(e).is_some_and(|x| x.args.iter().any(|a| a == m))
}

#[test]
fn marker_exec_is_seen_with_pid_ppid_and_args() {
    require_root();
    let t = testing::start(&super::DESC, RunOptions::default());
    let m = marker("exec");
    let child = Command::new("/bin/true")
        .arg(&m)
        .spawn()
        .expect("spawn /bin/true");
    let child_pid = child.id();
    let mut child = child;
    child.wait().expect("wait");
    let ev = t
        .wait_for(Duration::from_secs(10), |e| has_arg(e, &m))
        .expect("exec of /bin/true with the marker was not seen");
    let x = exec_of(&ev).unwrap();
    assert_eq!(ev.header.pid, Some(child_pid));
    assert_eq!(x.ppid, std::process::id());
    assert_eq!(x.filename, "/bin/true");
    assert_eq!(x.args, vec!["/bin/true".to_string(), m.clone()]);
    assert_eq!(x.retval, 0);
    assert_eq!(ev.header.comm.as_deref(), Some("true"));
    assert!(!x.args_truncated);
    t.finish();
}

#[test]
fn failed_exec_carries_its_errno() {
    require_root();
    let t = testing::start(&super::DESC, RunOptions::default());
    let m = marker("noexec");
    let path = format!("/nonexistent-dir-{m}/prog");
    let err = Command::new(&path)
        .arg(&m)
        .spawn()
        .expect_err("must not start");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    let ev = t
        .wait_for(Duration::from_secs(10), |e| {
            exec_of(e).is_some_and(|x| x.filename == path)
        })
        .expect("failed exec not seen");
    let x = exec_of(&ev).unwrap();
    assert_eq!(x.retval, -libc::ENOENT);
    assert_eq!(x.error.as_deref(), Some("ENOENT"));
    assert_eq!(x.args, vec![path.clone(), m]);
    t.finish();
}

#[test]
fn long_argument_lists_are_truncated_with_a_marker() {
    require_root();
    let t = testing::start(&super::DESC, RunOptions::default());
    let m = marker("longargs");
    let filler: Vec<String> = (0..100)
        .map(|i| format!("{i:03}-{}", "x".repeat(60)))
        .collect();
    Command::new("/bin/true")
        .arg(&m)
        .args(&filler)
        .status()
        .expect("run");
    let ev = t
        .wait_for(Duration::from_secs(10), |e| has_arg(e, &m))
        .expect("exec not seen");
    let x = exec_of(&ev).unwrap();
    assert!(
        x.args_truncated,
        "6 KiB of arguments must be marked truncated"
    );
    assert_eq!(
        &x.args[..3],
        &["/bin/true".to_string(), m, filler[0].clone()]
    );
    let kept: usize = x.args.iter().map(|a| a.len() + 1).sum();
    assert!(kept <= 4096 + 1, "kept {kept} bytes");
    t.finish();
}

/// A cgroup v2 directory removed on drop.
struct TempCgroup(std::path::PathBuf);

impl Drop for TempCgroup {
    fn drop(&mut self) {
        // Processes have exited by now; a cgroup with none can be removed.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn cgroup_filter_selects_only_that_cgroup_and_attributes_it() {
    require_root();
    let fs = crate::enrich::cgroupfs::CgroupFs::discover().expect("a cgroup v2 hierarchy");
    let name = marker("cg");
    let dir = fs.root().join(&name);
    std::fs::create_dir(&dir).expect("create cgroup");
    let cg = TempCgroup(dir.clone());
    let filter = Filter::parse(
        &FilterArgs {
            cgroup: vec![format!("/{name}")],
            ..Default::default()
        },
        Some(fs.root()),
    )
    .expect("filter");
    let id = filter.cgroups[0].id;
    let t = testing::start(
        &super::DESC,
        RunOptions {
            filter,
            ..Default::default()
        },
    );
    let inside = marker("inside");
    let outside = marker("outside");
    let procs = cg.0.join("cgroup.procs");
    let script = format!("echo $$ > {} && exec /bin/true {inside}", procs.display());
    let st = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .status()
        .expect("sh");
    assert!(st.success());
    Command::new("/bin/true")
        .arg(&outside)
        .status()
        .expect("true");
    let ev = t
        .wait_for(Duration::from_secs(10), |e| has_arg(e, &inside))
        .expect("exec inside the cgroup not seen");
    assert_eq!(ev.header.cgroup_id, id);
    assert_eq!(
        ev.header.cgroup.as_deref(),
        Some(format!("/{name}").as_str())
    );
    // Give the outside exec time to arrive if the filter were broken.
    std::thread::sleep(Duration::from_millis(300));
    let (events, _) = t.finish();
    assert!(
        !events.iter().any(|e| has_arg(e, &outside)),
        "exec outside the cgroup leaked through"
    );
    assert!(
        events.iter().all(|e| e.header.cgroup_id == id),
        "every event is from the cgroup"
    );
    drop(cg);
}

/// The kernel part of the filter, alone: user space keeps everything it is
/// handed, so whatever does not reach it was dropped in the kernel.
#[test]
fn kernel_filter_drops_other_cgroups_and_commands() {
    require_root();
    let cg = testing::TestCgroup::new(&format!("plumb-test-kfilter-{}", std::process::id()));
    let mut opts = RunOptions::default();
    // Cgroups newer than the one just made's parent pass: this one does,
    // the test's own (older) cgroup does not.
    opts.filter.kernel_newer_than = cg.id() - 1;
    let t = testing::start(&super::DESC, opts);
    let (inside, outside) = (marker("kf-in"), marker("kf-out"));
    cg.spawn(Command::new("/bin/true").arg(&inside))
        .wait()
        .expect("wait");
    Command::new("/bin/true")
        .arg(&outside)
        .status()
        .expect("run outside");
    t.wait_for(Duration::from_secs(10), |e| has_arg(e, &inside))
        .expect("exec in the new cgroup passes the kernel filter");
    std::thread::sleep(Duration::from_millis(300));
    let (events, stats) = t.finish();
    assert!(!events.iter().any(|e| has_arg(e, &outside)));
    assert_eq!(
        stats.filtered, 0,
        "dropped in the kernel, not in user space"
    );

    // --comm, checked in the kernel at exec's exit (exec changes the name).
    let filter = Filter::parse(
        &FilterArgs {
            comm: Some("true".into()),
            ..Default::default()
        },
        None,
    )
    .expect("filter");
    let t = testing::start(
        &super::DESC,
        RunOptions {
            filter,
            ..Default::default()
        },
    );
    let (wanted, other) = (marker("kf-true"), marker("kf-echo"));
    Command::new("/bin/echo")
        .arg(&other)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("echo");
    Command::new("/bin/true")
        .arg(&wanted)
        .status()
        .expect("true");
    t.wait_for(Duration::from_secs(10), |e| has_arg(e, &wanted))
        .expect("the exec of true, whose name matches after exec");
    std::thread::sleep(Duration::from_millis(300));
    let (events, stats) = t.finish();
    assert!(!events.iter().any(|e| has_arg(e, &other)));
    assert!(events
        .iter()
        .all(|e| e.header.comm.as_deref() == Some("true")));
    assert_eq!(
        stats.filtered, 0,
        "dropped in the kernel, not in user space"
    );
}
