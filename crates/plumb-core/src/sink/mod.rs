//! Where events go. The pipeline feeds a [`Sink`] (typed events); what
//! the user reads is written by an [`Output`]: the columns table, JSON
//! lines or `--summary`. An output takes any [`Record`], a typed event of
//! this host or an event received from an agent, so local and remote
//! output are the same code and differ only by the node column in front
//! ([`OutputSpec::node_column`]).

mod columns;
mod json;
mod pick;
mod record;
mod summary;

pub use columns::ColumnsSink;
pub use json::{write_lost, JsonSink};
pub use pick::Picker;
pub use record::Record;
pub use summary::SummarySink;

use crate::event::Event;
use crate::gadgets::{Column, GadgetDesc};
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

/// What the user reads: records rendered in one format.
pub trait Output {
    fn record(&mut self, r: &dyn Record) -> io::Result<()>;
    /// `count` records of `gadget` were lost on `node` (in its kernel, or
    /// on the way from its agent).
    fn lost(&mut self, _node: &str, _gadget: &str, _count: u64, _at: SystemTime) -> io::Result<()> {
        Ok(())
    }
    /// `r` happened `n` times (counted in the kernel); see
    /// [`Sink::event_count`].
    fn record_count(&mut self, r: &dyn Record, n: u64) -> io::Result<()> {
        for _ in 0..n {
            self.record(r)?;
        }
        Ok(())
    }
    /// The keys this output groups by, if all it does is count.
    fn summary_keys(&self) -> Option<&[String]> {
        None
    }
    /// A batch is over: show what was written.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Called about every poll interval, for outputs that report
    /// periodically.
    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The run is over.
    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// How to print a gadget's events (`-o`, `--fields`, `--summary`).
#[derive(Debug, Clone, Default)]
pub struct OutputSpec {
    pub json: bool,
    /// Only these keys; empty: the gadget's columns, or every key in JSON.
    pub fields: Vec<String>,
    /// Counts per key every interval instead of a line per event.
    pub summary: Option<Duration>,
    /// Records come from several nodes: the node is the first column, the
    /// first `--fields` key and the first summary key.
    pub node_column: bool,
    /// Cut table rows to this many characters (a terminal's width).
    pub width: Option<usize>,
}

impl OutputSpec {
    /// `--fields`, with `node` in front when records come from several
    /// nodes and the user did not place it.
    fn keys(&self, default: impl Iterator<Item = String>) -> Vec<String> {
        let mut keys: Vec<String> = if self.fields.is_empty() {
            default.collect()
        } else {
            self.fields.clone()
        };
        if self.node_column && !keys.iter().any(|k| k == "node") {
            keys.insert(0, "node".into());
        }
        keys
    }
}

/// The output `spec` asks for, for `g`'s events, written to `out`.
/// `node` names this host in summaries before an event has named it.
pub fn output<W: Write + 'static>(
    g: &GadgetDesc,
    spec: &OutputSpec,
    node: &str,
    out: W,
) -> Box<dyn Output> {
    if let Some(interval) = spec.summary {
        let keys = spec.keys(g.summary_keys.iter().map(|s| s.to_string()));
        return Box::new(
            SummarySink::new(out, keys, interval, spec.json)
                .with_node(node.to_string())
                .with_node_column(spec.node_column),
        );
    }
    if spec.json {
        let fields = if spec.fields.is_empty() {
            // The whole event; it names its node already.
            Vec::new()
        } else {
            spec.keys(std::iter::empty())
        };
        return Box::new(JsonSink::new(out, fields));
    }
    let mut columns = Vec::new();
    if spec.node_column {
        columns.push(Column::new("node", "NODE", 12));
    }
    if spec.fields.is_empty() {
        columns.extend(g.columns.iter().filter(|c| c.key != "node").cloned());
    } else {
        columns.extend(
            spec.fields
                .iter()
                .filter(|f| !spec.node_column || f.as_str() != "node")
                .map(|f| Column::for_key(f)),
        );
    }
    Box::new(ColumnsSink::new(out, columns, spec.width))
}

/// This host's pipeline printing through an [`Output`].
pub struct OutputSink<O: Output = Box<dyn Output>> {
    out: O,
    node: Arc<str>,
}

impl<O: Output> OutputSink<O> {
    pub fn new(out: O, node: Arc<str>) -> OutputSink<O> {
        OutputSink { out, node }
    }

    pub fn into_inner(self) -> O {
        self.out
    }
}

impl Output for Box<dyn Output> {
    fn record(&mut self, r: &dyn Record) -> io::Result<()> {
        (**self).record(r)
    }
    fn lost(&mut self, node: &str, gadget: &str, count: u64, at: SystemTime) -> io::Result<()> {
        (**self).lost(node, gadget, count, at)
    }
    fn record_count(&mut self, r: &dyn Record, n: u64) -> io::Result<()> {
        (**self).record_count(r, n)
    }
    fn summary_keys(&self) -> Option<&[String]> {
        (**self).summary_keys()
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
    fn tick(&mut self) -> io::Result<()> {
        (**self).tick()
    }
    fn finish(&mut self) -> io::Result<()> {
        (**self).finish()
    }
}

impl<O: Output> Sink for OutputSink<O> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.out.record(ev)
    }
    fn lost(&mut self, gadget: &str, count: u64, at: SystemTime) -> io::Result<()> {
        self.out.lost(&self.node, gadget, count, at)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
    fn tick(&mut self) -> io::Result<()> {
        self.out.tick()
    }
    fn finish(&mut self) -> io::Result<()> {
        self.out.finish()
    }
    fn event_count(&mut self, ev: &Event, n: u64) -> io::Result<()> {
        self.out.record_count(ev, n)
    }
    fn summary_keys(&self) -> Option<&[String]> {
        self.out.summary_keys()
    }
}

