//! `--summary INTERVAL`: instead of a line per event, a table of counts per
//! key every interval, busiest first. What a user runs on a busy node.
//!
//! Keys keep the type they have in the event's JSON (a port or a netns is a
//! number), rows carry the node, and records lost in the kernel during the
//! interval are reported with it, so nothing is lost silently here either.

use super::pick::Picker;
use super::{cell, write_lost, Output, Record};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub struct SummarySink<W: Write> {
    out: W,
    keys: Vec<String>,
    /// Takes the keys' values from each record while it is serialised.
    picker: Picker,
    /// The current record's group: each key's JSON text, NUL-separated
    /// (JSON text never holds a raw NUL). Reused for every record.
    group: Vec<u8>,
    interval: Duration,
    last: Instant,
    /// Group → the values and the count.
    counts: HashMap<Vec<u8>, (Vec<Value>, u64)>,
    json: bool,
    node: Option<Arc<str>>,
    /// Records come from several nodes: `node` is a key, and lost rows
    /// name theirs.
    node_column: bool,
    /// Records lost this interval, per node and gadget.
    lost: BTreeMap<(String, String), u64>,
}

impl<W: Write> SummarySink<W> {
    pub fn new(out: W, keys: Vec<String>, interval: Duration, json: bool) -> Self {
        SummarySink {
            out,
            picker: Picker::new(&keys),
            keys,
            group: Vec::new(),
            interval,
            last: Instant::now(),
            counts: HashMap::new(),
            json,
            node: None,
            node_column: false,
            lost: BTreeMap::new(),
        }
    }

