//! Build-script helper shared by every crate that owns BPF programs.
//!
//! A gadget is one folder holding its `NAME.bpf.c` next to its Rust owner.
//! This helper finds every `*.bpf.c` below a directory, compiles it with
//! clang (`-target bpf -g -O2`, CO-RE against the vendored `vmlinux.h`) and
//! writes the libbpf-rs skeleton to `OUT_DIR/NAME.skel.rs`. Nothing is ever
//! written into the source tree.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// Directory holding `vmlinux.h` and `plumb.h`, shared by all BPF sources.
pub fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bpf/include")
        .canonicalize()
        .unwrap_or_else(|e| panic!("bpf/include missing next to plumb-build: {e}"))
}

fn find_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_sources(&path, out);
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".bpf.c"))
        {
            out.push(path);
        }
    }
}

/// Compile every `*.bpf.c` found below `src_dir` (relative to the calling
/// crate's manifest directory) into a skeleton `OUT_DIR/<stem>.skel.rs`.
///
/// Panics with the compiler's message on failure: this runs in a build script,
/// where a panic is how an error is reported.
pub fn build_gadgets(src_dir: &str) {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let include = include_dir();
    let mut sources = Vec::new();
    find_sources(&manifest.join(src_dir), &mut sources);
    sources.sort();

    // A directory makes cargo rescan everything below it, so new gadgets
    // (and their headers) are picked up.
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join(src_dir).display()
    );
    println!("cargo:rerun-if-changed={}", include.display());
    for header in ["plumb.h", "vmlinux.h"] {
        println!("cargo:rerun-if-changed={}", include.join(header).display());
    }
    let clang = env::var("PLUMB_CLANG").unwrap_or_else(|_| "clang".to_string());
    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let file = src.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let stem = file.trim_end_matches(".bpf.c");
        let skel = out_dir.join(format!("{stem}.skel.rs"));
        let obj = out_dir.join(format!("{stem}.bpf.o"));
        if let Err(e) = libbpf_cargo::SkeletonBuilder::new()
            .source(&src)
            .obj(&obj)
            .clang(&clang)
            .clang_args([
                "-I".as_ref(),
                include.as_os_str(),
                "-I".as_ref(),
                src.parent().unwrap_or(Path::new(".")).as_os_str(),
                "-Wall".as_ref(),
                "-Wno-unused-function".as_ref(),
            ])
            .build_and_generate(&skel)
        {
            panic!("building BPF object {}: {e:#}", src.display());
        }
    }
}
