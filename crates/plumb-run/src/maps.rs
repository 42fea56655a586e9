//! Reading the object's maps and decoding every entry by its BTF.
//!
//! Hash and array maps (LRU and per-CPU ones too) are read whole at every
//! interval; a per-CPU value is summed over the CPUs. An array's entries
//! whose value is all zero are left out (an array has every index). A map
//! whose key is, or has a member of, the type `plumb_log2` is a log2
//! histogram: that key field is the bucket, and bucket `b` counts values
//! `v` with `2^b <= v < 2^(b+1)` (bucket 0 also counts 0), as bpftrace's
//! `hist()` and libbpf-tools' `log2l()` do. Ring buffers and perf buffers
//! are streamed by [`crate::records`]. Maps of other types are named in a
//! warning and not read.

use crate::btf::{Btf, Kind};
use crate::decode::{decode, hex};
use crate::error::{Error, Result};
use libbpf_rs::{AsRawLibbpf, Map, MapCore, MapFlags, MapType, Object};
use serde_json::{Map as JsonMap, Value};
use std::cmp::Ordering;

/// The typedef that marks a histogram's bucket.
pub const LOG2_TYPEDEF: &str = "plumb_log2";

/// How a map is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Table,
    /// A log2 histogram; the key field that is the bucket.
    Log2 {
        bucket: String,
    },
}

/// One entry: the key's and the value's fields, flattened (`a_b` for
/// member `b` of member `a`).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: JsonMap<String, Value>,
    pub value: JsonMap<String, Value>,
}

/// A map's entries at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Dump {
    pub map: String,
    pub shape: Shape,
    pub entries: Vec<Entry>,
}

/// What is known of one readable map.
#[derive(Debug, Clone)]
struct Spec {
    name: String,
    key_ty: Option<u32>,
    value_ty: Option<u32>,
    percpu: bool,
    array: bool,
    shape: Shape,
}

/// The readable maps of a loaded object, and what to warn about.
pub struct Reader {
    specs: Vec<Spec>,
    pub warnings: Vec<String>,
}

/// Whether a map is one of libbpf's for globals (`.rodata`, `.bss`...).
pub fn is_internal(name: &str) -> bool {
    name.contains('.')
}

fn btf_ids(m: &Map<'_>) -> (Option<u32>, Option<u32>) {
    let ptr = m.as_libbpf_object().as_ptr();
    // SAFETY: a live map of a loaded object.
    let (k, v) = unsafe {
        (
            libbpf_rs::libbpf_sys::bpf_map__btf_key_type_id(ptr),
            libbpf_rs::libbpf_sys::bpf_map__btf_value_type_id(ptr),
        )
    };
    ((k != 0).then_some(k), (v != 0).then_some(v))
}

/// The bucket field of a histogram key, if `key_ty` makes one.
pub fn log2_field(btf: &Btf, key_ty: u32) -> Option<String> {
    if btf.is_typedef(key_ty, LOG2_TYPEDEF) {
        return Some("key".into());
    }
    match &btf.resolve(key_ty)?.1.kind {
        Kind::Struct { members, .. } => members
            .iter()
            .find(|m| btf.is_typedef(m.ty, LOG2_TYPEDEF))
            .map(|m| m.name.clone()),
        _ => None,
    }
}

impl Reader {
    pub fn new(obj: &Object, btf: Option<&Btf>) -> Reader {
        let mut specs = Vec::new();
        let mut warnings = Vec::new();
        for m in obj.maps() {
            let name = m.name().to_string_lossy().into_owned();
            if is_internal(&name) {
                continue;
            }
            let t = m.map_type();
            let (percpu, array) = match t {
                MapType::Hash | MapType::LruHash => (false, false),
                MapType::PercpuHash | MapType::LruPercpuHash => (true, false),
                MapType::Array => (false, true),
                MapType::PercpuArray => (true, true),
                MapType::RingBuf | MapType::PerfEventArray => continue,
                other => {
                    warnings.push(format!(
                        "map {name}: a {other:?} map is not decoded; it is left out"
                    ));
                    continue;
                }
            };
            let (key_ty, value_ty) = match btf {
                Some(_) => btf_ids(&m),
                None => (None, None),
            };
            if key_ty.is_none() || value_ty.is_none() {
                warnings.push(format!(
                    "map {name} has no BTF for its key or value: shown as bytes"
                ));
            }
            let shape = match (btf, key_ty) {
                (Some(b), Some(k)) => {
                    log2_field(b, k).map_or(Shape::Table, |bucket| Shape::Log2 { bucket })
                }
                _ => Shape::Table,
            };
            specs.push(Spec {
                name,
                key_ty,
                value_ty,
                percpu,
                array,
                shape,
            });
        }
        Reader { specs, warnings }
    }

    /// Names of the maps read, in object order.
    pub fn names(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.name.clone()).collect()
    }

    /// Every readable map's entries now.
    pub fn read(&self, obj: &Object, btf: Option<&Btf>) -> Result<Vec<Dump>> {
        let mut out = Vec::new();
        for s in &self.specs {
            let Some(m) = obj.maps().find(|m| m.name().to_string_lossy() == s.name) else {
                continue;
            };
            out.push(read_map(&m, s, btf)?);
        }
        Ok(out)
    }
}

