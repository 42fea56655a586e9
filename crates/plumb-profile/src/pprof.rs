//! The pprof profile format (`profile.proto` of google/pprof), the messages
//! plumb writes and reads, declared with prost's derive: a gzipped
//! `Profile` is what `go tool pprof`, Pyroscope and Parca read.

use crate::{Error, Profile as CpuProfile, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Interned strings; index 0 is the empty string, as pprof requires.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        Strings {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// Build the pprof message for a profile: two sample values (`samples/count`
/// and `cpu/nanoseconds`), one function and one location per distinct frame
/// (name and module), one mapping per module, and `pid`, `tid`, `comm`,
/// `pod`, `namespace` labels.
pub fn build(p: &CpuProfile) -> Profile {
    let mut s = Strings::new();
    let period_ns = 1_000_000_000 / i64::from(p.frequency_hz.max(1));
    let sample_type = vec![
        ValueType {
            r#type: s.get("samples"),
            unit: s.get("count"),
        },
        ValueType {
            r#type: s.get("cpu"),
            unit: s.get("nanoseconds"),
        },
    ];
    let mut mappings: HashMap<String, u64> = HashMap::new();
    let mut mapping = Vec::new();
    // Two binaries can have functions of the same name (`main`, `init`):
    // they are different functions, with different mappings.
    let mut functions: HashMap<(&str, Option<&str>, bool), u64> = HashMap::new();
    let mut function = Vec::new();
    let mut location = Vec::new();
    let mut samples = Vec::new();
    let (k_pid, k_tid, k_comm, k_pod, k_ns) = (
        s.get("pid"),
        s.get("tid"),
        s.get("comm"),
        s.get("pod"),
        s.get("namespace"),
    );
    for st in &p.stacks {
        let mut ids = Vec::with_capacity(st.frames.len() + 1);
        for f in st.frames.iter().rev() {
            let key = (&*f.name, f.module.as_deref(), f.kernel);
            let id = match functions.get(&key) {
                Some(&id) => id,
                None => {
                    let id = function.len() as u64 + 1;
                    let module = f.module.as_deref().unwrap_or("");
                    let mapping_id = if module.is_empty() {
                        0
                    } else if let Some(&m) = mappings.get(module) {
                        m
                    } else {
                        let m = mapping.len() as u64 + 1;
                        mapping.push(Mapping {
                            id: m,
                            filename: s.get(module),
                            has_functions: true,
                            ..Default::default()
                        });
                        mappings.insert(module.to_string(), m);
                        m
                    };
                    let name = s.get(&f.name);
                    function.push(Function {
                        id,
                        name,
                        system_name: name,
                        filename: 0,
                    });
                    location.push(Location {
                        id,
                        mapping_id,
                        address: 0,
                        line: vec![Line {
                            function_id: id,
                            line: 0,
                        }],
                    });
                    functions.insert(key, id);
                    id
                }
            };
            ids.push(id);
        }
        let mut label = vec![
            Label {
                key: k_pid,
                num: i64::from(st.pid),
                ..Default::default()
            },
            Label {
                key: k_tid,
                num: i64::from(st.tid),
                ..Default::default()
            },
            Label {
                key: k_comm,
                str: s.get(&st.comm),
                ..Default::default()
            },
        ];
        if let (Some(pod), Some(ns)) = (&st.workload.pod, &st.workload.namespace) {
            label.push(Label {
                key: k_pod,
                str: s.get(pod),
                ..Default::default()
            });
            label.push(Label {
                key: k_ns,
                str: s.get(ns),
                ..Default::default()
            });
        }
        samples.push(Sample {
            location_id: ids,
            value: vec![st.count as i64, st.count as i64 * period_ns],
            label,
        });
    }
    let comment = vec![s.get(&format!("plumb profile cpu on {}", p.node))];
    let period_type = Some(ValueType {
        r#type: s.get("cpu"),
        unit: s.get("nanoseconds"),
    });
    Profile {
        sample_type,
        sample: samples,
        mapping,
        location,
        function,
        string_table: s.table,
        time_nanos: p
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        duration_nanos: p.duration_ns as i64,
        period_type,
        period: period_ns,
        comment,
        default_sample_type: 0,
    }
}

/// The gzipped protobuf bytes of a profile.
pub fn encode_gz(p: &CpuProfile) -> Vec<u8> {
    use prost::Message;
    let raw = build(p).encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&raw);
    gz.finish().unwrap_or_default()
}

/// Decode a pprof file's bytes (gzipped or not).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Profile> {
    use prost::Message;
    let bad = |reason: String| Error::BadProfile {
        path: path.to_path_buf(),
        reason,
    };
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("not a valid gzip stream: {e}")))?;
        out
    } else {
        bytes.to_vec()
    };
    Profile::decode(raw.as_slice()).map_err(|e| bad(format!("not a pprof profile: {e}")))
}

