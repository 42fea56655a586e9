//! JSON lines: one object per event, plus `{"type":"lost",...}` records.

use super::pick::Picker;
use super::Sink;
use crate::event::Event;
use serde::Serialize;
use std::io::{self, Write};
use std::time::SystemTime;

pub struct JsonSink<W: Write> {
    out: W,
    /// With `--fields`: picks them while serialising.
    picker: Option<Picker>,
    node: String,
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

impl<W: Write> JsonSink<W> {
    pub fn new(out: W, fields: Vec<String>, node: String) -> Self {
        let picker = (!fields.is_empty()).then(|| Picker::new(&fields));
        JsonSink { out, picker, node }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        match &mut self.picker {
            None => serde_json::to_writer(&mut self.out, ev)?,
            Some(p) => p.write(ev, &mut self.out)?,
        }
        self.out.write_all(b"\n")
    }

    fn lost(&mut self, gadget: &str, count: u64, at: SystemTime) -> io::Result<()> {
        let rec = Lost {
            kind: "lost",
            timestamp: humantime::format_rfc3339_nanos(at).to_string(),
            node: &self.node,
            gadget,
            count,
        };
        serde_json::to_writer(&mut self.out, &rec)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
