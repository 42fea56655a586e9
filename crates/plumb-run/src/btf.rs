//! A reader of raw BTF (the kernel's type format), enough to decode map
//! keys, values and records and to find a global's place in its section.
//!
//! It is ours, not libbpf's, because its input is the user's object: it
//! must refuse any byte string with an error, never read out of bounds,
//! and never loop on a cyclic type. The fuzz tests below feed it random
//! and truncated input.

use std::fmt;

/// What was wrong with the BTF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtfError(pub String);

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed BTF: {}", self.0)
    }
}

impl std::error::Error for BtfError {}

fn bad(msg: impl Into<String>) -> BtfError {
    BtfError(msg.into())
}

/// A struct or union member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub ty: u32,
    /// Offset from the start of the composite, in bits.
    pub bit_offset: u32,
    /// Width of a bitfield in bits; 0 for an ordinary member.
    pub bit_size: u32,
}

/// One variable of a data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecVar {
    pub ty: u32,
    pub offset: u32,
    pub size: u32,
}

/// The kinds of type plumb decodes; the rest are kept as `Other`.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Void,
    Int {
        size: u32,
        signed: bool,
        char: bool,
        bool: bool,
        bits: u32,
        bit_offset: u32,
    },
    Ptr {
        ty: u32,
    },
    Array {
        elem: u32,
        len: u32,
    },
    Struct {
        size: u32,
        members: Vec<Member>,
    },
    Union {
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        size: u32,
        signed: bool,
        values: Vec<(String, i64)>,
    },
    /// typedef, const, volatile, restrict, type tag: stand for `ty`.
    Alias {
        ty: u32,
        typedef: bool,
    },
    Float {
        size: u32,
    },
    Var {
        ty: u32,
    },
    Datasec {
        size: u32,
        vars: Vec<SecVar>,
    },
    /// Functions, prototypes, forward declarations, declaration tags.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Type {
    pub name: String,
    pub kind: Kind,
}

/// A parsed BTF blob: types by id (id 0 is void).
#[derive(Debug, Clone)]
pub struct Btf {
    types: Vec<Type>,
}

