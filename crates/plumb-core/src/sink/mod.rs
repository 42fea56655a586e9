//! Where events go. Every output format is a [`Sink`]; the pipeline does
//! not know which one it feeds.

mod columns;
mod json;
mod summary;

pub use columns::ColumnsSink;
pub use json::JsonSink;
pub use summary::SummarySink;

use crate::event::Event;
use std::io;
use std::time::SystemTime;

/// A consumer of events.
pub trait Sink {
    fn event(&mut self, ev: &Event) -> io::Result<()>;
    /// `count` more records were lost by `gadget` since the last call.
    fn lost(&mut self, _gadget: &str, _count: u64, _at: SystemTime) -> io::Result<()> {
        Ok(())
    }
    /// Called when the ring buffer has been drained: a good time to flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Called about every poll interval, for sinks that report periodically.
    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The run is over.
    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// Keep only `fields` of a serialised event (the `--fields` option).
pub fn select(v: serde_json::Value, fields: &[String]) -> serde_json::Value {
    match v {
        serde_json::Value::Object(mut m) if !fields.is_empty() => {
            let mut out = serde_json::Map::new();
            for f in fields {
                if let Some(x) = m.remove(f) {
                    out.insert(f.clone(), x);
                } else {
                    out.insert(f.clone(), serde_json::Value::Null);
                }
            }
            serde_json::Value::Object(out)
        }
        v => v,
    }
}

/// A JSON value as a table cell.
pub fn cell(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "-".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| cell(Some(x)))
            .collect::<Vec<_>>()
            .join(" "),
        Some(v) => v.to_string(),
    }
}

/// A sink that keeps events in memory (tests, the agent's one-shot calls).
#[derive(Default)]
pub struct VecSink {
    pub events: Vec<Event>,
    pub lost: u64,
}

impl Sink for VecSink {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.events.push(ev.clone());
        Ok(())
    }
    fn lost(&mut self, _gadget: &str, count: u64, _at: SystemTime) -> io::Result<()> {
        self.lost += count;
        Ok(())
    }
}

/// A sink that hands events to a closure; returning `false` stops the run.
pub struct FnSink<F: FnMut(&Event) -> bool>(pub F, pub bool);

impl<F: FnMut(&Event) -> bool> FnSink<F> {
    pub fn new(f: F) -> Self {
        FnSink(f, false)
    }
}

impl<F: FnMut(&Event) -> bool> Sink for FnSink<F> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if !(self.0)(ev) {
            self.1 = true;
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "consumer is done",
            ));
        }
        Ok(())
    }
}
