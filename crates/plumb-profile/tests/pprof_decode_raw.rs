//! The pprof output read by a decoder that shares nothing with ours:
//! `protoc --decode_raw` prints the wire format by field number, and the
//! numbers are checked against perftools.profiles.Profile as published
//! (sample_type = 1, sample = 2, mapping = 3, location = 4, function = 5,
//! string_table = 6, duration_nanos = 10, period_type = 11, period = 12).
//! Needs `protoc` (Debian's protobuf-compiler); fails without it.

use plumb_profile::{Completeness, Frame, Profile, Stack};
use std::collections::HashMap;
use std::io::Read;
use std::process::Command;
use std::sync::Arc;

/// A field's value as decode_raw prints it.
#[derive(Debug, Clone)]
enum Value {
    Int(u64),
    Bytes(Vec<u8>),
    Msg(Msg),
}

#[derive(Debug, Clone, Default)]
struct Msg(Vec<(u32, Value)>);

impl Msg {
    fn all(&self, field: u32) -> impl Iterator<Item = &Value> {
        self.0
            .iter()
            .filter(move |(f, _)| *f == field)
            .map(|(_, v)| v)
    }
    fn msgs(&self, field: u32) -> Vec<&Msg> {
        self.all(field)
            .map(|v| match v {
                Value::Msg(m) => m,
                other => panic!("field {field}: expected a message, got {other:?}"),
            })
            .collect()
    }
    fn int(&self, field: u32) -> u64 {
        match self.all(field).next() {
            None => 0, // proto3 leaves zeros out
            Some(Value::Int(n)) => *n,
            Some(other) => panic!("field {field}: expected a number, got {other:?}"),
        }
    }
    /// A packed repeated varint field: one length-delimited blob.
    fn packed(&self, field: u32) -> Vec<u64> {
        let mut out = Vec::new();
        for v in self.all(field) {
            match v {
                Value::Bytes(b) => out.extend(varints(b)),
                Value::Int(n) => out.push(*n), // not packed: also valid
                Value::Msg(m) => panic!(
                    "field {field}: decode_raw took these packed varints for a message ({m:?}); \
                     pick other counts for the test profile"
                ),
            }
        }
        out
    }
}

fn varints(mut b: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (mut n, mut shift) = (0u64, 0);
        loop {
            let (byte, rest) = b.split_first().expect("a truncated varint");
            b = rest;
            n |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        out.push(n);
    }
    out
}

/// Undo protoc's C escaping of a quoted string.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        i += 2;
        match c {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'\\' | b'"' | b'\'' => out.push(c),
            b'0'..=b'7' => {
                let mut n = u32::from(c - b'0');
                for _ in 0..2 {
                    match b.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            n = n * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(n as u8);
            }
            b'x' => {
                let hex = std::str::from_utf8(&b[i..i + 2]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            other => panic!("unknown escape \\{}", other as char),
        }
    }
    out
}

/// decode_raw's text: `N: value`, `N {` ... `}`.
fn parse(text: &str) -> Msg {
    let mut stack = vec![(0u32, Msg::default())];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "}" {
            let (field, msg) = stack.pop().unwrap();
            stack
                .last_mut()
                .unwrap()
                .1
                 .0
                .push((field, Value::Msg(msg)));
        } else if let Some(field) = line.strip_suffix(" {") {
            stack.push((field.parse().unwrap(), Msg::default()));
        } else {
            let (field, v) = line.split_once(": ").unwrap_or_else(|| panic!("{line}"));
            let v = if let Some(q) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Value::Bytes(unescape(q))
            } else if let Some(h) = v.strip_prefix("0x") {
                Value::Int(u64::from_str_radix(h, 16).unwrap())
            } else {
                Value::Int(v.parse().unwrap_or_else(|_| panic!("{line}")))
            };
            stack
                .last_mut()
                .unwrap()
                .1
                 .0
                .push((field.parse().unwrap(), v));
        }
    }
    assert_eq!(stack.len(), 1, "unbalanced braces");
    stack.pop().unwrap().1
}

