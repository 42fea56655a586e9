//! `plumb profile diff BEFORE AFTER`: two profiles (folded stacks, or pprof
//! from plumb or another tool), normalised to shares of all samples,
//! compared as a table or a differential flame graph.

use crate::output::{self, parse_folded, top_from_folded, TopRow};
use crate::{pprof, Error, Result};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// Stack → samples, read from a folded-stacks file or a pprof profile
/// (gzipped or not).
pub fn load(path: &Path) -> Result<HashMap<String, u64>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    let bad = |reason: String| Error::BadProfile {
        path: path.to_path_buf(),
        reason,
    };
    let stacks = if bytes.starts_with(&[0x1f, 0x8b]) {
        pprof::to_folded(&pprof::decode(&bytes, path)?, path)?
    } else if let Ok(text) = std::str::from_utf8(&bytes) {
        match parse_folded(text) {
            Ok(stacks) => stacks,
            // Protobuf can be valid UTF-8; text that is neither is
            // reported as folded stacks, the likelier intent.
            Err(reason) => match pprof::decode(&bytes, path) {
                Ok(p) if !p.sample.is_empty() => pprof::to_folded(&p, path)?,
                _ => return Err(bad(reason)),
            },
        }
    } else {
        let p = pprof::decode(&bytes, path).map_err(|e| match e {
            Error::BadProfile { reason, .. } => bad(format!(
                "neither folded stacks nor a pprof profile ({reason})"
            )),
            other => other,
        })?;
        pprof::to_folded(&p, path)?
    };
    if stacks.values().sum::<u64>() == 0 {
        return Err(bad("the profile holds no samples".into()));
    }
    Ok(stacks)
}

/// How one function's share of all samples changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delta {
    pub function: String,
    /// Share of samples with the function on top of the stack.
    pub self_before: f64,
    pub self_after: f64,
    /// Share of samples with the function anywhere in the stack.
    pub total_before: f64,
    pub total_after: f64,
}

impl Delta {
    pub fn self_change(&self) -> f64 {
        self.self_after - self.self_before
    }
    pub fn total_change(&self) -> f64 {
        self.total_after - self.total_before
    }
}

/// Every function of either profile, the largest growth of self share first
/// (then of total share); the ones that shrank most come last.
pub fn compare(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> Vec<Delta> {
    let index = |rows: Vec<TopRow>| -> HashMap<String, TopRow> {
        rows.into_iter().map(|r| (r.function.clone(), r)).collect()
    };
    let b = index(top_from_folded(before));
    let a = index(top_from_folded(after));
    let names: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    let mut out: Vec<Delta> = names
        .into_iter()
        .map(|f| {
            let get = |m: &HashMap<String, TopRow>| {
                m.get(f)
                    .map(|r| (r.self_share, r.total_share))
                    .unwrap_or((0.0, 0.0))
            };
            let ((sb, tb), (sa, ta)) = (get(&b), get(&a));
            Delta {
                function: f.clone(),
                self_before: sb,
                self_after: sa,
                total_before: tb,
                total_after: ta,
            }
        })
        .collect();
    out.sort_by(|x, y| {
        y.self_change()
            .total_cmp(&x.self_change())
            .then(y.total_change().total_cmp(&x.total_change()))
            .then_with(|| x.function.cmp(&y.function))
    });
    out
}

/// The table: the `limit` functions that grew most, then those that shrank
/// most, in percentage points of all samples.
pub fn table(deltas: &[Delta], limit: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}  FUNCTION",
        "SELF%", "BEFORE", "AFTER", "TOTAL%", "BEFORE", "AFTER"
    );
    let row = |out: &mut String, d: &Delta| {
        let _ = writeln!(
            out,
            "{:>+8.2} {:>7.2}% {:>7.2}%   {:>+8.2} {:>7.2}% {:>7.2}%  {}",
            d.self_change() * 100.0,
            d.self_before * 100.0,
            d.self_after * 100.0,
            d.total_change() * 100.0,
            d.total_before * 100.0,
            d.total_after * 100.0,
            d.function
        );
    };
    let grew: Vec<&Delta> = deltas
        .iter()
        .filter(|d| d.self_change() >= 0.0)
        .take(limit)
        .collect();
    for d in &grew {
        row(&mut out, d);
    }
    let shrank: Vec<&Delta> = deltas
        .iter()
        .rev()
        .filter(|d| d.self_change() < 0.0)
        .take(limit.div_ceil(2))
        .collect();
    if !shrank.is_empty() {
        let _ = writeln!(out, "   ...shrank:");
        for d in shrank {
            row(&mut out, d);
        }
    }
    out
}

