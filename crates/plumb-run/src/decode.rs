//! Bytes of a map key, value or record turned into JSON by their BTF type:
//! struct members become fields, integers numbers, `char` arrays strings
//! up to the first NUL, enums their enumerator's name. Whatever the BTF or
//! the bytes, decoding ends with a value: bytes it cannot place are shown
//! as hex, never a panic.

use crate::btf::{Btf, Kind, Member};
use serde_json::{Map, Value};

/// Nested deeper than this, the rest is shown as hex.
const MAX_DEPTH: usize = 16;

/// `bytes` decoded as a value of type `ty`.
pub fn decode(btf: &Btf, ty: u32, bytes: &[u8]) -> Value {
    decode_at(btf, ty, bytes, 0)
}

/// Bytes as lower-case hex, the form of what cannot be decoded.
pub fn hex(bytes: &[u8]) -> Value {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Value::String(s)
}

/// An unsigned little-endian integer of up to 8 bytes.
fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .rev()
        .fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    if bits == 0 || bits >= 64 {
        return v as i64;
    }
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

fn int(bytes: &[u8], size: usize, signed: bool) -> Value {
    if size > 8 {
        // 128-bit integers: as a decimal string, which JSON keeps exactly.
        let mut v: u128 = 0;
        for &b in bytes.iter().take(16).rev() {
            v = (v << 8) | u128::from(b);
        }
        return if signed {
            Value::String((v as i128).to_string())
        } else {
            Value::String(v.to_string())
        };
    }
    let v = le(bytes);
    if signed {
        Value::from(sign_extend(v, (size * 8) as u32))
    } else {
        Value::from(v)
    }
}

/// Whether `ty` is `char` (a C string's element).
fn is_char(btf: &Btf, ty: u32) -> bool {
    matches!(btf.resolve(ty), Some((_, t)) if matches!(t.kind, Kind::Int { size: 1, .. }) && t.name == "char")
}

fn decode_at(btf: &Btf, ty: u32, bytes: &[u8], depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return hex(bytes);
    }
    let Some((_, t)) = btf.resolve(ty) else {
        return hex(bytes);
    };
    match &t.kind {
        Kind::Int {
            size, signed, bool, ..
        } => {
            let size = *size as usize;
            let Some(b) = bytes.get(..size) else {
                return hex(bytes);
            };
            if *bool {
                Value::Bool(b.iter().any(|&x| x != 0))
            } else {
                int(b, size, *signed)
            }
        }
        Kind::Ptr { .. } => bytes
            .get(..8)
            .map_or_else(|| hex(bytes), |b| Value::from(le(b))),
        Kind::Enum {
            size,
            signed,
            values,
        } => {
            let size = *size as usize;
            let Some(b) = bytes.get(..size.min(8)) else {
                return hex(bytes);
            };
            let raw = le(b);
            let v = if *signed {
                sign_extend(raw, (size * 8) as u32)
            } else {
                raw as i64
            };
            match values
                .iter()
                .find(|(_, x)| *x == v || (*x as u64 & mask(size)) == raw)
            {
                Some((name, _)) => Value::String(name.clone()),
                None => Value::from(v),
            }
        }
        Kind::Float { size } => match (*size, bytes) {
            (4, [a, b, c, d, ..]) => Value::from(f64::from(f32::from_le_bytes([*a, *b, *c, *d]))),
            (8, [a, b, c, d, e, f, g, h, ..]) => {
                Value::from(f64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]))
            }
            _ => hex(bytes),
        },
        Kind::Array { elem, len } => {
            let Some(esize) = btf.size_of(*elem).filter(|&s| s > 0) else {
                return hex(bytes);
            };
            let total = esize.saturating_mul(*len as usize).min(bytes.len());
            let b = &bytes[..total];
            if is_char(btf, *elem) {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                return Value::String(String::from_utf8_lossy(&b[..end]).into_owned());
            }
            Value::Array(
                b.chunks(esize)
                    .filter(|c| c.len() == esize)
                    .map(|c| decode_at(btf, *elem, c, depth + 1))
                    .collect(),
            )
        }
        Kind::Struct { size, members } | Kind::Union { size, members } => {
            let b = &bytes[..(*size as usize).min(bytes.len())];
            let mut obj = Map::new();
            members_into(btf, members, b, depth, &mut obj);
            Value::Object(obj)
        }
        Kind::Var { ty } => decode_at(btf, *ty, bytes, depth + 1),
        Kind::Void | Kind::Alias { .. } | Kind::Datasec { .. } | Kind::Other => hex(bytes),
    }
}

fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// The members of a struct or union into `obj`; an anonymous member's
/// own members are put in its place, as C names them.
fn members_into(
    btf: &Btf,
    members: &[Member],
    b: &[u8],
    depth: usize,
    obj: &mut Map<String, Value>,
) {
    for m in members {
        let v = if m.bit_size > 0 {
            bitfield(btf, m, b)
        } else {
            let start = (m.bit_offset / 8) as usize;
            match b.get(start..) {
                Some(rest) => decode_at(btf, m.ty, rest, depth + 1),
                None => Value::Null,
            }
        };
        if m.name.is_empty() {
            if let Value::Object(inner) = v {
                obj.extend(inner);
                continue;
            }
        }
        obj.insert(m.name.clone(), v);
    }
}

fn bitfield(btf: &Btf, m: &Member, b: &[u8]) -> Value {
    let first = (m.bit_offset / 8) as usize;
    let shift = m.bit_offset % 8;
    let need = ((shift + m.bit_size).div_ceil(8)) as usize;
    let Some(raw) = b.get(first..first + need.min(8)) else {
        return Value::Null;
    };
    let v = (le(raw) >> shift)
        & if m.bit_size >= 64 {
            u64::MAX
        } else {
            (1u64 << m.bit_size) - 1
        };
    let signed = matches!(btf.resolve(m.ty), Some((_, t)) if matches!(t.kind, Kind::Int { signed: true, .. }));
    if signed {
        Value::from(sign_extend(v, m.bit_size))
    } else {
        Value::from(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::build::BtfBuilder;
    use serde_json::json;

    fn key_btf() -> (Btf, u32) {
        let mut b = BtfBuilder::new();
        let c = b.int("char", 1, true);
        let u32_ = b.int("unsigned int", 4, false);
        let i16_ = b.int("short", 2, true);
        let comm = b.array(c, u32_, 8);
        let st = b.enm("state", &[("UP", 1), ("DOWN", 2)]);
        let s = b.strukt(
            "key",
            20,
            &[
                ("comm", comm, 0),
                ("pid", u32_, 64),
                ("delta", i16_, 96),
                ("st", st, 128),
            ],
        );
        let td = b.typedef("key_t", s);
        (Btf::parse(&b.bytes()).unwrap(), td)
    }

    #[test]
    fn a_struct_key_becomes_named_fields() {
        let (btf, ty) = key_btf();
        let mut bytes = b"nginx\0xy".to_vec();
        bytes.extend_from_slice(&4242u32.to_le_bytes());
        bytes.extend_from_slice(&(-7i16).to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            decode(&btf, ty, &bytes),
            json!({"comm": "nginx", "pid": 4242, "delta": -7, "st": "DOWN"})
        );
    }

    #[test]
    fn short_bytes_never_panic_and_show_what_is_missing() {
        let (btf, ty) = key_btf();
        let v = decode(&btf, ty, b"ab");
        assert_eq!(v["comm"], json!("ab"));
        assert_eq!(v["pid"], Value::Null);
    }

    #[test]
    fn random_bytes_and_random_btf_never_panic() {
        let (btf, _) = key_btf();
        let mut next = crate::btf::tests_rng(99);
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let ty = (next() % 10) as u32;
            let _ = decode(&btf, ty, &bytes);
        }
    }
}
