//! `--summary INTERVAL`: instead of a line per event, a table of counts per
//! key every interval, busiest first. What a user runs on a busy node.

use super::{cell, Sink};
use crate::event::Event;
use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

pub struct SummarySink<W: Write> {
    out: W,
    keys: Vec<String>,
    interval: Duration,
    last: Instant,
    counts: HashMap<Vec<String>, u64>,
    json: bool,
}

impl<W: Write> SummarySink<W> {
    pub fn new(out: W, keys: Vec<String>, interval: Duration, json: bool) -> Self {
        SummarySink {
            out,
            keys,
            interval,
            last: Instant::now(),
            counts: HashMap::new(),
            json,
        }
    }

    /// The current interval's counts, busiest first (ties by key).
    pub fn sorted(&self) -> Vec<(Vec<String>, u64)> {
        let mut v: Vec<_> = self.counts.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    fn report(&mut self) -> io::Result<()> {
        let rows = self.sorted();
        self.counts.clear();
        self.last = Instant::now();
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        if self.json {
            for (k, n) in rows {
                let mut m = serde_json::Map::new();
                m.insert("type".into(), "summary".into());
                m.insert("timestamp".into(), now.to_string().into());
                for (name, val) in self.keys.iter().zip(k) {
                    m.insert(name.clone(), val.into());
                }
                m.insert("count".into(), n.into());
                serde_json::to_writer(&mut self.out, &m)?;
                self.out.write_all(b"\n")?;
            }
        } else {
            writeln!(self.out, "--- {now} ---")?;
            let mut widths: Vec<usize> = self.keys.iter().map(|k| k.len()).collect();
            for (k, _) in &rows {
                for (w, v) in widths.iter_mut().zip(k) {
                    *w = (*w).max(v.len());
                }
            }
            let mut head = format!("{:>8}", "COUNT");
            for (k, w) in self.keys.iter().zip(&widths) {
                head.push_str(&format!("  {:<w$}", k.to_uppercase()));
            }
            writeln!(self.out, "{}", head.trim_end())?;
            for (k, n) in rows {
                let mut line = format!("{n:>8}");
                for (v, w) in k.iter().zip(&widths) {
                    line.push_str(&format!("  {v:<w$}"));
                }
                writeln!(self.out, "{}", line.trim_end())?;
            }
        }
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for SummarySink<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let v = serde_json::to_value(ev)?;
        let key = self.keys.iter().map(|k| cell(v.get(k))).collect();
        *self.counts.entry(key).or_default() += 1;
        Ok(())
    }

    fn tick(&mut self) -> io::Result<()> {
        if self.last.elapsed() >= self.interval {
            self.report()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        if !self.counts.is_empty() {
            self.report()?;
        }
        Ok(())
    }
}
