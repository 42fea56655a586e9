//! Rendering a profile: folded stacks, SVG flame graph, JSON and `top`.

use crate::{Error, Profile, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// Folded stacks: `comm;root;...;leaf count`, identical lines merged,
/// sorted by stack. Unnamed frames lose their addresses
/// ([`Frame::folded_name`](crate::Frame::folded_name)), so stacks that
/// differ only there are one line. Semicolons inside names would split
/// frames; they are replaced by `:`.
pub fn folded(p: &Profile) -> String {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for s in &p.stacks {
        let mut line = clean(&s.comm);
        for f in &s.frames {
            line.push(';');
            line.push_str(&clean(&f.folded_name()));
        }
        *lines.entry(line).or_default() += s.count;
    }
    let mut out = String::new();
    for (stack, n) in lines {
        let _ = writeln!(out, "{stack} {n}");
    }
    out
}

fn clean(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

/// Parse folded stacks back into stack → count. Blank lines are skipped;
/// anything else that is not `stack count` is an error naming the line.
pub fn parse_folded(text: &str) -> std::result::Result<HashMap<String, u64>, String> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (stack, n) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {}: expected 'frame;frame;... count'", i + 1))?;
        let n: u64 = n
            .parse()
            .map_err(|_| format!("line {}: '{n}' is not a sample count", i + 1))?;
        *out.entry(stack.to_string()).or_default() += n;
    }
    Ok(out)
}

/// An SVG flame graph of the profile.
pub fn svg(p: &Profile, title: &str) -> Result<Vec<u8>> {
    let folded = folded(p);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "samples".to_string();
    render(folded.lines(), &mut opts)
}

/// A differential flame graph from lines `stack first second`: widths from
/// the second count, colours from second minus first (negated on request).
pub(crate) fn svg_differential<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    title: &str,
    subtitle: &str,
    negate: bool,
) -> Result<Vec<u8>> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.subtitle = Some(subtitle.to_string());
    opts.count_name = "parts per million".to_string();
    opts.negate_differentials = negate;
    render(lines, &mut opts)
}

fn render<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    opts: &mut inferno::flamegraph::Options,
) -> Result<Vec<u8>> {
    let lines: Vec<&str> = lines.into_iter().collect();
    if lines.is_empty() {
        return Err(Error::Io {
            what: "flame graph".into(),
            source: std::io::Error::other("the profile holds no samples"),
        });
    }
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(opts, lines, &mut out).map_err(|source| Error::Io {
        what: "flame graph".into(),
        source,
    })?;
    Ok(out)
}

/// One function's line of the `top` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopRow {
    pub function: String,
    /// Samples with this function on top of the stack.
    pub self_samples: u64,
    /// Samples with this function anywhere in the stack.
    pub total_samples: u64,
    pub self_share: f64,
    pub total_share: f64,
}

/// Functions by self samples (then total), from folded stacks; the first
/// frame of each stack (the comm) is not a function and is skipped.
pub fn top_from_folded(stacks: &HashMap<String, u64>) -> Vec<TopRow> {
    let all: u64 = stacks.values().sum();
    let mut selfs: HashMap<&str, u64> = HashMap::new();
    let mut totals: HashMap<&str, u64> = HashMap::new();
    for (stack, &n) in stacks {
        let frames: Vec<&str> = stack.split(';').skip(1).collect();
        if let Some(leaf) = frames.last() {
            *selfs.entry(leaf).or_default() += n;
        }
        let unique: HashSet<&str> = frames.into_iter().collect();
        for f in unique {
            *totals.entry(f).or_default() += n;
        }
    }
    let share = |n: u64| if all == 0 { 0.0 } else { n as f64 / all as f64 };
    let mut rows: Vec<TopRow> = totals
        .iter()
        .map(|(f, &t)| {
            let s = selfs.get(f).copied().unwrap_or(0);
            TopRow {
                function: f.to_string(),
                self_samples: s,
                total_samples: t,
                self_share: share(s),
                total_share: share(t),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.self_samples
            .cmp(&a.self_samples)
            .then(b.total_samples.cmp(&a.total_samples))
            .then_with(|| a.function.cmp(&b.function))
    });
    rows
}

pub fn top(p: &Profile) -> Vec<TopRow> {
    let stacks = parse_folded(&folded(p)).unwrap_or_default();
    top_from_folded(&stacks)
}

/// The `top` table as text, at most `limit` rows.
pub fn top_table(rows: &[TopRow], limit: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8} {:>7} {:>8} {:>7}  FUNCTION",
        "SELF", "SELF%", "TOTAL", "TOTAL%"
    );
    for r in rows.iter().take(limit) {
        let _ = writeln!(
            out,
            "{:>8} {:>6.2}% {:>8} {:>6.2}%  {}",
            r.self_samples,
            r.self_share * 100.0,
            r.total_samples,
            r.total_share * 100.0,
            r.function
        );
    }
    out
}