/// Scale of the normalised counts in the differential flame graph: each
/// profile's samples become shares of this many.
const SCALE: f64 = 1_000_000.0;

/// Folded lines `stack before after`, both normalised to shares of all
/// samples (×1e6), the input of a differential flame graph.
pub fn differential_lines(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> Vec<String> {
    let tb = before.values().sum::<u64>().max(1) as f64;
    let ta = after.values().sum::<u64>().max(1) as f64;
    let stacks: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    stacks
        .into_iter()
        .map(|s| {
            let b = before.get(s).copied().unwrap_or(0) as f64 / tb * SCALE;
            let a = after.get(s).copied().unwrap_or(0) as f64 / ta * SCALE;
            format!("{s} {} {}", b.round() as u64, a.round() as u64)
        })
        .collect()
}

/// Whose stacks give a differential flame graph its shape. Frame widths
/// are one profile's shares; colours are the change. A stack that exists
/// in only one profile is visible only in a graph shaped by that profile:
/// `After` shows what appeared, `Before` what vanished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Before,
    After,
}

/// A differential flame graph in `shape`'s shape, coloured by how each
/// frame's share changed from BEFORE to AFTER: red grew, blue shrank,
/// whichever the shape.
pub fn svg(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    shape: Shape,
    title: &str,
) -> Result<Vec<u8>> {
    // inferno takes the width from the second count and colours by
    // second minus first; for the BEFORE shape the columns are swapped and
    // the colours negated back, so red still means "grew".
    let (lines, negate) = match shape {
        Shape::After => (differential_lines(before, after), false),
        Shape::Before => (differential_lines(after, before), true),
    };
    let subtitle = match shape {
        Shape::After => "widths: AFTER; red grew, blue shrank (shares of all samples)",
        Shape::Before => {
            "widths: BEFORE (shows what vanished); red grew, blue shrank (shares of all samples)"
        }
    };
    output::svg_differential(lines.iter().map(String::as_str), title, subtitle, negate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prof(lines: &[(&str, u64)]) -> HashMap<String, u64> {
        lines.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    }

    /// The story: on the bad node a bridge-firewall match function takes a
    /// quarter of the samples.
    #[test]
    fn diff_gives_exact_shares_and_ordering() {
        let before = prof(&[
            ("app;main;work", 60),
            ("app;main;send;__x64_sys_sendto;dev_queue_xmit", 40),
        ]);
        let after = prof(&[
            ("app;main;work", 300),
            ("app;main;send;__x64_sys_sendto;dev_queue_xmit", 100),
            (
                "app;main;send;__x64_sys_sendto;br_nf_pre_routing;ebt_do_table",
                150,
            ),
            (
                "app;main;send;__x64_sys_sendto;br_nf_pre_routing;ebt_ip_mt",
                50,
            ),
        ]);
        let d = compare(&before, &after);
        let names: Vec<&str> = d.iter().map(|x| x.function.as_str()).collect();
        // Self share grew: ebt_do_table +25pp, ebt_ip_mt +8.33pp. No self
        // change, by growth of total share: br_nf_pre_routing +33.3pp, then
        // __x64_sys_sendto and send +10pp each (by name), main 0. Shrank:
        // work -10pp, dev_queue_xmit -23.3pp.
        assert_eq!(
            names,
            [
                "ebt_do_table",
                "ebt_ip_mt",
                "br_nf_pre_routing",
                "__x64_sys_sendto",
                "send",
                "main",
                "work",
                "dev_queue_xmit"
            ]
        );
        let ebt = &d[0];
        assert!((ebt.self_before - 0.0).abs() < 1e-12);
        assert!((ebt.self_after - 150.0 / 600.0).abs() < 1e-12);
        let work = d.iter().find(|x| x.function == "work").unwrap();
        assert!((work.self_before - 0.6).abs() < 1e-12);
        assert!((work.self_after - 0.5).abs() < 1e-12);
        let xmit = d.iter().find(|x| x.function == "dev_queue_xmit").unwrap();
        assert!((xmit.self_change() - (100.0 / 600.0 - 0.4)).abs() < 1e-12);
        let br = d
            .iter()
            .find(|x| x.function == "br_nf_pre_routing")
            .unwrap();
        assert!((br.total_after - 200.0 / 600.0).abs() < 1e-12);
        assert_eq!(br.self_after, 0.0);
    }

    #[test]
    fn the_table_shows_both_sides_of_self_and_total() {
        let before = prof(&[("app;main;work", 60), ("app;main;send", 40)]);
        let after = prof(&[("app;main;work", 20), ("app;main;send", 80)]);
        let t = table(&compare(&before, &after), 10);
        assert_eq!(
            t,
            "   SELF%   BEFORE    AFTER     TOTAL%   BEFORE    AFTER  FUNCTION\n\
             \x20 +40.00   40.00%   80.00%     +40.00   40.00%   80.00%  send\n\
             \x20  +0.00    0.00%    0.00%      +0.00  100.00%  100.00%  main\n\
             \x20  ...shrank:\n\
             \x20 -40.00   60.00%   20.00%     -40.00   60.00%   20.00%  work\n"
        );
    }

    #[test]
    fn differential_lines_are_normalised_shares() {
        let before = prof(&[("a;x", 1), ("a;y", 3)]);
        let after = prof(&[("a;x", 30), ("a;z", 10)]);
        assert_eq!(
            differential_lines(&before, &after),
            ["a;x 250000 750000", "a;y 750000 0", "a;z 0 250000"]
        );
        // `a;y` vanished: only the BEFORE shape shows it, as shrunk by
        // 75 points (negated back to before -> after).
        let after_shape =
            String::from_utf8(svg(&before, &after, Shape::After, "d").unwrap()).unwrap();
        assert!(after_shape.contains("<svg"), "not an svg");
        assert!(
            after_shape.contains("z (250,000 parts per million, 25.00%; +25.00%)"),
            "{after_shape}"
        );
        assert!(
            !after_shape.contains(">y ("),
            "a vanished frame has no width"
        );
        let before_shape =
            String::from_utf8(svg(&before, &after, Shape::Before, "d").unwrap()).unwrap();
        assert!(
            before_shape.contains("y (750,000 parts per million, 75.00%; -75.00%)"),
            "{before_shape}"
        );
        assert!(
            before_shape.contains("x (250,000 parts per million, 25.00%; +50.00%)"),
            "{before_shape}"
        );
    }

    #[test]
    fn load_reads_folded_and_pprof_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("plumb-diff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = crate::output::tests::sample_profile();
        let folded = dir.join("a.folded");
        std::fs::write(&folded, p.folded()).unwrap();
        let pb = dir.join("a.pb.gz");
        std::fs::write(&pb, crate::pprof::encode_gz(&p)).unwrap();
        let raw = dir.join("a.pb");
        std::fs::write(
            &raw,
            prost::Message::encode_to_vec(&crate::pprof::build(&p)),
        )
        .unwrap();
        let from_folded = load(&folded).unwrap();
        let from_pprof = load(&pb).unwrap();
        assert_eq!(from_folded, from_pprof);
        assert_eq!(load(&raw).unwrap(), from_folded, "uncompressed pprof");
        assert_eq!(from_pprof.values().sum::<u64>(), 100);
        let bad = dir.join("bad");
        std::fs::write(&bad, [0x1f, 0x8b, 0, 1, 2]).unwrap();
        let e = load(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: not a valid gzip stream", bad.display())),
            "{e}"
        );
        std::fs::write(&bad, [0xff, 0xfe, 0x00, 0x07]).unwrap();
        let e = load(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: neither folded stacks nor a pprof profile (not a pprof profile: ",
                bad.display()
            )),
            "{e}"
        );
        std::fs::write(&bad, "hello\n").unwrap();
        let e = load(&bad).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: line 1: expected 'frame;frame;... count'",
                bad.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
