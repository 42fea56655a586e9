//! Printing map dumps and records through plumb's one sink layer: each
//! row is a JSON object record (with its `node`), written by the same
//! columns and JSON-lines outputs every gadget prints with, or as
//! Prometheus text ([`crate::prom`]).

use crate::maps::{Dump, Shape};
use plumb_core::gadgets::Column;
use plumb_core::sink::{write_lost, ColumnsSink, JsonSink, Output};
use serde_json::{json, Map as JsonMap, Value};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::SystemTime;

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Columns,
    Json,
    Prometheus,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "columns" => Ok(Format::Columns),
            "json" => Ok(Format::Json),
            "prometheus" => Ok(Format::Prometheus),
            other => Err(format!(
                "'{other}' is not an output: columns, json or prometheus"
            )),
        }
    }
}

/// Writes what a run shows, in one format.
pub struct Printer<W: Write> {
    pub format: Format,
    object: String,
    node: String,
    max_series: usize,
    out: W,
    /// Per streaming map: the columns table its records are laid out by.
    record_tables: BTreeMap<String, ColumnsSink<Vec<u8>>>,
    width: Option<usize>,
}

const BAR: usize = 40;

impl<W: Write> Printer<W> {
    pub fn new(
        out: W,
        format: Format,
        object: &str,
        node: &str,
        max_series: usize,
        width: Option<usize>,
    ) -> Self {
        Printer {
            format,
            object: object.into(),
            node: node.into(),
            max_series,
            out,
            record_tables: BTreeMap::new(),
            width,
        }
    }

    fn rows(&self, d: &Dump) -> (Vec<String>, Vec<Value>) {
        let mut keys: Vec<String> = Vec::new();
        let mut rows = Vec::new();
        match &d.shape {
            Shape::Table => {
                for e in &d.entries {
                    let mut row = JsonMap::new();
                    row.insert("node".into(), Value::String(self.node.clone()));
                    for (k, v) in e.key.iter().chain(e.value.iter()) {
                        if !keys.contains(k) {
                            keys.push(k.clone());
                        }
                        row.insert(k.clone(), v.clone());
                    }
                    rows.push(Value::Object(row));
                }
            }
            Shape::Log2 { bucket } => {
                let max = d
                    .entries
                    .iter()
                    .filter_map(|e| e.value.values().find_map(Value::as_u64))
                    .max()
                    .unwrap_or(0);
                for e in &d.entries {
                    let mut row = JsonMap::new();
                    row.insert("node".into(), Value::String(self.node.clone()));
                    for (k, v) in &e.key {
                        if k != bucket && !keys.contains(k) {
                            keys.push(k.clone());
                        }
                        if k != bucket {
                            row.insert(k.clone(), v.clone());
                        }
                    }
                    let b = e.key.get(bucket).and_then(Value::as_u64).unwrap_or(0);
                    let lo = if b == 0 { 0 } else { 1u128 << b };
                    let hi = (1u128 << (b + 1).min(127)) - 1;
                    let n = e.value.values().find_map(Value::as_u64).unwrap_or(0);
                    let bar = if max == 0 {
                        0
                    } else {
                        (n as u128 * BAR as u128 / max as u128) as usize
                    };
                    row.insert("range".into(), Value::String(format!("[{lo}, {hi}]")));
                    row.insert("count".into(), Value::from(n));
                    row.insert(
                        "distribution".into(),
                        Value::String(format!("|{:<BAR$}|", "@".repeat(bar))),
                    );
                    rows.push(Value::Object(row));
                }
                keys.extend(["range".into(), "count".into(), "distribution".into()]);
            }
        }
        (keys, rows)
    }

    /// One reading of every map.
    pub fn dumps(&mut self, dumps: &[Dump]) -> io::Result<()> {
        match self.format {
            Format::Prometheus => {
                crate::prom::write(&mut self.out, &self.object, dumps, self.max_series)?
            }
            Format::Json => {
                let mut sink = JsonSink::new(&mut self.out, Vec::new());
                for d in dumps {
                    for e in &d.entries {
                        let value = match e.value.get("value") {
                            Some(v) if e.value.len() == 1 => v.clone(),
                            _ => Value::Object(e.value.clone()),
                        };
                        let r = json!({
                            "node": self.node, "object": self.object, "map": d.map,
                            "key": Value::Object(e.key.clone()), "value": value,
                        });
                        sink.record(&r)?;
                    }
                }
                sink.flush()?;
            }
            Format::Columns => {
                let now = humantime_now();
                for d in dumps {
                    let (keys, rows) = self.rows(d);
                    writeln!(
                        self.out,
                        "map {} at {now}: {} entries",
                        d.map,
                        d.entries.len()
                    )?;
                    if rows.is_empty() {
                        continue;
                    }
                    let cols = keys.iter().map(|k| Column::for_key(k)).collect();
                    let mut table = ColumnsSink::new(&mut self.out, cols, self.width);
                    for r in &rows {
                        table.record(r)?;
                    }
                    table.flush()?;
                }
            }
        }
        self.out.flush()
    }

    /// A record of streaming map `map`.
    pub fn record(&mut self, map: &str, rec: &Value) -> io::Result<()> {
        match self.format {
            Format::Prometheus => Ok(()),
            Format::Json => {
                let r =
                    json!({"node": self.node, "object": self.object, "map": map, "record": rec});
                let mut sink = JsonSink::new(&mut self.out, Vec::new());
                sink.record(&r)?;
                sink.flush()
            }
            Format::Columns => {
                let fields = crate::maps::flatten(rec.clone(), "record");
                let width = self.width;
                // One table per map, made with its first record (its header,
                // its columns' picker) and kept: later records are rows only.
                let table = self
                    .record_tables
                    .entry(map.to_string())
                    .or_insert_with(|| {
                        let cols = std::iter::once(Column::for_key("map"))
                            .chain(fields.keys().map(|k| Column::for_key(k)))
                            .collect();
                        ColumnsSink::new(Vec::new(), cols, width)
                    });
                let mut row = JsonMap::new();
                row.insert("node".into(), Value::String(self.node.clone()));
                row.insert("map".into(), Value::String(map.into()));
                row.extend(fields);
                table.record(&Value::Object(row))?;
                self.out.write_all(table.get_mut())?;
                table.get_mut().clear();
                self.out.flush()
            }
        }
    }

    /// `count` records of `map` were lost.
    pub fn lost(&mut self, map: &str, count: u64) -> io::Result<()> {
        let what = format!("{}/{map}", self.object);
        match self.format {
            Format::Json => write_lost(&mut self.out, &self.node, &what, count, SystemTime::now()),
            _ => {
                eprintln!(
                    "plumb: {count} records of map {map} were lost (the perf buffer was full)"
                );
                Ok(())
            }
        }
    }
}

fn humantime_now() -> String {
    let t = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    t.get(11..19).unwrap_or(&t).to_string()
}