/// The profile as one JSON document.
pub fn json(p: &Profile) -> Result<String> {
    serde_json::to_string_pretty(p).map_err(|e| Error::Io {
        what: "JSON".into(),
        source: std::io::Error::other(e),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Completeness, Frame, Stack};
    use std::sync::Arc;

    fn frame(name: &str, kernel: bool) -> Frame {
        Frame {
            name: Arc::from(name),
            module: None,
            kernel,
            symbolized: true,
        }
    }

    pub(crate) fn sample_profile() -> Profile {
        let st = |comm: &str, pid, frames: &[&str], count| Stack {
            comm: comm.into(),
            pid,
            tid: pid + 1000,
            cgroup_id: 1,
            workload: Arc::default(),
            frames: frames
                .iter()
                .map(|f| frame(f, f.starts_with("__x64") || f.starts_with("do_")))
                .collect(),
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
                st("app", 10, &["main", "hot"], 70),
                st("app", 11, &["main", "hot"], 5),
                st(
                    "app",
                    10,
                    &["main", "write", "__x64_sys_write", "do_sync"],
                    20,
                ),
                st("sh", 12, &["main"], 5),
            ],
        }
    }

    /// The README's `ping`: a stripped binary whose two outer frames are
    /// unnamed, sampled at different addresses of the same code.
    pub(crate) fn unnamed_profile() -> Profile {
        let ping: Arc<str> = Arc::from("/usr/bin/ping");
        let kernel: Arc<str> = Arc::from("kernel");
        let in_ping = |off: u64| Frame {
            name: Arc::from(format!("ping+{off:#x}")),
            module: Some(ping.clone()),
            kernel: false,
            symbolized: false,
        };
        let st = |unknown: u64, off: u64, leaf: Frame, count| Stack {
            comm: "ping".into(),
            pid: 7,
            tid: 7,
            cgroup_id: 1,
            workload: Arc::default(),
            frames: vec![
                crate::symbols::unknown_address("[unknown]", None, unknown),
                in_ping(off),
                leaf,
            ],
            count,
        };
        let sendto = || frame("__x64_sys_sendto", true);
        let unnamed_kernel = |a| crate::symbols::unnamed_kernel(a, &kernel);
        Profile {
            stacks: vec![
                st(0x6b0e8d92, 0x2a10, sendto(), 31),
                st(0x6b0e8d93, 0x2a14, sendto(), 34),
                st(0x6b0e8d94, 0x2a10, unnamed_kernel(0xffffffff81000010), 3),
                st(0x6b0e8d95, 0x2a18, unnamed_kernel(0xffffffff81000020), 2),
            ],
            ..sample_profile()
        }
    }

    #[test]
    fn folded_and_svg_keep_stacks_that_differ_only_in_unnamed_addresses_together() {
        let p = unnamed_profile();
        assert_eq!(
            folded(&p),
            "ping;[unknown];ping+?;[kernel] 5\nping;[unknown];ping+?;__x64_sys_sendto 65\n"
        );
        let svg = String::from_utf8(svg(&p, "t").unwrap()).unwrap();
        assert!(svg.contains("<title>[unknown] (70 samples, 100.00%)</title>"));
        assert!(svg.contains("<title>ping+? (70 samples, 100.00%)</title>"));
        assert!(!svg.contains("@0x") && !svg.contains("+0x"), "{svg}");
        let top = top(&p);
        let unknown = top.iter().find(|r| r.function == "[unknown]").unwrap();
        assert_eq!(unknown.total_samples, 70);
    }

    #[test]
    fn json_keeps_every_unnamed_address() {
        let v: serde_json::Value =
            serde_json::from_str(&json(&unnamed_profile()).unwrap()).unwrap();
        let names: Vec<Vec<&str>> = v["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s["frames"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["name"].as_str().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(
            names,
            [
                ["[unknown]@0x6b0e8d92", "ping+0x2a10", "__x64_sys_sendto"],
                ["[unknown]@0x6b0e8d93", "ping+0x2a14", "__x64_sys_sendto"],
                [
                    "[unknown]@0x6b0e8d94",
                    "ping+0x2a10",
                    "[kernel]@0xffffffff81000010"
                ],
                [
                    "[unknown]@0x6b0e8d95",
                    "ping+0x2a18",
                    "[kernel]@0xffffffff81000020"
                ],
            ]
        );
        let counts: Vec<u64> = v["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [31, 34, 3, 2]);
    }

    #[test]
    fn folded_merges_processes_and_parses_back() {
        let p = sample_profile();
        let text = folded(&p);
        assert_eq!(
            text,
            "app;main;hot 75\napp;main;write;__x64_sys_write;do_sync 20\nsh;main 5\n"
        );
        let back = parse_folded(&text).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back["app;main;hot"], 75);
        assert_eq!(back.values().sum::<u64>(), p.samples());
        assert_eq!(
            parse_folded("a;b 1\nbroken\n").unwrap_err(),
            "line 2: expected 'frame;frame;... count'"
        );
        assert_eq!(
            parse_folded("a;b x\n").unwrap_err(),
            "line 1: 'x' is not a sample count"
        );
    }

    #[test]
    fn top_counts_self_and_total() {
        let rows = top(&sample_profile());
        assert_eq!(rows[0].function, "hot");
        assert_eq!((rows[0].self_samples, rows[0].total_samples), (75, 75));
        assert!((rows[0].self_share - 0.75).abs() < 1e-12);
        let main = rows.iter().find(|r| r.function == "main").unwrap();
        assert_eq!((main.self_samples, main.total_samples), (5, 100));
        let write = rows.iter().find(|r| r.function == "do_sync").unwrap();
        assert_eq!(write.self_samples, 20);
        assert_eq!(rows[1].function, "do_sync");
    }

    #[test]
    fn svg_is_a_flame_graph_of_the_functions() {
        let svg = String::from_utf8(svg(&sample_profile(), "t").unwrap()).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..40]);
        assert!(svg.contains("hot (75 samples, 75.00%)"), "no hot frame");
    }
}