fn profile() -> Profile {
    let frame = |name: &str, module: &str| Frame {
        name: Arc::from(name),
        module: Some(Arc::from(module)),
        kernel: module == "kernel",
        symbolized: true,
    };
    let app = |names: &[&str]| -> Vec<Frame> {
        names
            .iter()
            .map(|n| {
                frame(
                    n,
                    if n.starts_with("__x64") {
                        "kernel"
                    } else {
                        "/bin/app"
                    },
                )
            })
            .collect()
    };
    // Counts whose varints do not also read as a message (see `packed`).
    let st = |comm: &str, pid: u32, frames: Vec<Frame>, count| Stack {
        comm: comm.into(),
        pid,
        tid: pid + 1,
        cgroup_id: 1,
        workload: Arc::default(),
        frames,
        count,
    };
    Profile {
        node: "n1".into(),
        frequency_hz: 99,
        started: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        duration_ns: 5_000_000_000,
        symbolize_ns: 0,
        symbolize_cpu_ns: 0,
        cpus: 2,
        max_stack_depth: 127,
        completeness: Completeness::default(),
        prog_ids: Vec::new(),
        stacks: vec![
            st("app", 10, app(&["main", "hot"]), 70),
            st("app", 10, app(&["main", "write", "__x64_sys_write"]), 20),
            st("sh", 12, vec![frame("main", "/bin/sh")], 5),
        ],
    }
}

#[test]
fn protoc_reads_the_profile_fields_and_the_totals() {
    let p = profile();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(plumb_profile::pprof::encode_gz(&p).as_slice())
        .read_to_end(&mut raw)
        .expect("our output is gzip");
    let mut child = Command::new("protoc")
        .arg("--decode_raw")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("protoc (package protobuf-compiler) must be installed");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &raw).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "protoc refused our bytes");
    let text = String::from_utf8(out.stdout).unwrap();
    let top = parse(&text);

    let fields: std::collections::BTreeSet<u32> = top.0.iter().map(|(f, _)| *f).collect();
    assert_eq!(
        fields.into_iter().collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13],
        "{text}"
    );
    let strings: Vec<String> = top
        .all(6)
        .map(|v| match v {
            Value::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("string_table entry {other:?}"),
        })
        .collect();
    assert_eq!(strings[0], "", "string_table[0] must be empty");
    let s = |i: u64| strings[i as usize].as_str();

    // sample_type: ValueType { type = 1, unit = 2 }.
    let types: Vec<(&str, &str)> = top
        .msgs(1)
        .iter()
        .map(|t| (s(t.int(1)), s(t.int(2))))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    let pt = top.msgs(11);
    assert_eq!((s(pt[0].int(1)), s(pt[0].int(2))), ("cpu", "nanoseconds"));
    let period = 1_000_000_000 / 99;
    assert_eq!(top.int(12), period);
    assert_eq!(top.int(10), 5_000_000_000);
    assert_eq!(top.int(9), 1_700_000_000 * 1_000_000_000);

    // mapping: id = 1, filename = 5.
    let mappings: HashMap<u64, &str> = top
        .msgs(3)
        .iter()
        .map(|m| (m.int(1), s(m.int(5))))
        .collect();
    let mut files: Vec<&str> = mappings.values().copied().collect();
    files.sort();
    assert_eq!(files, ["/bin/app", "/bin/sh", "kernel"]);
    // function: id = 1, name = 2.
    let functions: HashMap<u64, &str> = top
        .msgs(5)
        .iter()
        .map(|f| (f.int(1), s(f.int(2))))
        .collect();
    // location: id = 1, mapping_id = 2, line = 4 { function_id = 1 }.
    let locations: HashMap<u64, (&str, &str)> = top
        .msgs(4)
        .iter()
        .map(|l| {
            let line = l.msgs(4);
            (l.int(1), (functions[&line[0].int(1)], mappings[&l.int(2)]))
        })
        .collect();
    // Two `main`s: one per binary.
    let mut mains: Vec<&str> = locations
        .values()
        .filter(|(f, _)| *f == "main")
        .map(|(_, m)| *m)
        .collect();
    mains.sort();
    assert_eq!(mains, ["/bin/app", "/bin/sh"]);

    // sample: location_id = 1 (leaf first), value = 2, label = 3
    // { key = 1, str = 2, num = 3 }.
    let mut total = 0;
    let mut seen = Vec::new();
    for sample in top.msgs(2) {
        let values = sample.packed(2);
        assert_eq!(values.len(), 2);
        assert_eq!(values[1], values[0] * period, "cpu = samples x period");
        total += values[0];
        let stack: Vec<&str> = sample.packed(1).iter().map(|id| locations[id].0).collect();
        let labels: HashMap<&str, &Msg> = sample
            .msgs(3)
            .into_iter()
            .map(|l| (s(l.int(1)), l))
            .collect();
        seen.push((
            stack,
            values[0],
            s(labels["comm"].int(2)),
            labels["pid"].int(3),
            labels["tid"].int(3),
        ));
    }
    assert_eq!(total, 95);
    assert_eq!(total, p.samples());
    assert_eq!(
        seen,
        [
            (vec!["hot", "main"], 70, "app", 10, 11),
            (vec!["__x64_sys_write", "write", "main"], 20, "app", 10, 11),
            (vec!["main"], 5, "sh", 12, 13),
        ]
    );
}
