//! Unit tests of the drop gadget: reason names from a BTF fixture, the
//! reason filter, and decoding of malformed records.

use super::*;
use crate::kernel::enum_names;

fn fixture_names() -> BTreeMap<u32, String> {
    // Built from testdata/reasons_fixture.bpf.c by build.rs.
    static OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reasons_fixture.bpf.o"));
    let btf = libbpf_rs::btf::Btf::from_raw("fixture", OBJ)
        .expect("parse fixture")
        .expect("fixture has BTF");
    enum_names(&btf, "skb_drop_reason", "SKB_DROP_REASON_").expect("enum present")
}

#[test]
fn reason_names_come_from_btf() {
    let n = fixture_names();
    // The fixture numbers reasons differently from today's kernels.
    assert_eq!(n.get(&8).map(String::as_str), Some("NETFILTER_DROP"));
    assert_eq!(n.get(&3).map(String::as_str), Some("NO_SOCKET"));
    assert_eq!(n.get(&5).map(String::as_str), Some("TCP_CSUM"));
    assert_eq!(n.get(&2).map(String::as_str), Some("NOT_SPECIFIED"));
}

#[test]
fn default_bitmap_leaves_out_ordinary_frees() {
    let n = fixture_names();
    let b = reason_bitmap(&Params::default(), &n).unwrap().unwrap();
    let on = |v: u32| b[v as usize / 64] & (1 << (v % 64)) != 0;
    assert!(!on(2), "NOT_SPECIFIED is left out by default");
    assert!(on(8) && on(3) && on(7));
    let mut all = Params::default();
    all.0.insert("all-reasons".into(), "true".into());
    assert!(reason_bitmap(&all, &n).unwrap().is_none());
}

#[test]
fn reason_option_selects_by_name_and_rejects_unknown_names() {
    let n = fixture_names();
    let mut p = Params::default();
    p.0.insert(
        "reason".into(),
        "netfilter_drop,SKB_DROP_REASON_NO_SOCKET".into(),
    );
    let b = reason_bitmap(&p, &n).unwrap().unwrap();
    assert_eq!(b[0], (1 << 8) | (1 << 3));
    p.0.insert("reason".into(), "NO_SUCH_REASON".into());
    let e = reason_bitmap(&p, &n).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad value for --reason: this kernel has no drop reason 'NO_SUCH_REASON'"
    );
}

#[test]
fn decodes_stack_and_rejects_bad_lengths() {
    let mut r = RawDrop::zeroed();
    r.hdr.kind = raw::kind::DROP;
    r.reason = 8;
    r.location = 0x1000;
    r.stack_len = 16;
    let mut v = bytemuck::bytes_of(&r).to_vec();
    v.extend_from_slice(&0x2000u64.to_ne_bytes());
    v.extend_from_slice(&0x3000u64.to_ne_bytes());
    let names = fixture_names();
    let d = decode_with(&v, |x| names[&x].clone(), |a| format!("f{a:x}")).unwrap();
    let Body::Drop(d) = d.body else { panic!() };
    assert_eq!(d.reason, "NETFILTER_DROP");
    assert_eq!(d.location, "f1000");
    assert_eq!(d.stack, Some(vec!["f2000".into(), "f3000".into()]));
    v.truncate(v.len() - 8);
    assert!(matches!(
        decode_with(&v, |_| String::new(), |_| String::new()),
        Err(DecodeError::Short { .. })
    ));
    r.stack_len = 12;
    assert!(matches!(
        decode_with(bytemuck::bytes_of(&r), |_| String::new(), |_| String::new()),
        Err(DecodeError::Range { .. })
    ));
}
