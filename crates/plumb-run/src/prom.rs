//! Maps as Prometheus text exposition: each map is a metric family named
//! `OBJECT_MAP` (`OBJECT_MAP_FIELD` for each number of a struct value),
//! its key's fields as labels. A log2 map is a histogram whose `le` is the
//! bucket's highest value, `2^(b+1)-1`; it has no `_sum`, which the kernel
//! map does not keep. Past `cap` series a family folds the rest into one
//! series whose labels are all `other`, and `plumb_run_folded_series`
//! says how many were folded.

use crate::maps::{add_into, Dump, Entry, Shape};
use serde_json::{Map as JsonMap, Value};
use std::fmt::Write as _;
use std::io::{self, Write};

/// A histogram's (bucket, count) pairs.
type Buckets = Vec<(u64, u64)>;

/// A metric or label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn label_value(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(key: &JsonMap<String, Value>, skip: Option<&str>, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = key
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != skip)
        .map(|(k, v)| format!("{}=\"{}\"", name(k), label_value(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.into()),
        _ => None,
    }
}

fn first_number(e: &Entry) -> f64 {
    e.value.values().find_map(|v| v.as_f64()).unwrap_or(0.0)
}

/// At most `cap` entries; the rest summed into one whose key fields are
/// all `other`. Returns the entries and how many were folded.
fn fold(entries: &[Entry], cap: usize) -> (Vec<Entry>, usize) {
    if entries.len() <= cap {
        return (entries.to_vec(), 0);
    }
    let mut by_size: Vec<&Entry> = entries.iter().collect();
    by_size.sort_by(|a, b| {
        first_number(b)
            .partial_cmp(&first_number(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let keep = cap.saturating_sub(1);
    let mut out: Vec<Entry> = by_size[..keep].iter().map(|e| (*e).clone()).collect();
    let rest = &by_size[keep..];
    let mut value = Value::Object(rest[0].value.clone());
    for e in &rest[1..] {
        add_into(&mut value, &Value::Object(e.value.clone()));
    }
    let key = rest[0]
        .key
        .keys()
        .map(|k| (k.clone(), Value::String("other".into())))
        .collect();
    let Value::Object(value) = value else {
        unreachable!("an object stays one")
    };
    out.push(Entry { key, value });
    (out, rest.len())
}

/// Write every dump of object `object` as one exposition.
pub fn write(out: &mut dyn Write, object: &str, dumps: &[Dump], cap: usize) -> io::Result<()> {
    let mut s = String::new();
    let mut folded = Vec::new();
    for d in dumps {
        let base = name(&format!("{object}_{}", d.map));
        match &d.shape {
            Shape::Table => {
                let (entries, n) = fold(&d.entries, cap.max(1));
                folded.push((d.map.clone(), n));
                let fields: Vec<String> = entries
                    .iter()
                    .flat_map(|e| {
                        e.value
                            .iter()
                            .filter(|(_, v)| number(v).is_some())
                            .map(|(k, _)| k.clone())
                    })
                    .fold(Vec::new(), |mut acc, k| {
                        if !acc.contains(&k) {
                            acc.push(k);
                        }
                        acc
                    });
                for f in fields {
                    let family = if f == "value" {
                        base.clone()
                    } else {
                        format!("{base}_{}", name(&f))
                    };
                    let _ = writeln!(s, "# HELP {family} Map {} of {object}: {f} by key.", d.map);
                    let _ = writeln!(s, "# TYPE {family} gauge");
                    for e in &entries {
                        if let Some(v) = e.value.get(&f).and_then(number) {
                            let _ = writeln!(s, "{family}{} {v}", labels(&e.key, None, None));
                        }
                    }
                }
            }
            Shape::Log2 { bucket } => {
                folded.push((d.map.clone(), 0));
                let _ = writeln!(
                    s,
                    "# HELP {base} Map {} of {object}: a log2 histogram.",
                    d.map
                );
                let _ = writeln!(s, "# TYPE {base} histogram");
                // Series: the key without its bucket field.
                let mut series: Vec<(JsonMap<String, Value>, Buckets)> = Vec::new();
                for e in &d.entries {
                    let mut rest = e.key.clone();
                    let b = rest.remove(bucket).and_then(|v| v.as_u64()).unwrap_or(0);
                    let count = first_number(e) as u64;
                    match series.iter_mut().find(|(k, _)| *k == rest) {
                        Some((_, v)) => v.push((b, count)),
                        None => series.push((rest, vec![(b, count)])),
                    }
                }
                for (key, mut buckets) in series {
                    buckets.sort();
                    let mut total = 0u64;
                    for (b, c) in &buckets {
                        total += c;
                        let le = if *b >= 63 {
                            u64::MAX
                        } else {
                            (1u64 << (b + 1)) - 1
                        };
                        let _ = writeln!(
                            s,
                            "{base}_bucket{} {total}",
                            labels(&key, None, Some(("le", &le.to_string())))
                        );
                    }
                    let _ = writeln!(
                        s,
                        "{base}_bucket{} {total}",
                        labels(&key, None, Some(("le", "+Inf")))
                    );
                    let _ = writeln!(s, "{base}_count{} {total}", labels(&key, None, None));
                }
            }
        }
    }
    let _ = writeln!(s, "# HELP plumb_run_folded_series Series folded into the 'other' series by the cardinality cap.");
    let _ = writeln!(s, "# TYPE plumb_run_folded_series gauge");
    for (map, n) in folded {
        let _ = writeln!(
            s,
            "plumb_run_folded_series{{object=\"{}\",map=\"{}\"}} {n}",
            label_value(&Value::String(object.into())),
            label_value(&Value::String(map))
        );
    }
    out.write_all(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::flatten;
    use serde_json::json;

    fn entry(k: Value, v: Value) -> Entry {
        Entry {
            key: flatten(k, "key"),
            value: flatten(v, "value"),
        }
    }

    #[test]
    fn a_counter_map_is_a_family_with_its_key_as_labels() {
        let d = Dump {
            map: "proto_count".into(),
            shape: Shape::Table,
            entries: vec![
                entry(json!({"proto": 17}), json!(5)),
                entry(json!({"proto": 6}), json!(2)),
            ],
        };
        let mut out = Vec::new();
        write(&mut out, "sockex", &[d], 100).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("# TYPE sockex_proto_count gauge\n"), "{text}");
        assert!(
            text.contains("sockex_proto_count{proto=\"17\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("sockex_proto_count{proto=\"6\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("plumb_run_folded_series{object=\"sockex\",map=\"proto_count\"} 0\n"));
    }

    #[test]
    fn past_the_cap_series_fold_into_other_and_are_counted() {
        let entries = (0..10)
            .map(|i| entry(json!({"pid": i, "comm": "x"}), json!({"n": i})))
            .collect();
        let d = Dump {
            map: "m".into(),
            shape: Shape::Table,
            entries,
        };
        let mut out = Vec::new();
        write(&mut out, "o", &[d], 4).unwrap();
        let text = String::from_utf8(out).unwrap();
        // Kept: 9, 8, 7; folded: 0..=6, summed to 21.
        assert!(text.contains("o_m_n{pid=\"9\",comm=\"x\"} 9\n"), "{text}");
        assert!(
            text.contains("o_m_n{pid=\"other\",comm=\"other\"} 21\n"),
            "{text}"
        );
        assert!(!text.contains("pid=\"6\""), "{text}");
        assert!(
            text.contains("plumb_run_folded_series{object=\"o\",map=\"m\"} 7\n"),
            "{text}"
        );
    }

    #[test]
    fn a_log2_map_is_a_cumulative_histogram() {
        let d = Dump {
            map: "lat".into(),
            shape: Shape::Log2 {
                bucket: "key".into(),
            },
            entries: vec![
                entry(json!(0), json!(1)),
                entry(json!(3), json!(4)),
                entry(json!(1), json!(2)),
            ],
        };
        let mut out = Vec::new();
        write(&mut out, "o", &[d], 10).unwrap();
        let text = String::from_utf8(out).unwrap();
        let want = "o_lat_bucket{le=\"1\"} 1\no_lat_bucket{le=\"3\"} 3\no_lat_bucket{le=\"15\"} 7\no_lat_bucket{le=\"+Inf\"} 7\no_lat_count 7\n";
        assert!(text.contains(want), "{text}");
    }

    #[test]
    fn names_and_label_values_are_escaped() {
        assert_eq!(name("my-obj.map"), "my_obj_map");
        assert_eq!(name("9lives"), "_9lives");
        assert_eq!(label_value(&json!("a\"b\\c")), "a\\\"b\\\\c");
    }
}
