//! Where events go. Every output format is a [`Sink`]; the pipeline does
//! not know which one it feeds.

mod columns;
mod json;
mod pick;
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
    /// `ev` happened `n` times (counted in the kernel, not one record
    /// each). Sinks that only count (summaries) add `n` at once.
    fn event_count(&mut self, ev: &Event, n: u64) -> io::Result<()> {
        for _ in 0..n {
            self.event(ev)?;
        }
        Ok(())
    }
    /// The keys this sink groups events by, if all it does is count them
    /// (`--summary`): the run may then count in the kernel instead.
    fn summary_keys(&self) -> Option<&[String]> {
        None
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Header, Workload};
    use crate::gadgets::{exec::Exec, Body, Column};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    fn ev(pid: u32, comm: &str, file: &str) -> Event {
        Event {
            body: Body::Exec(Exec {
                ppid: 1,
                filename: file.into(),
                args: vec![file.into(), "--x".into()],
                args_truncated: false,
                retval: 0,
                error: None,
            }),
            header: Header {
                timestamp: UNIX_EPOCH + Duration::from_nanos(1_790_000_000_123_456_789),
                node: Arc::from("node-a"),
                pid: Some(pid),
                tid: Some(pid),
                uid: Some(0),
                comm: Some(comm.into()),
                cgroup_id: 7,
                cgroup: None,
                workload: Arc::new(Workload {
                    pod: Some("web-1".into()),
                    namespace: Some("shop".into()),
                    ..Default::default()
                }),
            },
        }
    }

    #[test]
    fn json_lines_carry_type_timestamp_and_pod() {
        let mut s = JsonSink::new(Vec::new(), vec![], "node-a".into());
        s.event(&ev(10, "sh", "/bin/sh")).unwrap();
        s.lost("exec", 3, UNIX_EPOCH).unwrap();
        let out = String::from_utf8(s.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "exec");
        assert_eq!(lines[0]["timestamp"], "2026-09-21T14:13:20.123456789Z");
        assert_eq!(lines[0]["pod"], "web-1");
        assert_eq!(lines[0]["container_id"], serde_json::Value::Null);
        assert_eq!(lines[0]["args"], serde_json::json!(["/bin/sh", "--x"]));
        assert_eq!(
            lines[1],
            serde_json::json!({"type":"lost","timestamp":"1970-01-01T00:00:00.000000000Z","node":"node-a","gadget":"exec","count":3})
        );
    }

    #[test]
    fn fields_select_keys_in_order() {
        let mut s = JsonSink::new(Vec::new(), vec!["pid".into(), "nope".into()], "n".into());
        s.event(&ev(10, "sh", "/bin/sh")).unwrap();
        assert_eq!(
            String::from_utf8(s.into_inner()).unwrap(),
            "{\"pid\":10,\"nope\":null}\n"
        );
    }

    #[test]
    fn picked_fields_equal_the_selected_json_tree() {
        let fields: Vec<String> = [
            "args",
            "namespace",
            "timestamp",
            "pid",
            "comm",
            "ppid",
            "type",
            "cgroup",
            "pod",
            "filename",
            "missing",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let e = ev(10, "sh", "/bin/sh");
        let mut s = JsonSink::new(Vec::new(), fields.clone(), "n".into());
        s.event(&e).unwrap();
        let line = String::from_utf8(s.into_inner()).unwrap();
        let tree = select(serde_json::to_value(&e).unwrap(), &fields);
        assert_eq!(line, format!("{}\n", serde_json::to_string(&tree).unwrap()));
    }

    #[test]
    fn columns_are_aligned_under_a_header() {
        let cols = vec![
            Column::new("pid", "PID", 6),
            Column::new("comm", "COMM", 8),
            Column::new("args", "ARGS", 0),
        ];
        let mut s = ColumnsSink::new(Vec::new(), cols, None);
        s.event(&ev(10, "sh", "/bin/sh")).unwrap();
        s.event(&ev(123456, "bash", "/bin/bash")).unwrap();
        let out = String::from_utf8(s.into_inner()).unwrap();
        assert_eq!(
            out,
            "PID    COMM     ARGS\n10     sh       /bin/sh --x\n123456 bash     /bin/bash --x\n"
        );
    }

    #[test]
    fn columns_are_cut_to_the_terminal() {
        let mut s = ColumnsSink::new(Vec::new(), vec![Column::new("args", "ARGS", 0)], Some(6));
        s.event(&ev(1, "sh", "/bin/sh")).unwrap();
        assert_eq!(String::from_utf8(s.into_inner()).unwrap(), "ARGS\n/bin/s\n");
    }

    #[test]
    fn summary_counts_by_key_busiest_first() {
        let mut s = SummarySink::new(
            Vec::new(),
            vec!["comm".into()],
            Duration::from_secs(3600),
            true,
        );
        for (c, n) in [("a", 2), ("b", 5), ("c", 2)] {
            for _ in 0..n {
                s.event(&ev(1, c, "/x")).unwrap();
            }
        }
        assert_eq!(
            s.sorted(),
            vec![
                (vec!["b".to_string()], 5),
                (vec!["a".to_string()], 2),
                (vec!["c".to_string()], 2)
            ]
        );
        s.finish().unwrap();
        let out = String::from_utf8(s.into_inner()).unwrap();
        let counts: Vec<u64> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["count"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(counts, [5, 2, 2]);
    }
}
