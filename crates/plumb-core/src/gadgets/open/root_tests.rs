//! Root tests: the open gadget against real opens by this process.

use crate::event::Event;
use crate::filter::{Filter, FilterArgs};
use crate::gadgets::Body;
use crate::runner::RunOptions;
use crate::testing::{self, marker, require_root};
use std::os::fd::AsRawFd;
use std::time::Duration;

fn open_of(e: &Event) -> Option<&super::Open> {
    match &e.body {
        Body::Open(x) => Some(x),
        _ => None,
    }
}

fn this_process() -> RunOptions {
    let filter = Filter::parse(
        &FilterArgs {
            pid: Some(std::process::id().to_string()),
            ..Default::default()
        },
        None,
    )
    .expect("filter");
    RunOptions {
        filter,
        ..Default::default()
    }
}

#[test]
fn open_of_a_temp_path_has_flags_and_fd() {
    require_root();
    let t = testing::start(&super::DESC, this_process());
    let path = std::env::temp_dir().join(marker("open"));
    let f = std::fs::File::create(&path).expect("create");
    let fd = f.as_raw_fd() as i64;
    let p = path.to_string_lossy().into_owned();
    let ev = t
        .wait_for(Duration::from_secs(10), |e| {
            open_of(e).is_some_and(|o| o.path == p)
        })
        .expect("open of the temp path not seen");
    let o = open_of(&ev).unwrap();
    assert_eq!(o.fd, Some(fd));
    assert_eq!(o.errno, None);
    assert_eq!(o.flags, "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC");
    assert_eq!(o.mode.as_deref(), Some("0666"));
    assert_eq!(o.syscall, "openat");
    assert_eq!(ev.header.pid, Some(std::process::id()));
    drop(f);
    std::fs::remove_file(&path).expect("cleanup");
    t.finish();
}

#[test]
fn open_of_a_missing_path_reports_enoent() {
    require_root();
    let t = testing::start(&super::DESC, this_process());
    let path = std::env::temp_dir().join(marker("missing")).join("nope");
    let err = std::fs::File::open(&path).expect_err("must not exist");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    let p = path.to_string_lossy().into_owned();
    let ev = t
        .wait_for(Duration::from_secs(10), |e| {
            open_of(e).is_some_and(|o| o.path == p)
        })
        .expect("failed open not seen");
    let o = open_of(&ev).unwrap();
    assert_eq!(o.errno.as_deref(), Some("ENOENT"));
    assert_eq!(o.fd, None);
    assert_eq!(o.flags, "O_RDONLY|O_CLOEXEC");
    t.finish();
}