/// Add `b` into `a`, member by member: numbers are summed, the rest kept.
pub fn add_into(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let sum = match (x.as_u64(), y.as_u64(), x.as_i64(), y.as_i64()) {
                (Some(p), Some(q), _, _) => Value::from(p.wrapping_add(q)),
                (_, _, Some(p), Some(q)) => Value::from(p.wrapping_add(q)),
                _ => Value::from(x.as_f64().unwrap_or(0.0) + y.as_f64().unwrap_or(0.0)),
            };
            *x = match sum {
                Value::Number(n) => n,
                _ => unreachable!("a sum is a number"),
            };
        }
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in y {
                if let Some(slot) = x.get_mut(k) {
                    add_into(slot, v);
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for (slot, v) in x.iter_mut().zip(y) {
                add_into(slot, v);
            }
        }
        _ => {}
    }
}

/// `v` as flat fields: an object's members (nested ones joined by `_`),
/// or `{name: v}` for anything else.
pub fn flatten(v: Value, name: &str) -> JsonMap<String, Value> {
    let mut out = JsonMap::new();
    match v {
        Value::Object(o) => flatten_into(o, "", &mut out),
        other => {
            out.insert(name.to_string(), other);
        }
    }
    out
}

fn flatten_into(o: JsonMap<String, Value>, prefix: &str, out: &mut JsonMap<String, Value>) {
    for (k, v) in o {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}_{k}")
        };
        match v {
            Value::Object(inner) => flatten_into(inner, &key, out),
            other => {
                out.insert(key, other);
            }
        }
    }
}

fn cmp_value(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Entries in key order: field by field, numbers as numbers.
pub fn sort_entries(entries: &mut [Entry]) {
    entries.sort_by(|a, b| {
        for (k, va) in &a.key {
            let o = b
                .key
                .get(k)
                .map_or(Ordering::Greater, |vb| cmp_value(va, vb));
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
}

fn decode_or_hex(btf: Option<&Btf>, ty: Option<u32>, bytes: &[u8]) -> Value {
    match (btf, ty) {
        (Some(b), Some(t)) => decode(b, t, bytes),
        _ => hex(bytes),
    }
}

fn read_map(m: &Map<'_>, s: &Spec, btf: Option<&Btf>) -> Result<Dump> {
    let err = |e: libbpf_rs::Error| Error::Map {
        map: s.name.clone(),
        reason: e.to_string(),
    };
    let mut entries = Vec::new();
    for key in m.keys() {
        let value = if s.percpu {
            match m.lookup_percpu(&key, MapFlags::ANY).map_err(err)? {
                Some(per_cpu) => {
                    if s.array && per_cpu.iter().all(|v| v.iter().all(|&b| b == 0)) {
                        continue;
                    }
                    let mut sum: Option<Value> = None;
                    for v in &per_cpu {
                        let d = decode_or_hex(btf, s.value_ty, v);
                        match &mut sum {
                            None => sum = Some(d),
                            Some(acc) => add_into(acc, &d),
                        }
                    }
                    sum.unwrap_or(Value::Null)
                }
                // Deleted since the keys were listed.
                None => continue,
            }
        } else {
            match m.lookup(&key, MapFlags::ANY).map_err(err)? {
                Some(v) => {
                    if s.array && v.iter().all(|&b| b == 0) {
                        continue;
                    }
                    decode_or_hex(btf, s.value_ty, &v)
                }
                None => continue,
            }
        };
        entries.push(Entry {
            key: flatten(decode_or_hex(btf, s.key_ty, &key), "key"),
            value: flatten(value, "value"),
        });
    }
    sort_entries(&mut entries);
    Ok(Dump {
        map: s.name.clone(),
        shape: s.shape.clone(),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn per_cpu_values_are_summed_member_by_member() {
        let mut a = json!({"packets": 3, "bytes": 100, "name": "x", "hist": [1, 2]});
        add_into(
            &mut a,
            &json!({"packets": 4, "bytes": 1, "name": "y", "hist": [10, 20]}),
        );
        assert_eq!(
            a,
            json!({"packets": 7, "bytes": 101, "name": "x", "hist": [11, 22]})
        );
        let mut n = json!(-2);
        add_into(&mut n, &json!(5));
        assert_eq!(n, json!(3));
    }

    #[test]
    fn nested_members_are_flattened_and_scalars_named() {
        let v = json!({"tuple": {"saddr": 1, "dport": 80}, "proto": 6});
        let f = flatten(v, "key");
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"tuple_saddr": 1, "tuple_dport": 80, "proto": 6})
        );
        assert_eq!(
            serde_json::to_value(flatten(json!(17), "key")).unwrap(),
            json!({"key": 17})
        );
    }

    #[test]
    fn entries_sort_by_number_not_text() {
        let e = |k: u64| Entry {
            key: flatten(json!(k), "key"),
            value: flatten(json!(0), "value"),
        };
        let mut v = vec![e(17), e(6), e(1)];
        sort_entries(&mut v);
        let keys: Vec<u64> = v.iter().map(|x| x.key["key"].as_u64().unwrap()).collect();
        assert_eq!(keys, [1, 6, 17]);
    }
}
