//! The aligned table for a terminal: a header, then one row per event.
//! Widths come from the gadget's column description; the last column takes
//! what is left of the terminal's width. A value wider than its column (an
//! IPv6 address) is never cut: it pushes the next column right, and the
//! columns after that return to their places as soon as there is room.

use super::pick::Picker;
use super::{cell, Output, Record};
use crate::gadgets::Column;
use std::io::{self, Write};

pub struct ColumnsSink<W: Write> {
    out: W,
    columns: Vec<Column>,
    /// Takes the columns' keys from each event while it is serialised.
    picker: Picker,
    max_width: Option<usize>,
    header_done: bool,
}

impl<W: Write> ColumnsSink<W> {
    /// `max_width`: cut rows to this many characters (a terminal's width).
    pub fn new(out: W, columns: Vec<Column>, max_width: Option<usize>) -> Self {
        let keys: Vec<String> = columns.iter().map(|c| c.key.to_string()).collect();
        ColumnsSink {
            out,
            picker: Picker::new(&keys),
            columns,
            max_width,
            header_done: false,
        }
    }

    fn row(&mut self, cells: Vec<String>) -> io::Result<()> {
        let line = layout(&self.columns, cells);
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

    /// The output written so far (a buffer the caller drains).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
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

/// One row: each column starts where its width puts it, or one space after
/// a wider value before it.
fn layout(columns: &[Column], cells: Vec<String>) -> String {
    let mut line = String::new();
    let mut used = 0usize;
    let mut start = 0usize;
    let n = columns.len();
    for (i, (c, text)) in columns.iter().zip(cells).enumerate() {
        if used < start {
            line.extend(std::iter::repeat_n(' ', start - used));
            used = start;
        }
        line.push_str(&text);
        used += text.chars().count();
        if i + 1 == n || c.width == 0 {
            break;
        }
        line.push(' ');
        used += 1;
        start += c.width.max(c.header.len()) + 1;
    }
    line
}

/// A value given as JSON text, as a table cell (what [`cell`] makes of it).
fn raw_cell(json: Option<&[u8]>) -> String {
    match json {
        None | Some(b"null") => "-".to_string(),
        Some(j) if j.first() == Some(&b'"') => serde_json::from_slice(j).unwrap_or_default(),
        Some(j) if j.first() == Some(&b'[') => cell(serde_json::from_slice(j).ok().as_ref()),
        Some(j) => String::from_utf8_lossy(j).into_owned(),
    }
}

/// Time of day with microseconds from an RFC 3339 timestamp.
fn time_of_day(ts: &str) -> String {
    ts.get(11..26).unwrap_or(ts).to_string()
}

impl<W: Write> Output for ColumnsSink<W> {
    fn record(&mut self, r: &dyn Record) -> io::Result<()> {
        self.header()?;
        r.pick_into(&mut self.picker)?;
        let cells = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let x = raw_cell(self.picker.value(i));
                if c.key == "timestamp" {
                    time_of_day(&x)
                } else {
                    x
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_from_json_text_equal_cells_from_the_tree() {
        for j in [
            r#"null"#,
            r#""O_RDONLY|O_CLOEXEC""#,
            r#""a \"quoted\" path""#,
            r#"42"#,
            r#"-2"#,
            r#"true"#,
            r#"["ls","-l","/tmp"]"#,
            r#"{"a":1}"#,
        ] {
            let tree: serde_json::Value = serde_json::from_str(j).unwrap();
            assert_eq!(raw_cell(Some(j.as_bytes())), cell(Some(&tree)), "{j}");
        }
        assert_eq!(raw_cell(None), "-");
    }

    #[test]
    fn a_wide_value_pushes_only_until_there_is_room() {
        let cols = [
            Column::new("saddr", "SADDR", 15),
            Column::new("sport", "SPORT", 5),
            Column::new("daddr", "DADDR", 15),
            Column::new("dport", "DPORT", 5),
            Column::new("error", "ERROR", 0),
        ];
        let row = |v: [&str; 5]| layout(&cols, v.iter().map(|s| s.to_string()).collect());
        let header = row(["SADDR", "SPORT", "DADDR", "DPORT", "ERROR"]);
        let v4 = row(["10.0.0.1", "40000", "10.0.0.2", "80", "-"]);
        let v6 = row(["fd00:aaaa::1234:5678", "40000", "fd00::2", "80", "-"]);
        assert_eq!(header, "SADDR           SPORT DADDR           DPORT ERROR");
        assert_eq!(v4, "10.0.0.1        40000 10.0.0.2        80    -");
        // The address runs over: SPORT and DADDR move right, DPORT is back
        // in its place.
        assert_eq!(v6, "fd00:aaaa::1234:5678 40000 fd00::2    80    -");
        assert_eq!(v6.find(" 80 ").map(|i| i + 1), header.find("DPORT"));
    }
}
