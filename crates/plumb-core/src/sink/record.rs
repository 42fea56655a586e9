//! What an output sink prints: a [`Record`]. A typed [`Event`] from this
//! host's pipeline is one, and so is an event received from an agent (a
//! JSON object that carries its `node`). Both are serialised by serde, so
//! the columns, JSON lines and summaries come out the same, byte for byte,
//! whichever side of the wire the event was decoded on.

use super::pick::Picker;
use crate::event::Event;
use std::io::{self, Write};

/// One printable record: a serde value that is a JSON object, with the
/// node it was seen on.
pub trait Record {
    /// The node that saw it.
    fn node(&self) -> &str;
    /// Write the whole record as one JSON object.
    fn write_json(&self, out: &mut dyn Write) -> io::Result<()>;
    /// Let `picker` take the keys it was built for.
    fn pick_into(&self, picker: &mut Picker) -> io::Result<()>;
}

impl Record for Event {
    fn node(&self) -> &str {
        &self.header.node
    }
    fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(out, self).map_err(io::Error::from)
    }
    fn pick_into(&self, picker: &mut Picker) -> io::Result<()> {
        picker.pick(self)
    }
}

/// An event as an agent sent it: the JSON object its pipeline serialised.
impl Record for serde_json::Value {
    fn node(&self) -> &str {
        self.get("node").and_then(|n| n.as_str()).unwrap_or("")
    }
    fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(out, self).map_err(io::Error::from)
    }
    fn pick_into(&self, picker: &mut Picker) -> io::Result<()> {
        picker.pick(self)
    }
}
