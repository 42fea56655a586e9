//! The aligned table for a terminal: a header, then one row per event.
//! Widths come from the gadget's column description; the last column takes
//! what is left of the terminal's width.

use super::{cell, Sink};
use crate::event::Event;
use crate::gadgets::Column;
use std::io::{self, Write};

pub struct ColumnsSink<W: Write> {
    out: W,
    columns: Vec<Column>,
    max_width: Option<usize>,
    header_done: bool,
}

impl<W: Write> ColumnsSink<W> {
    /// `max_width`: cut rows to this many characters (a terminal's width).
    pub fn new(out: W, columns: Vec<Column>, max_width: Option<usize>) -> Self {
        ColumnsSink {
            out,
            columns,
            max_width,
            header_done: false,
        }
    }

    fn row(&mut self, cells: Vec<String>) -> io::Result<()> {
        let mut line = String::new();
        let n = self.columns.len();
        for (i, (c, text)) in self.columns.iter().zip(cells).enumerate() {
            let width = c.width.max(c.header.len());
            if i + 1 == n || c.width == 0 {
                line.push_str(&text);
            } else {
                line.push_str(&format!("{text:<width$} "));
            }
        }
        let line = line.trim_end();
        match self.max_width {
            Some(w) if line.chars().count() > w => {
                let cut: String = line.chars().take(w).collect();
                writeln!(self.out, "{cut}")
            }
            _ => writeln!(self.out, "{line}"),
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            let h = self.columns.iter().map(|c| c.header.to_string()).collect();
            self.row(h)?;
        }
        Ok(())
    }
}

/// Time of day with microseconds from an RFC 3339 timestamp.
fn time_of_day(ts: &str) -> String {
    ts.get(11..26).unwrap_or(ts).to_string()
}

impl<W: Write> Sink for ColumnsSink<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.header()?;
        let v = serde_json::to_value(ev)?;
        let cells = self
            .columns
            .iter()
            .map(|c| {
                let x = v.get(&*c.key);
                if c.key == "timestamp" {
                    time_of_day(&cell(x))
                } else {
                    cell(x)
                }
            })
            .collect();
        self.row(cells)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.header()?;
        self.out.flush()
    }
}
