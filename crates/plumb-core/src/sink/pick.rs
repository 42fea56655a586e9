//! `--fields` for JSON output without building a JSON tree: a serializer
//! that takes an event's top-level entries as they are produced, writes the
//! chosen ones to a buffer each and never serialises the others. At a few
//! hundred thousand events a second, the tree (a map with hashed keys,
//! then a second map for the chosen keys) cost most of plumb's CPU.

use serde::ser::{self, Impossible, Serialize, SerializeMap, SerializeStruct};
use std::io::{self, Write};

/// The chosen keys and a reusable buffer per key.
pub struct Picker {
    /// Each key as a JSON string (`"pid"`), as the serializer writes it.
    quoted: Vec<Vec<u8>>,
    values: Vec<Option<Vec<u8>>>,
    spare: Vec<Vec<u8>>,
    key: Vec<u8>,
}

impl Picker {
    pub fn new(fields: &[String]) -> Picker {
        Picker {
            quoted: fields
                .iter()
                .map(|f| serde_json::to_vec(f).unwrap_or_default())
                .collect(),
            values: fields.iter().map(|_| None).collect(),
            spare: Vec::new(),
            key: Vec::new(),
        }
    }

    /// Write `value`'s chosen entries as one JSON object, in the order the
    /// keys were given; a key the value does not have is `null`.
    pub fn write<T: Serialize + ?Sized, W: Write + ?Sized>(
        &mut self,
        value: &T,
        out: &mut W,
    ) -> io::Result<()> {
        self.pick(value)?;
        self.write_picked(out)
    }

    /// Write what the last [`Picker::pick`] took, as [`Picker::write`] does.
    pub fn write_picked<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<()> {
        out.write_all(b"{")?;
        for (i, (k, v)) in self.quoted.iter().zip(&self.values).enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            out.write_all(k)?;
            out.write_all(b":")?;
            out.write_all(v.as_deref().unwrap_or(b"null"))?;
        }
        out.write_all(b"}")
    }

    /// Take `value`'s chosen entries; [`Picker::value`] then gives each.
    pub fn pick<T: Serialize + ?Sized>(&mut self, value: &T) -> io::Result<()> {
        for v in &mut self.values {
            if let Some(mut b) = v.take() {
                b.clear();
                self.spare.push(b);
            }
        }
        value.serialize(Top {
            p: self,
            current: None,
        })?;
        Ok(())
    }

    /// The `i`-th chosen key's value as JSON text, if the value had it.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        self.values.get(i)?.as_deref()
    }

    fn slot(&self, quoted_key: &[u8]) -> Option<usize> {
        self.quoted.iter().position(|k| k == quoted_key)
    }

    fn keep<T: Serialize + ?Sized>(
        &mut self,
        i: usize,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        let mut b = self.spare.pop().unwrap_or_default();
        serde_json::to_writer(&mut b, value)?;
        self.values[i] = Some(b);
        Ok(())
    }
}

struct Top<'p> {
    p: &'p mut Picker,
    current: Option<usize>,
}

fn not_object() -> serde_json::Error {
    ser::Error::custom("--fields needs events that are JSON objects")
}

impl SerializeMap for Top<'_> {
    type Ok = ();
    type Error = serde_json::Error;

    fn serialize_key<K: Serialize + ?Sized>(&mut self, key: &K) -> Result<(), Self::Error> {
        let mut k = std::mem::take(&mut self.p.key);
        k.clear();
        serde_json::to_writer(&mut k, key)?;
        self.current = self.p.slot(&k);
        self.p.key = k;
        Ok(())
    }

    fn serialize_value<V: Serialize + ?Sized>(&mut self, value: &V) -> Result<(), Self::Error> {
        match self.current.take() {
            Some(i) => self.p.keep(i, value),
            None => Ok(()),
        }
    }

    fn end(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl SerializeStruct for Top<'_> {
    type Ok = ();
    type Error = serde_json::Error;

    fn serialize_field<V: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &V,
    ) -> Result<(), Self::Error> {
        let i = self
            .p
            .quoted
            .iter()
            .position(|q| q.len() == key.len() + 2 && &q[1..q.len() - 1] == key.as_bytes());
        match i {
            Some(i) => self.p.keep(i, value),
            None => Ok(()),
        }
    }

    fn end(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

macro_rules! refuse {
    ($($f:ident($($t:ty),*)),* $(,)?) => {
        $(fn $f(self, $(_: $t),*) -> Result<(), serde_json::Error> { Err(not_object()) })*
    };
}

impl<'p> ser::Serializer for Top<'p> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Impossible<(), serde_json::Error>;
    type SerializeTuple = Impossible<(), serde_json::Error>;
    type SerializeTupleStruct = Impossible<(), serde_json::Error>;
    type SerializeTupleVariant = Impossible<(), serde_json::Error>;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), serde_json::Error>;

    fn serialize_map(self, _len: Option<usize>) -> Result<Self, Self::Error> {
        Ok(self)
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, Self::Error> {
        Ok(self)
    }

    refuse!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Self::Error> {
        value.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Self::Error> {
        Err(not_object())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        Err(not_object())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Self::Error> {
        Err(not_object())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Self::Error> {
        Err(not_object())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        Err(not_object())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        Err(not_object())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use serde_json::json;

    #[derive(Serialize)]
    struct Inner {
        pid: u32,
        comm: Option<String>,
    }

    #[derive(Serialize)]
    struct Outer {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        inner: Inner,
        #[serde(skip_serializing_if = "Option::is_none")]
        fd: Option<i32>,
        path: String,
    }

    fn fields(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    fn pick(p: &mut Picker, v: &Outer) -> serde_json::Value {
        let mut out = Vec::new();
        p.write(v, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn keeps_the_chosen_keys_in_their_order_through_flatten_and_reuses_buffers() {
        let mut p = Picker::new(&fields(&["path", "pid", "fd", "type", "nope"]));
        let a = Outer {
            kind: "open",
            inner: Inner {
                pid: 42,
                comm: Some("cat".into()),
            },
            fd: Some(3),
            path: "/etc/\"x\"".into(),
        };
        let got = pick(&mut p, &a);
        assert_eq!(
            got,
            json!({"path": "/etc/\"x\"", "pid": 42, "fd": 3, "type": "open", "nope": null})
        );
        let keys: Vec<_> = got.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["path", "pid", "fd", "type", "nope"]);
        // A second event without fd: the first one's value must not linger.
        let b = Outer {
            kind: "open",
            inner: Inner { pid: 7, comm: None },
            fd: None,
            path: "/b".into(),
        };
        assert_eq!(
            pick(&mut p, &b),
            json!({"path": "/b", "pid": 7, "fd": null, "type": "open", "nope": null})
        );
    }

    #[test]
    fn a_plain_struct_and_a_non_object_value() {
        let mut p = Picker::new(&fields(&["pid", "comm"]));
        let mut out = Vec::new();
        p.write(&Inner { pid: 1, comm: None }, &mut out).unwrap();
        assert_eq!(out, br#"{"pid":1,"comm":null}"#);
        let e = p.write(&5u32, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("JSON objects"), "{e}");
    }
}