/// Aliases deeper than this are taken as a cycle.
const MAX_CHAIN: usize = 64;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, BtfError> {
        let b = self
            .buf
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| bad("the type section ends inside a type"))?;
        self.pos += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn read_u32(b: &[u8], at: usize) -> Result<u32, BtfError> {
    let s = b
        .get(at..at + 4)
        .ok_or_else(|| bad("the header is truncated"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn section(b: &[u8], start: usize, off: u32, len: u32) -> Result<&[u8], BtfError> {
    let from = start
        .checked_add(off as usize)
        .ok_or_else(|| bad("a section offset overflows"))?;
    let to = from
        .checked_add(len as usize)
        .ok_or_else(|| bad("a section length overflows"))?;
    b.get(from..to)
        .ok_or_else(|| bad("a section lies past the end of the data"))
}

impl Btf {
    /// Parse a raw BTF blob (the `.BTF` section; what `btf__raw_data` gives).
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if b.len() < 24 {
            return Err(bad("shorter than its header"));
        }
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != 0xeb9f {
            return Err(bad(format!(
                "magic {magic:#06x}, not 0xeb9f (or big-endian BTF)"
            )));
        }
        if b[2] != 1 {
            return Err(bad(format!("version {}, not 1", b[2])));
        }
        let hdr_len = read_u32(b, 4)? as usize;
        if hdr_len < 24 || hdr_len > b.len() {
            return Err(bad("the header length is out of range"));
        }
        let types = section(b, hdr_len, read_u32(b, 8)?, read_u32(b, 12)?)?;
        let strings = section(b, hdr_len, read_u32(b, 16)?, read_u32(b, 20)?)?;
        let name = |off: u32| -> Result<String, BtfError> {
            let s = strings
                .get(off as usize..)
                .ok_or_else(|| bad("a name lies past the string section"))?;
            let end = s
                .iter()
                .position(|&c| c == 0)
                .ok_or_else(|| bad("a name is not NUL-terminated"))?;
            String::from_utf8(s[..end].to_vec()).map_err(|_| bad("a name is not UTF-8"))
        };
        let mut r = Reader { buf: types, pos: 0 };
        let mut out = vec![Type {
            name: String::new(),
            kind: Kind::Void,
        }];
        while r.pos < types.len() {
            let name_off = r.u32()?;
            let info = r.u32()?;
            let size_or_type = r.u32()?;
            let vlen = info & 0xffff;
            let kind_flag = info >> 31 != 0;
            let kind = match (info >> 24) & 0x1f {
                1 => {
                    let e = r.u32()?;
                    Kind::Int {
                        size: size_or_type,
                        signed: (e >> 24) & 1 != 0,
                        char: (e >> 24) & 2 != 0,
                        bool: (e >> 24) & 4 != 0,
                        bits: e & 0xff,
                        bit_offset: (e >> 16) & 0xff,
                    }
                }
                2 => Kind::Ptr { ty: size_or_type },
                3 => {
                    let elem = r.u32()?;
                    let _index = r.u32()?;
                    let len = r.u32()?;
                    Kind::Array { elem, len }
                }
                k @ (4 | 5) => {
                    let mut members = Vec::new();
                    for _ in 0..vlen {
                        let n = r.u32()?;
                        let ty = r.u32()?;
                        let off = r.u32()?;
                        let (bit_offset, bit_size) = if kind_flag {
                            (off & 0xff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        members.push(Member {
                            name: name(n)?,
                            ty,
                            bit_offset,
                            bit_size,
                        });
                    }
                    if k == 4 {
                        Kind::Struct {
                            size: size_or_type,
                            members,
                        }
                    } else {
                        Kind::Union {
                            size: size_or_type,
                            members,
                        }
                    }
                }
                6 => {
                    let mut values = Vec::new();
                    for _ in 0..vlen {
                        let n = r.u32()?;
                        let v = r.u32()?;
                        let v = if kind_flag {
                            i64::from(v as i32)
                        } else {
                            i64::from(v)
                        };
                        values.push((name(n)?, v));
                    }
                    Kind::Enum {
                        size: size_or_type,
                        signed: kind_flag,
                        values,
                    }
                }
                7 => Kind::Other,
                k @ (8..=11 | 18) => Kind::Alias {
                    ty: size_or_type,
                    typedef: k == 8,
                },
                12 => Kind::Other,
                13 => {
                    for _ in 0..vlen {
                        r.u32()?;
                        r.u32()?;
                    }
                    Kind::Other
                }
                14 => {
                    r.u32()?;
                    Kind::Var { ty: size_or_type }
                }
                15 => {
                    let mut vars = Vec::new();
                    for _ in 0..vlen {
                        let ty = r.u32()?;
                        let offset = r.u32()?;
                        let size = r.u32()?;
                        vars.push(SecVar { ty, offset, size });
                    }
                    Kind::Datasec {
                        size: size_or_type,
                        vars,
                    }
                }
                16 => Kind::Float { size: size_or_type },
                17 => {
                    r.u32()?;
                    Kind::Other
                }
                19 => {
                    let mut values = Vec::new();
                    for _ in 0..vlen {
                        let n = r.u32()?;
                        let lo = r.u32()?;
                        let hi = r.u32()?;
                        values.push((name(n)?, ((u64::from(hi) << 32) | u64::from(lo)) as i64));
                    }
                    Kind::Enum {
                        size: size_or_type,
                        signed: kind_flag,
                        values,
                    }
                }
                k => return Err(bad(format!("unknown type kind {k}"))),
            };
            out.push(Type {
                name: name(name_off)?,
                kind,
            });
        }
        Ok(Btf { types: out })
    }

    /// The type with id `id`.
    pub fn get(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    /// Follow aliases (typedef, const, volatile...) to the type they name.
    pub fn resolve(&self, mut id: u32) -> Option<(u32, &Type)> {
        for _ in 0..MAX_CHAIN {
            let t = self.get(id)?;
            match t.kind {
                Kind::Alias { ty, .. } => id = ty,
                _ => return Some((id, t)),
            }
        }
        None
    }

    /// Whether `id` is, or aliases through, a typedef named `name`.
    pub fn is_typedef(&self, mut id: u32, name: &str) -> bool {
        for _ in 0..MAX_CHAIN {
            let Some(t) = self.get(id) else { return false };
            match t.kind {
                Kind::Alias { ty, typedef } => {
                    if typedef && t.name == name {
                        return true;
                    }
                    id = ty;
                }
                _ => return false,
            }
        }
        false
    }

    /// The size in bytes of a value of type `id`, if it has one.
    pub fn size_of(&self, id: u32) -> Option<usize> {
        self.size_at(id, 0)
    }

    fn size_at(&self, id: u32, depth: usize) -> Option<usize> {
        if depth > MAX_CHAIN {
            return None;
        }
        let (_, t) = self.resolve(id)?;
        match &t.kind {
            Kind::Int { size, .. }
            | Kind::Struct { size, .. }
            | Kind::Union { size, .. }
            | Kind::Enum { size, .. }
            | Kind::Float { size }
            | Kind::Datasec { size, .. } => Some(*size as usize),
            Kind::Ptr { .. } => Some(8),
            Kind::Array { elem, len } => self.size_at(*elem, depth + 1)?.checked_mul(*len as usize),
            Kind::Var { ty } => self.size_at(*ty, depth + 1),
            Kind::Void | Kind::Alias { .. } | Kind::Other => None,
        }
    }

    /// The first type named `name` for which `pick` holds.
    pub fn find(&self, name: &str, pick: impl Fn(&Kind) -> bool) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.name == name && pick(&t.kind))
            .map(|i| i as u32)
    }

    /// The type of global variable `name` (through a pointer: the type
    /// pointed to), the convention that names a ring buffer's record type.
    pub fn global_type(&self, name: &str) -> Option<u32> {
        let id = self.find(name, |k| matches!(k, Kind::Var { .. }))?;
        let Some(Type {
            kind: Kind::Var { ty },
            ..
        }) = self.get(id)
        else {
            return None;
        };
        match self.resolve(*ty) {
            Some((
                _,
                Type {
                    kind: Kind::Ptr { ty },
                    ..
                },
            )) => Some(*ty),
            _ => Some(*ty),
        }
    }

    /// The variables of data section `section` (".rodata"), by name, with
    /// their place in the section and their type.
    pub fn section_vars(&self, section: &str) -> Vec<(String, SecVar)> {
        let Some(id) = self.find(section, |k| matches!(k, Kind::Datasec { .. })) else {
            return Vec::new();
        };
        let Some(Type {
            kind: Kind::Datasec { vars, .. },
            ..
        }) = self.get(id)
        else {
            return Vec::new();
        };
        vars.iter()
            .filter_map(|v| {
                let t = self.get(v.ty)?;
                match t.kind {
                    Kind::Var { ty } => Some((t.name.clone(), SecVar { ty, ..v.clone() })),
                    _ => None,
                }
            })
            .collect()
    }
}

/// xorshift: random input for the fuzz tests, without a crate.
#[cfg(test)]
pub(crate) fn tests_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[cfg(test)]
pub(crate) mod build {
    //! Hand-assembled BTF for the unit tests.

    #[derive(Default)]
    pub struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next: u32,
    }

    impl BtfBuilder {
        pub fn new() -> BtfBuilder {
            BtfBuilder {
                types: Vec::new(),
                strings: vec![0],
                next: 1,
            }
        }
        fn name(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn words(&mut self, w: &[u32]) -> u32 {
            for x in w {
                self.types.extend_from_slice(&x.to_le_bytes());
            }
            self.next += 1;
            self.next - 1
        }
        pub fn int(&mut self, name: &str, size: u32, signed: bool) -> u32 {
            let n = self.name(name);
            let enc = if signed { 1 << 24 } else { 0 } | (size * 8);
            let enc = if name == "char" { enc | (2 << 24) } else { enc };
            self.words(&[n, 1 << 24, size, enc])
        }
        pub fn array(&mut self, elem: u32, index: u32, len: u32) -> u32 {
            self.words(&[0, 3 << 24, 0, elem, index, len])
        }
        pub fn typedef(&mut self, name: &str, ty: u32) -> u32 {
            let n = self.name(name);
            self.words(&[n, 8 << 24, ty])
        }
        pub fn volatile(&mut self, ty: u32) -> u32 {
            self.words(&[0, 9 << 24, ty])
        }
        pub fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let n = self.name(name);
            let mut w = vec![n, (4 << 24) | members.len() as u32, size];
            for (m, ty, bit_off) in members {
                let mn = self.name(m);
                w.extend_from_slice(&[mn, *ty, *bit_off]);
            }
            self.words(&w)
        }
        pub fn enm(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
            let n = self.name(name);
            let mut w = vec![n, (6 << 24) | values.len() as u32, 4];
            for (v, x) in values {
                let vn = self.name(v);
                w.extend_from_slice(&[vn, *x as u32]);
            }
            self.words(&w)
        }
        pub fn var(&mut self, name: &str, ty: u32) -> u32 {
            let n = self.name(name);
            self.words(&[n, 14 << 24, ty, 1])
        }
        pub fn datasec(&mut self, name: &str, size: u32, vars: &[(u32, u32, u32)]) -> u32 {
            let n = self.name(name);
            let mut w = vec![n, (15 << 24) | vars.len() as u32, size];
            for (ty, off, sz) in vars {
                w.extend_from_slice(&[*ty, *off, *sz]);
            }
            self.words(&w)
        }
        pub fn bytes(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&0xeb9fu16.to_le_bytes());
            b.extend_from_slice(&[1, 0]);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                b.extend_from_slice(&w.to_le_bytes());
            }
            b.extend_from_slice(&self.types);
            b.extend_from_slice(&self.strings);
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::BtfBuilder;
    use super::*;

    #[test]
    fn types_sizes_and_section_vars_are_read_back() {
        let mut b = BtfBuilder::new();
        let u32_ = b.int("unsigned int", 4, false);
        let arr = b.array(u32_, u32_, 3);
        let s = b.strukt("pair", 16, &[("a", u32_, 0), ("b", arr, 32)]);
        let td = b.typedef("pair_t", s);
        let vol = b.volatile(td);
        let v = b.var("target_pid", u32_);
        b.datasec(".rodata", 8, &[(v, 4, 4)]);
        let btf = Btf::parse(&b.bytes()).unwrap();
        assert_eq!(btf.size_of(arr), Some(12));
        assert_eq!(btf.size_of(vol), Some(16));
        assert_eq!(btf.resolve(vol).unwrap().0, s);
        assert!(btf.is_typedef(vol, "pair_t"));
        assert!(!btf.is_typedef(vol, "other"));
        let vars = btf.section_vars(".rodata");
        assert_eq!(
            vars,
            vec![(
                "target_pid".to_string(),
                SecVar {
                    ty: u32_,
                    offset: 4,
                    size: 4
                }
            )]
        );
    }

    #[test]
    fn a_cyclic_alias_is_refused_not_followed_forever() {
        let mut b = BtfBuilder::new();
        // type 1 is a typedef of type 2, a typedef of type 1.
        b.typedef("a", 2);
        b.typedef("b", 1);
        let btf = Btf::parse(&b.bytes()).unwrap();
        assert_eq!(btf.resolve(1), None);
        assert_eq!(btf.size_of(1), None);
    }

    #[test]
    fn bad_headers_are_errors() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0u8; 24]).unwrap_err().0.contains("magic"));
        let mut b = BtfBuilder::new();
        b.int("int", 4, true);
        let mut bytes = b.bytes();
        bytes[12] = 0xff; // type_len far past the end
        assert!(Btf::parse(&bytes).unwrap_err().0.contains("past the end"));
    }

    #[test]
    fn random_and_truncated_input_never_panics() {
        let mut b = BtfBuilder::new();
        let c = b.int("char", 1, true);
        let u = b.int("unsigned int", 4, false);
        let a = b.array(c, u, 16);
        let e = b.enm("state", &[("UP", 1), ("DOWN", 2)]);
        let s = b.strukt(
            "key",
            24,
            &[("comm", a, 0), ("pid", u, 128), ("st", e, 160)],
        );
        b.typedef("key_t", s);
        let good = b.bytes();
        for cut in 0..good.len() {
            let _ = Btf::parse(&good[..cut]);
        }
        let mut next = tests_rng(0x5eed);
        for _ in 0..20_000 {
            let mut m = good.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            if let Ok(btf) = Btf::parse(&m) {
                for id in 0..12 {
                    let _ = btf.size_of(id);
                    let _ = btf.resolve(id);
                    let _ = btf.section_vars(".rodata");
                }
            }
        }
        for len in [0usize, 1, 23, 24, 100, 1000] {
            let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = Btf::parse(&junk);
        }
    }
}
