//! Ring buffers and perf buffers, streamed as decoded records.
//!
//! Their BTF has no record type (the kernel takes no key or value type for
//! them), so the object names it: the type of a global variable named
//! `MAP_record` (or the type it points to) is the record type of map
//! `MAP`. Without one, records are shown as hex. Records a perf buffer
//! lost are counted per map and reported.

use crate::btf::Btf;
use crate::decode::{decode, hex};
use crate::error::{Error, Result};
use libbpf_rs::{
    Map, MapCore, MapType, Object, PerfBuffer, PerfBufferBuilder, RingBuffer, RingBufferBuilder,
};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

/// The suffix of the global that names a record type.
pub const RECORD_SUFFIX: &str = "_record";

/// Records and losses gathered by the callbacks, drained by the caller.
#[derive(Default)]
pub struct Inbox {
    pub records: Vec<(String, Value)>,
    pub lost: BTreeMap<String, u64>,
}

/// The object's streaming maps, open for polling.
pub struct Streams<'obj> {
    ring: Option<RingBuffer<'obj>>,
    perf: Vec<PerfBuffer<'obj>>,
    pub inbox: Rc<RefCell<Inbox>>,
    pub names: Vec<String>,
    pub warnings: Vec<String>,
}

fn decoder(btf: Option<&Btf>, map: &str) -> (Option<(Btf, u32)>, Option<String>) {
    match btf.and_then(|b| b.global_type(&format!("{map}{RECORD_SUFFIX}")).map(|t| (b.clone(), t))) {
        Some(d) => (Some(d), None),
        None => (
            None,
            Some(format!(
                "map {map}: no global {map}{RECORD_SUFFIX} names its record type: records shown as hex"
            )),
        ),
    }
}

/// The object's ring buffer and perf buffer maps, for [`Streams::open`]
/// (which borrows them).
pub fn stream_maps(obj: &Object) -> Vec<Map<'_>> {
    obj.maps()
        .filter(|m| matches!(m.map_type(), MapType::RingBuf | MapType::PerfEventArray))
        .collect()
}

impl<'obj> Streams<'obj> {
    pub fn open(maps: &'obj [Map<'obj>], btf: Option<&Btf>) -> Result<Streams<'obj>> {
        let inbox = Rc::new(RefCell::new(Inbox::default()));
        let mut rb = RingBufferBuilder::new();
        let mut rings = 0;
        let mut perf = Vec::new();
        let mut names = Vec::new();
        let mut warnings = Vec::new();
        for m in maps {
            let name = m.name().to_string_lossy().into_owned();
            let t = m.map_type();
            if t != MapType::RingBuf && t != MapType::PerfEventArray {
                continue;
            }
            let (dec, warn) = decoder(btf, &name);
            warnings.extend(warn);
            let rec = move |data: &[u8]| match &dec {
                Some((b, ty)) => decode(b, *ty, data),
                None => hex(data),
            };
            let err = |e: libbpf_rs::Error| Error::Map {
                map: name.clone(),
                reason: e.to_string(),
            };
            if t == MapType::RingBuf {
                let (inbox, n) = (inbox.clone(), name.clone());
                rb.add(m, move |data| {
                    inbox.borrow_mut().records.push((n.clone(), rec(data)));
                    0
                })
                .map_err(err)?;
                rings += 1;
            } else {
                let (inbox, n) = (inbox.clone(), name.clone());
                let (lost_inbox, ln) = (inbox.clone(), name.clone());
                let pb = PerfBufferBuilder::new(m)
                    .sample_cb(move |_cpu, data: &[u8]| {
                        inbox.borrow_mut().records.push((n.clone(), rec(data)));
                    })
                    .lost_cb(move |_cpu, count| {
                        *lost_inbox.borrow_mut().lost.entry(ln.clone()).or_default() += count;
                    })
                    .build()
                    .map_err(err)?;
                perf.push(pb);
            }
            names.push(name);
        }
        let ring = if rings > 0 {
            Some(rb.build().map_err(|e| Error::Map {
                map: names.join(","),
                reason: e.to_string(),
            })?)
        } else {
            None
        };
        Ok(Streams {
            ring,
            perf,
            inbox,
            names,
            warnings,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_none() && self.perf.is_empty()
    }

    /// Wait up to `timeout` for records; they land in the inbox.
    pub fn poll(&self, timeout: Duration) -> Result<()> {
        let each = if self.perf.is_empty() {
            timeout
        } else {
            timeout / (1 + self.perf.len() as u32)
        };
        if let Some(r) = &self.ring {
            r.poll(each).map_err(|e| Error::Map {
                map: "ring buffer".into(),
                reason: e.to_string(),
            })?;
        }
        for p in &self.perf {
            p.poll(each).map_err(|e| Error::Map {
                map: "perf buffer".into(),
                reason: e.to_string(),
            })?;
        }
        if self.is_empty() {
            std::thread::sleep(timeout);
        }
        Ok(())
    }

    /// Read what is left without waiting.
    pub fn drain(&self) -> Result<()> {
        if let Some(r) = &self.ring {
            r.consume().map_err(|e| Error::Map {
                map: "ring buffer".into(),
                reason: e.to_string(),
            })?;
        }
        for p in &self.perf {
            p.consume().map_err(|e| Error::Map {
                map: "perf buffer".into(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}
