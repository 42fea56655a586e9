//! JSON lines: one object per event, plus `{"type":"lost",...}` records.

use super::{select, Sink};
use crate::event::Event;
use serde::Serialize;
use std::io::{self, Write};
use std::time::SystemTime;

pub struct JsonSink<W: Write> {
    out: W,
    fields: Vec<String>,
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
        JsonSink { out, fields, node }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if self.fields.is_empty() {
            serde_json::to_writer(&mut self.out, ev)?;
        } else {
            let v = select(serde_json::to_value(ev)?, &self.fields);
            serde_json::to_writer(&mut self.out, &v)?;
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
