//! JSON lines: one object per record, plus `{"type":"lost",...}` records.

use super::pick::Picker;
use super::{Output, Record};
use serde::Serialize;
use std::io::{self, Write};
use std::time::SystemTime;

pub struct JsonSink<W: Write> {
    out: W,
    /// With `--fields`: picks them while serialising.
    picker: Option<Picker>,
}

#[derive(Serialize)]
struct Lost<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    node: &'a str,
    gadget: &'a str,
    count: u64,
}

/// The one form of a loss in JSON output, local or remote, per event or
/// in a summary: `{"type":"lost","timestamp":...,"node":...,"gadget":...,"count":N}`.
pub fn write_lost<W: Write + ?Sized>(
    out: &mut W,
    node: &str,
    gadget: &str,
    count: u64,
    at: SystemTime,
) -> io::Result<()> {
    let rec = Lost {
        kind: "lost",
        timestamp: humantime::format_rfc3339_nanos(at).to_string(),
        node,
        gadget,
        count,
    };
    serde_json::to_writer(&mut *out, &rec)?;
    out.write_all(b"\n")
}

impl<W: Write> JsonSink<W> {
    /// `fields`: only these keys, in this order (empty: every key).
    pub fn new(out: W, fields: Vec<String>) -> Self {
        let picker = (!fields.is_empty()).then(|| Picker::new(&fields));
        JsonSink { out, picker }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Output for JsonSink<W> {
    fn record(&mut self, r: &dyn Record) -> io::Result<()> {
        match &mut self.picker {
            None => r.write_json(&mut self.out)?,
            Some(p) => {
                r.pick_into(p)?;
                p.write_picked(&mut self.out)?;
            }
        }
        self.out.write_all(b"\n")
    }

    fn lost(&mut self, node: &str, gadget: &str, count: u64, at: SystemTime) -> io::Result<()> {
        write_lost(&mut self.out, node, gadget, count, at)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