/// The first folded frame of a pprof sample without a `comm` label.
pub const NO_COMM: &str = "[no comm]";

/// A pprof profile as folded stacks (`comm;root;...;leaf` → first sample
/// value), the form `diff` compares.
pub fn to_folded(p: &Profile, path: &Path) -> Result<HashMap<String, u64>> {
    let bad = |reason: &str| Error::BadProfile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let string = |i: i64| -> Result<&str> {
        p.string_table
            .get(usize::try_from(i).map_err(|_| bad("negative string index"))?)
            .map(String::as_str)
            .ok_or_else(|| bad("string index out of range"))
    };
    let funcs: HashMap<u64, &str> = p
        .function
        .iter()
        .map(|f| Ok((f.id, string(f.name)?)))
        .collect::<Result<_>>()?;
    let locs: HashMap<u64, Vec<Cow<str>>> = p
        .location
        .iter()
        .map(|l| {
            // Lines are innermost (inlined) first. A location without lines
            // is another tool's unsymbolized frame. As in plumb's own folded
            // stacks, unnamed frames carry no address.
            let names = if l.line.is_empty() {
                vec![Cow::Borrowed("[unknown]")]
            } else {
                l.line
                    .iter()
                    .map(|ln| {
                        let name = funcs.get(&ln.function_id).copied().unwrap_or("[unknown]");
                        crate::symbols::without_address(name)
                    })
                    .collect()
            };
            (l.id, names)
        })
        .collect();
    let comm_key = p
        .string_table
        .iter()
        .position(|s| s == "comm")
        .map(|i| i as i64);
    let mut out: HashMap<String, u64> = HashMap::new();
    for s in &p.sample {
        let mut frames: Vec<&str> = Vec::new();
        for id in s.location_id.iter().rev() {
            let names = locs
                .get(id)
                .ok_or_else(|| bad("sample refers to a missing location"))?;
            frames.extend(names.iter().rev().map(|n| &**n));
        }
        // Folded stacks start with the command name; a profile from another
        // tool may have none, and its root frame must stay a frame.
        let comm = comm_key
            .and_then(|k| s.label.iter().find(|l| l.key == k))
            .map(|l| string(l.str))
            .transpose()?
            .filter(|c| !c.is_empty())
            .unwrap_or(NO_COMM);
        let mut line = comm.replace(';', ":");
        for f in frames {
            line.push(';');
            line.push_str(&f.replace(';', ":"));
        }
        let v = s.value.first().copied().unwrap_or(0).max(0) as u64;
        *out.entry(line).or_default() += v;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pprof_decodes_with_the_same_totals() {
        let p = crate::output::tests::sample_profile();
        let gz = encode_gz(&p);
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzipped");
        let d = decode(&gz, Path::new("t")).unwrap();
        let st = |i: i64| d.string_table[i as usize].as_str();
        assert_eq!(st(0), "");
        let types: Vec<(&str, &str)> = d
            .sample_type
            .iter()
            .map(|t| (st(t.r#type), st(t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        let period = 1_000_000_000 / 99;
        assert_eq!(d.period, period);
        let samples: i64 = d.sample.iter().map(|s| s.value[0]).sum();
        let cpu: i64 = d.sample.iter().map(|s| s.value[1]).sum();
        assert_eq!(samples, 100);
        assert_eq!(cpu, 100 * period);
        assert_eq!(d.duration_nanos, 5_000_000_000);
        // Leaf first: the hottest sample's first location is `hot`.
        let hot = d.sample.iter().find(|s| s.value[0] == 70).unwrap();
        let leaf = &d.function[hot.location_id[0] as usize - 1];
        assert_eq!(st(leaf.name), "hot");
        // And back to the folded text it came from.
        let folded = to_folded(&d, Path::new("t")).unwrap();
        assert_eq!(folded, crate::output::parse_folded(&p.folded()).unwrap());
    }

    #[test]
    fn same_name_in_two_binaries_is_two_functions_and_tids_are_labels() {
        let mut p = crate::output::tests::sample_profile();
        // `main` of app (module /bin/app) and `main` of sh (module /bin/sh).
        for st in &mut p.stacks {
            let module = format!("/bin/{}", st.comm);
            for f in &mut st.frames {
                f.module = Some(module.as_str().into());
            }
        }
        let d = build(&p);
        let st = |i: i64| d.string_table[i as usize].as_str();
        let mains: Vec<&Function> = d.function.iter().filter(|f| st(f.name) == "main").collect();
        assert_eq!(mains.len(), 2);
        let files: Vec<&str> = mains
            .iter()
            .map(|f| {
                let loc = d.location.iter().find(|l| l.id == f.id).unwrap();
                let m = d.mapping.iter().find(|m| m.id == loc.mapping_id).unwrap();
                st(m.filename)
            })
            .collect();
        assert_eq!(files, ["/bin/app", "/bin/sh"]);
        let tids: Vec<i64> = d
            .sample
            .iter()
            .map(|s| s.label.iter().find(|l| st(l.key) == "tid").unwrap().num)
            .collect();
        assert_eq!(tids, [1010, 1011, 1010, 1012]);
    }

    #[test]
    fn pprof_keeps_every_unnamed_address_as_its_own_function() {
        let p = crate::output::tests::unnamed_profile();
        let d = build(&p);
        let st = |i: i64| d.string_table[i as usize].as_str();
        let mut names: Vec<&str> = d.function.iter().map(|f| st(f.name)).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "[kernel]@0xffffffff81000010",
                "[kernel]@0xffffffff81000020",
                "[unknown]@0x6b0e8d92",
                "[unknown]@0x6b0e8d93",
                "[unknown]@0x6b0e8d94",
                "[unknown]@0x6b0e8d95",
                "__x64_sys_sendto",
                "ping+0x2a10",
                "ping+0x2a14",
                "ping+0x2a18",
            ]
        );
        let counts: Vec<i64> = d.sample.iter().map(|s| s.value[0]).collect();
        assert_eq!(counts, [31, 34, 3, 2]);
        // Read back for a diff, it folds as the folded output does.
        let folded = to_folded(&d, Path::new("t")).unwrap();
        assert_eq!(folded, crate::output::parse_folded(&p.folded()).unwrap());
        assert_eq!(folded["ping;[unknown];ping+?;__x64_sys_sendto"], 65);
    }

    /// A profile from another tool: no `comm` label, and a location that
    /// has only an address.
    #[test]
    fn a_foreign_profile_keeps_its_root_frame() {
        let strings = ["", "samples", "count", "main", "work"];
        let loc = |id: u64, function_id: u64| Location {
            id,
            line: vec![Line {
                function_id,
                line: 0,
            }],
            ..Default::default()
        };
        let p = Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 2 }],
            string_table: strings.iter().map(|s| s.to_string()).collect(),
            function: vec![
                Function {
                    id: 1,
                    name: 3,
                    ..Default::default()
                },
                Function {
                    id: 2,
                    name: 4,
                    ..Default::default()
                },
            ],
            location: vec![
                loc(1, 1),
                loc(2, 2),
                Location {
                    id: 3,
                    address: 0x4010,
                    ..Default::default()
                },
            ],
            sample: vec![
                Sample {
                    location_id: vec![2, 1],
                    value: vec![6],
                    label: vec![],
                },
                Sample {
                    location_id: vec![3, 1],
                    value: vec![4],
                    label: vec![],
                },
            ],
            ..Default::default()
        };
        let folded = to_folded(&p, Path::new("t")).unwrap();
        assert_eq!(
            folded,
            HashMap::from([
                ("[no comm];main;work".to_string(), 6),
                ("[no comm];main;[unknown]".to_string(), 4)
            ])
        );
        let top = crate::output::top_from_folded(&folded);
        let main = top.iter().find(|r| r.function == "main").unwrap();
        assert_eq!((main.self_samples, main.total_samples), (0, 10));
        assert!(top.iter().all(|r| r.function != NO_COMM));
    }
}
