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

/// openat2(2), which takes its flags in a struct: flags, mode and the fd
/// come from that struct and the result.
#[test]
fn openat2_reads_its_flags_from_open_how() {
    require_root();
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let t = testing::start(&super::DESC, this_process());
    let path = std::env::temp_dir().join(marker("openat2"));
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let how = OpenHow {
        flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC) as u64,
        mode: 0o640,
        resolve: 0,
    };
    // SAFETY: openat2 with a NUL-terminated path and an open_how of the
    // size passed; the returned descriptor is closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    assert!(fd >= 0, "openat2: {}", std::io::Error::last_os_error());
    let p = path.to_string_lossy().into_owned();
    let ev = t
        .wait_for(Duration::from_secs(10), |e| {
            open_of(e).is_some_and(|o| o.path == p)
        })
        .expect("openat2 of the temp path not seen");
    let o = open_of(&ev).unwrap();
    assert_eq!(o.syscall, "openat2");
    assert_eq!(o.fd, Some(fd));
    assert_eq!(o.flags, "O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC");
    assert_eq!(o.mode.as_deref(), Some("0640"));
    // SAFETY: closing the descriptor openat2 returned.
    unsafe { libc::close(fd as i32) };
    std::fs::remove_file(&path).expect("cleanup");
    t.finish();
}
