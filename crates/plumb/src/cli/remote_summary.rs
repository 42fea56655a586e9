//! `--summary INTERVAL` for remote runs: the merged stream of every node
//! is counted on the client, per key, and printed every interval in the
//! format of the local summary (plumb-core's `SummarySink`, which takes
//! typed events; remote events arrive as JSON objects). The node is the
//! first key unless `--fields` says otherwise.

use super::common::OutputOpts;
use plumb_core::gadgets::GadgetDesc;
use plumb_core::sink::cell;
use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, Instant, SystemTime};

pub struct Summary {
    keys: Vec<String>,
    interval: Duration,
    last: Instant,
    counts: HashMap<Vec<String>, u64>,
    json: bool,
}

impl Summary {
    pub fn new(g: &GadgetDesc, o: &OutputOpts, interval: Duration) -> Summary {
        let keys = if o.fields.is_empty() {
            std::iter::once("node")
                .chain(g.summary_keys.iter().copied())
                .map(str::to_string)
                .collect()
        } else {
            o.fields.clone()
        };
        Summary {
            keys,
            interval,
            last: Instant::now(),
            counts: HashMap::new(),
            json: o.json,
        }
    }

    pub fn event(&mut self, ev: &serde_json::Value) {
        let key = self.keys.iter().map(|k| cell(ev.get(k))).collect();
        *self.counts.entry(key).or_default() += 1;
    }

    pub fn due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    /// The interval's counts, busiest first (ties by key).
    fn sorted(&self) -> Vec<(Vec<String>, u64)> {
        let mut v: Vec<_> = self.counts.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    pub fn report(&mut self, out: &mut impl Write) -> io::Result<()> {
        let rows = self.sorted();
        self.counts.clear();
        self.last = Instant::now();
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        write_rows(out, &self.keys, &rows, &now, self.json)?;
        out.flush()
    }

    /// The last, partial interval, if it counted anything.
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.counts.is_empty() {
            return Ok(());
        }
        self.report(out)
    }
}

fn write_rows(
    out: &mut impl Write,
    keys: &[String],
    rows: &[(Vec<String>, u64)],
    now: &str,
    json: bool,
) -> io::Result<()> {
    if json {
        for (k, n) in rows {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), "summary".into());
            m.insert("timestamp".into(), now.into());
            for (name, val) in keys.iter().zip(k) {
                m.insert(name.clone(), val.clone().into());
            }
            m.insert("count".into(), (*n).into());
            serde_json::to_writer(&mut *out, &m)?;
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    writeln!(out, "--- {now} ---")?;
    let mut widths: Vec<usize> = keys.iter().map(|k| k.len()).collect();
    for (k, _) in rows {
        for (w, v) in widths.iter_mut().zip(k) {
            *w = (*w).max(v.len());
        }
    }
    let mut head = format!("{:>8}", "COUNT");
    for (k, w) in keys.iter().zip(&widths) {
        head.push_str(&format!("  {:<w$}", k.to_uppercase()));
    }
    writeln!(out, "{}", head.trim_end())?;
    for (k, n) in rows {
        let mut line = format!("{n:>8}");
        for (v, w) in k.iter().zip(&widths) {
            line.push_str(&format!("  {v:<w$}"));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(fields: &[&str], json: bool) -> OutputOpts {
        OutputOpts {
            json,
            fields: fields.iter().map(|s| s.to_string()).collect(),
            duration: None,
            max_events: None,
            summary: Some(Duration::from_secs(1)),
            buffer: None,
        }
    }

    fn exec() -> &'static GadgetDesc {
        plumb_core::gadgets::find("exec").unwrap()
    }

    #[test]
    fn counts_per_node_and_the_gadgets_keys() {
        let mut s = Summary::new(exec(), &opts(&[], false), Duration::from_secs(1));
        let ev = |node: &str, comm: &str| serde_json::json!({"node": node, "comm": comm, "filename": "/bin/true"});
        for e in [ev("n1", "true"), ev("n2", "true"), ev("n1", "true")] {
            s.event(&e);
        }
        let rows = s.sorted();
        assert_eq!(s.keys, ["node", "comm", "filename"]);
        assert_eq!(
            rows,
            vec![
                (vec!["n1".into(), "true".into(), "/bin/true".into()], 2),
                (vec!["n2".into(), "true".into(), "/bin/true".into()], 1),
            ]
        );
        let mut out = Vec::new();
        write_rows(&mut out, &s.keys, &rows, "T", false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "--- T ---\n   COUNT  NODE  COMM  FILENAME\n       2  n1    true  /bin/true\n       1  n2    true  /bin/true\n"
        );
    }

    #[test]
    fn fields_choose_the_keys_and_json_gives_one_object_per_row() {
        let mut s = Summary::new(exec(), &opts(&["comm"], true), Duration::from_secs(1));
        s.event(&serde_json::json!({"node": "n1", "comm": "sh"}));
        s.event(&serde_json::json!({"node": "n2", "comm": "sh"}));
        let mut out = Vec::new();
        write_rows(&mut out, &s.keys, &s.sorted(), "T", true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"summary\",\"timestamp\":\"T\",\"comm\":\"sh\",\"count\":2}\n"
        );
        // Nothing counted: the last interval prints nothing.
        let mut empty = Summary::new(exec(), &opts(&[], false), Duration::from_secs(1));
        let mut out = Vec::new();
        empty.finish(&mut out).unwrap();
        assert!(out.is_empty());
    }
}