/// The line every run ends with on stderr: `plumb: N events, M lost`, and
/// what else the run has to say (`, 3 filtered in user space`, ...).
pub fn end_line(seen: u64, lost: u64, more: &[String]) -> String {
    let mut line = format!("plumb: {seen} events, {lost} lost");
    for m in more {
        line.push_str(", ");
        line.push_str(m);
    }
    line
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

    /// Keep only `fields` of a serialised event (the `--fields` option).
    fn select(v: serde_json::Value, fields: &[String]) -> serde_json::Value {
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

    /// A writer whose bytes the test reads after the output is done.
    #[derive(Clone, Default)]
    struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn render(spec: &OutputSpec, records: &[&dyn Record]) -> String {
        let g = crate::gadgets::find("exec").unwrap();
        let buf = Shared::default();
        let mut out = output(g, spec, "node-a", buf.clone());
        for r in records {
            out.record(*r).unwrap();
        }
        out.lost("node-a", "exec", 2, UNIX_EPOCH).unwrap();
        out.finish().unwrap();
        drop(out);
        let b = buf.0.borrow();
        String::from_utf8(b.clone()).unwrap()
    }

    /// What an agent sends for each event and its client decodes.
    fn over_the_wire(e: &Event) -> serde_json::Value {
        serde_json::from_slice(&serde_json::to_vec(e).unwrap()).unwrap()
    }

    #[test]
    fn remote_output_is_local_output_with_the_node_in_front() {
        let events = [ev(10, "sh", "/bin/sh"), ev(123456, "bash", "/bin/bash")];
        let wire: Vec<serde_json::Value> = events.iter().map(over_the_wire).collect();
        let local_recs: Vec<&dyn Record> = events.iter().map(|e| e as &dyn Record).collect();
        let remote_recs: Vec<&dyn Record> = wire.iter().map(|e| e as &dyn Record).collect();
        let fields = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let summary = Some(Duration::from_secs(3600));
        // (json, --fields, --summary, how the node is taken out of a remote line)
        type Strip = fn(&str) -> String;
        let cases: [(bool, Vec<String>, Option<Duration>, Strip); 6] = [
            (false, vec![], None, |l| l[13..].to_string()),
            (false, fields(&["pid", "comm", "args"]), None, |l| {
                l[13..].to_string()
            }),
            (true, vec![], None, |l| l.to_string()),
            (true, fields(&["pid", "comm"]), None, |l| {
                match l.strip_prefix("{\"node\":\"node-a\",") {
                    Some(rest) => format!("{{{rest}"),
                    None => l.to_string(),
                }
            }),
            (false, vec![], summary, |l| {
                if l.starts_with("---") {
                    l.to_string()
                } else {
                    format!("{}{}", &l[..10], &l[18..])
                }
            }),
            (true, vec![], summary, |l| l.to_string()),
        ];
        for (json, fields, summary, strip) in cases {
            let spec = OutputSpec {
                json,
                fields,
                summary,
                ..OutputSpec::default()
            };
            let local = render(&spec, &local_recs);
            let remote = render(
                &OutputSpec {
                    node_column: true,
                    ..spec.clone()
                },
                &remote_recs,
            );
            // A summary stamps its rows when it reports, a moment apart in
            // the two renders.
            let stamp = |l: String| match (spec.summary, l.find("\"timestamp\":\"")) {
                (Some(_), Some(i)) => {
                    let j = i + 13 + l[i + 13..].find('"').unwrap();
                    format!("{}{}", &l[..i + 13], &l[j..])
                }
                _ if spec.summary.is_some() && l.starts_with("---") => "---".into(),
                _ => l,
            };
            let stripped: Vec<String> = remote.lines().map(strip).map(stamp).collect();
            let local_lines: Vec<String> = local.lines().map(|l| stamp(l.to_string())).collect();
            assert_eq!(local_lines, stripped, "{spec:?}\n{remote}");
            assert!(!local.is_empty());
        }
    }

    #[test]
    fn json_lines_carry_type_timestamp_and_pod() {
        let mut s = JsonSink::new(Vec::new(), vec![]);
        s.record(&ev(10, "sh", "/bin/sh")).unwrap();
        s.lost("node-a", "exec", 3, UNIX_EPOCH).unwrap();
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
        let mut s = JsonSink::new(Vec::new(), vec!["pid".into(), "nope".into()]);
        s.record(&ev(10, "sh", "/bin/sh")).unwrap();
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
        let mut s = JsonSink::new(Vec::new(), fields.clone());
        s.record(&e).unwrap();
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
        s.record(&ev(10, "sh", "/bin/sh")).unwrap();
        s.record(&ev(123456, "bash", "/bin/bash")).unwrap();
        let out = String::from_utf8(s.into_inner()).unwrap();
        assert_eq!(
            out,
            "PID    COMM     ARGS\n10     sh       /bin/sh --x\n123456 bash     /bin/bash --x\n"
        );
    }

    #[test]
    fn columns_are_cut_to_the_terminal() {
        let mut s = ColumnsSink::new(Vec::new(), vec![Column::new("args", "ARGS", 0)], Some(6));
        s.record(&ev(1, "sh", "/bin/sh")).unwrap();
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
                s.record(&ev(1, c, "/x")).unwrap();
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