    /// The node rows name before any event has named it (events carry it).
    pub fn with_node(mut self, node: impl Into<Arc<str>>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Records come from several nodes (see `OutputSpec::node_column`).
    pub fn with_node_column(mut self, on: bool) -> Self {
        self.node_column = on;
        self
    }

    /// Count `n` records that look like `r` (a count kept in the kernel
    /// arrives as one record and its number).
    pub fn count(&mut self, r: &dyn Record, n: u64) -> io::Result<()> {
        r.pick_into(&mut self.picker)?;
        self.group.clear();
        for i in 0..self.keys.len() {
            self.group
                .extend_from_slice(self.picker.value(i).unwrap_or(b"null"));
            self.group.push(0);
        }
        match self.counts.get_mut(self.group.as_slice()) {
            Some((_, c)) => *c += n,
            None => {
                let vals = (0..self.keys.len())
                    .map(|i| {
                        self.picker
                            .value(i)
                            .and_then(|j| serde_json::from_slice(j).ok())
                            .unwrap_or(Value::Null)
                    })
                    .collect();
                self.counts.insert(self.group.clone(), (vals, n));
            }
        }
        if self.node.is_none() && !r.node().is_empty() {
            self.node = Some(Arc::from(r.node()));
        }
        Ok(())
    }

    fn rows(&self) -> Vec<(Vec<Value>, u64)> {
        let mut v: Vec<(&Vec<u8>, &Vec<Value>, u64)> = self
            .counts
            .iter()
            .map(|(k, (vals, n))| (k, vals, *n))
            .collect();
        v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(b.0)));
        v.into_iter()
            .map(|(_, vals, n)| (vals.clone(), n))
            .collect()
    }

    /// The current interval's counts as table cells, busiest first (ties
    /// by key).
    pub fn sorted(&self) -> Vec<(Vec<String>, u64)> {
        self.rows()
            .into_iter()
            .map(|(vals, n)| (vals.iter().map(|x| cell(Some(x))).collect(), n))
            .collect()
    }

    fn report(&mut self) -> io::Result<()> {
        let rows = self.rows();
        let lost = std::mem::take(&mut self.lost);
        self.counts.clear();
        self.last = Instant::now();
        let now = SystemTime::now();
        if self.node.is_none() {
            self.node = Some(Arc::from(crate::runner::node_name()));
        }
        let node = self.node.as_deref().unwrap_or_default();
        if self.json {
            let ts = humantime::format_rfc3339_seconds(now).to_string();
            for (vals, n) in rows {
                let mut m = serde_json::Map::new();
                m.insert("type".into(), "summary".into());
                m.insert("timestamp".into(), ts.clone().into());
                // A `node` key takes this place with its own value.
                m.insert("node".into(), node.into());
                for (name, val) in self.keys.iter().zip(vals) {
                    m.insert(name.clone(), val);
                }
                m.insert("count".into(), n.into());
                serde_json::to_writer(&mut self.out, &m)?;
                self.out.write_all(b"\n")?;
            }
            for ((node, gadget), count) in lost {
                write_lost(&mut self.out, &node, &gadget, count, now)?;
            }
        } else {
            writeln!(
                self.out,
                "--- {} ---",
                humantime::format_rfc3339_seconds(now)
            )?;
            let cells: Vec<(Vec<String>, u64)> = rows
                .iter()
                .map(|(vals, n)| (vals.iter().map(|x| cell(Some(x))).collect(), *n))
                .collect();
            let mut widths: Vec<usize> = self.keys.iter().map(|k| k.len()).collect();
            for (k, _) in &cells {
                for (w, v) in widths.iter_mut().zip(k) {
                    *w = (*w).max(v.len());
                }
            }
            let mut head = format!("{:>8}", "COUNT");
            for (k, w) in self.keys.iter().zip(&widths) {
                head.push_str(&format!("  {:<w$}", k.to_uppercase()));
            }
            writeln!(self.out, "{}", head.trim_end())?;
            for (k, n) in cells {
                let mut line = format!("{n:>8}");
                for (v, w) in k.iter().zip(&widths) {
                    line.push_str(&format!("  {v:<w$}"));
                }
                writeln!(self.out, "{}", line.trim_end())?;
            }
            let node_at = self.keys.iter().position(|k| k == "node");
            for ((node, gadget), count) in lost {
                let mut line = format!("{count:>8}  ");
                if let (true, Some(i)) = (self.node_column, node_at) {
                    // In the node's column, after the keys before it.
                    for w in &widths[..i] {
                        line.push_str(&format!("{:<w$}  ", ""));
                    }
                    line.push_str(&format!("{node:<w$}  ", w = widths[i]));
                }
                writeln!(
                    self.out,
                    "{line}records of {gadget} lost in the kernel (not counted above)"
                )?;
            }
        }
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Output for SummarySink<W> {
    fn record(&mut self, r: &dyn Record) -> io::Result<()> {
        self.count(r, 1)
    }

    fn record_count(&mut self, r: &dyn Record, n: u64) -> io::Result<()> {
        self.count(r, n)
    }

    fn summary_keys(&self) -> Option<&[String]> {
        Some(&self.keys)
    }

    fn lost(&mut self, node: &str, gadget: &str, count: u64, _at: SystemTime) -> io::Result<()> {
        *self
            .lost
            .entry((node.to_string(), gadget.to_string()))
            .or_default() += count;
        Ok(())
    }

    fn tick(&mut self) -> io::Result<()> {
        if self.last.elapsed() >= self.interval {
            self.report()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        if !self.counts.is_empty() || !self.lost.is_empty() {
            self.report()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Header, Workload};
    use crate::gadgets::net::{Flow, RawFlow};
    use crate::gadgets::reset::{Direction, Reset};
    use crate::gadgets::Body;
    use bytemuck::Zeroable;
    use std::time::UNIX_EPOCH;

    fn reset(sport: u16, netns: u32) -> Event {
        let mut r = RawFlow::zeroed();
        r.family = libc::AF_INET as u16;
        r.proto = 6;
        r.has_ports = 1;
        r.sport = sport;
        r.dport = 40000;
        r.netns = netns;
        Event {
            body: Body::Reset(Reset {
                direction: Direction::Sent,
                state: None,
                reason: Some("NO_SOCKET".into()),
                flow: Flow::decode(&r).unwrap(),
            }),
            header: Header {
                timestamp: UNIX_EPOCH,
                node: Arc::from("node-a"),
                // A network event: no task.
                pid: None,
                tid: None,
                uid: None,
                comm: None,
                cgroup_id: 0,
                cgroup: None,
                workload: Arc::new(Workload::default()),
            },
        }
    }

    fn lines(s: SummarySink<Vec<u8>>) -> Vec<Value> {
        String::from_utf8(s.into_inner())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn json_rows_keep_numbers_and_name_the_node() {
        let keys = ["direction", "sport", "netns", "src_pod"].map(String::from);
        let mut s = SummarySink::new(Vec::new(), keys.to_vec(), Duration::from_secs(3600), true);
        for _ in 0..3 {
            s.record(&reset(9, 4026532318)).unwrap();
        }
        s.record(&reset(10, 4026532318)).unwrap();
        s.finish().unwrap();
        let v = lines(s);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["node"], "node-a");
        assert_eq!(v[0]["sport"], 9, "a number, as in the event");
        assert_eq!(v[0]["netns"], 4026532318u64);
        assert_eq!(v[0]["direction"], "sent");
        assert_eq!(v[0]["src_pod"], Value::Null);
        assert_eq!(v[0]["count"], 3);
        assert_eq!(
            (&v[1]["sport"], &v[1]["count"]),
            (&serde_json::json!(10), &serde_json::json!(1))
        );
    }

    #[test]
    fn lost_records_are_reported_with_the_interval() {
        let mut s = SummarySink::new(
            Vec::new(),
            vec!["sport".into()],
            Duration::from_secs(3600),
            true,
        )
        .with_node("node-b");
        s.lost("node-b", "reset", 5, UNIX_EPOCH).unwrap();
        s.lost("node-b", "reset", 2, UNIX_EPOCH).unwrap();
        s.finish().unwrap();
        let v = lines(s);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (
                &v[0]["type"],
                &v[0]["gadget"],
                &v[0]["count"],
                &v[0]["node"]
            ),
            (
                &serde_json::json!("lost"),
                &serde_json::json!("reset"),
                &serde_json::json!(7),
                &serde_json::json!("node-b")
            )
        );
        let mut t = SummarySink::new(Vec::new(), vec!["sport".into()], Duration::ZERO, false);
        t.record(&reset(9, 1)).unwrap();
        t.lost("n", "reset", 4, UNIX_EPOCH).unwrap();
        t.tick().unwrap();
        let out = String::from_utf8(t.into_inner()).unwrap();
        let body: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "   COUNT  SPORT",
                "       1  9",
                "       4  records of reset lost in the kernel (not counted above)"
            ]
        );
    }
}
