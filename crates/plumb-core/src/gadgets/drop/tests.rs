//! Unit tests of the drop gadget: reason names (core and subsystem) from
//! BTF fixtures, the program variant chosen from a kernel's tracepoint
//! prototype, the reason filter, and decoding of malformed records.

use super::*;
use crate::gadgets::Params;

use crate::gadgets::net::btf_fixture as fixture;

fn fixture_names() -> ReasonNames {
    ReasonNames::from_btf(&fixture!("reasons_fixture"))
}

fn params(pairs: &[(&str, &str)]) -> Params {
    let mut p = Params::default();
    for (k, v) in pairs {
        p.0.insert(k.to_string(), v.to_string());
    }
    p
}

#[test]
fn reason_names_come_from_btf() {
    let n = fixture_names();
    // The fixture numbers reasons differently from today's kernels.
    assert_eq!(n.core.get(&8).map(String::as_str), Some("NETFILTER_DROP"));
    assert_eq!(n.core.get(&3).map(String::as_str), Some("NO_SOCKET"));
    assert_eq!(n.core.get(&5).map(String::as_str), Some("TCP_CSUM"));
    assert_eq!(n.core.get(&2).map(String::as_str), Some("NOT_SPECIFIED"));
    assert_eq!(n.core.get(&9), None, "MAX marks the end, it is no reason");
    let six = ReasonNames::from_btf(&fixture!("btf_linux_6_6"));
    let now = ReasonNames::from_btf(&fixture!("btf_linux_6_18"));
    assert_eq!(six.name(8), "NETFILTER_DROP");
    assert_eq!(now.name(12), "NETFILTER_DROP");
    assert_eq!(six.name(14), "IP_NOPROTO");
    assert_eq!(now.name(19), "IP_NOPROTO");
    assert_eq!(six.name(1), "CONSUMED", "SKB_CONSUMED has its own prefix");
    assert!(!now.core.values().any(|v| v == "SUBSYS_MASK" || v == "MAX"));
}

#[test]
fn subsystem_reasons_are_named_from_their_enums_or_as_subsys_n() {
    let n = ReasonNames::from_btf(&fixture!("btf_linux_6_6"));
    assert_eq!(n.shift, 16, "from SKB_DROP_REASON_SUBSYS_MASK");
    assert_eq!(n.name((3 << 16) + 2), "OVS_DROP_EXPLICIT");
    assert_eq!(n.name(3 << 16), "OVS_DROP_LAST_ACTION");
    // mac80211 is a module here: its enum is not in vmlinux.
    assert_eq!(n.name((2 << 16) + 7), "MAC80211_MONITOR:7");
    assert_eq!(n.name((9 << 16) + 1), "SUBSYS_9:1");
    assert_eq!(n.name(70), "70", "a core number this kernel does not name");
    for name in ["OVS_DROP_EXPLICIT", "MAC80211_MONITOR:7", "SUBSYS_9:1"] {
        let v = n.value_of(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(n.name(v), name);
    }
    assert_eq!(n.value_of("OVS_DROP_REASON_MAX"), None);
    assert_eq!(n.value_of("NOPE:1"), None);
}

#[test]
fn default_filter_leaves_out_ordinary_frees_only() {
    let n = fixture_names();
    let f = reason_filter(&Params::default(), &n, true)
        .unwrap()
        .unwrap();
    let on = |v: u32| f.bits[v as usize / 64] & (1 << (v % 64)) != 0;
    assert!(!on(2), "NOT_SPECIFIED is left out by default");
    assert!(on(8) && on(3) && on(7));
    assert_eq!(f.subsys_mask, !1, "every subsystem's drops pass");
    assert_eq!(f.wanted, None);
    let all = params(&[("all-reasons", "true")]);
    assert!(reason_filter(&all, &n, true).unwrap().is_none());
}

#[test]
fn reason_option_is_exact_for_core_and_subsystem_reasons() {
    let n = ReasonNames::from_btf(&fixture!("btf_linux_6_6"));
    let p = params(&[(
        "reason",
        "netfilter_drop,SKB_DROP_REASON_NO_SOCKET,OVS_DROP_EXPLICIT",
    )]);
    let f = reason_filter(&p, &n, true).unwrap().unwrap();
    assert_eq!(f.bits[0], (1 << 8) | (1 << 3));
    assert_eq!(f.subsys_mask, 1 << 3, "only openvswitch passes the kernel");
    let wanted: Vec<&str> = f.wanted.iter().flatten().map(String::as_str).collect();
    assert_eq!(wanted, ["NETFILTER_DROP", "NO_SOCKET", "OVS_DROP_EXPLICIT"]);
    // Only core reasons named: no subsystem passes.
    let f = reason_filter(&params(&[("reason", "NO_SOCKET")]), &n, true)
        .unwrap()
        .unwrap();
    assert_eq!(f.subsys_mask, 0);
    let e = reason_filter(&params(&[("reason", "NO_SUCH_REASON")]), &n, true).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad value for --reason: this kernel has no drop reason 'NO_SUCH_REASON'"
    );
}

#[test]
fn reason_and_all_reasons_conflict_and_old_kernels_refuse_reason() {
    let n = fixture_names();
    let both = params(&[("reason", "NO_SOCKET"), ("all-reasons", "true")]);
    let e = reason_filter(&both, &n, true).unwrap_err().to_string();
    assert!(
        e.starts_with("bad value for --reason: --reason and --all-reasons cannot be used together"),
        "{e}"
    );
    let e = reason_filter(&params(&[("reason", "NO_SOCKET")]), &n, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("this kernel gives no drop reasons"), "{e}");
    // No reasons at all: nothing to filter by default.
    assert!(reason_filter(&Params::default(), &n, false)
        .unwrap()
        .is_none());
    assert!(
        reason_filter(&Params::default(), &ReasonNames::default(), false)
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_program_variant_follows_the_kernels_prototype() {
    let old = support(&fixture!("btf_linux_5_15")).unwrap();
    assert_eq!(old.variant, Variant::NoReason);
    assert_eq!(old.notes.len(), 1);
    assert!(
        old.notes[0].starts_with("drop reasons need Linux 5.17"),
        "{:?}",
        old.notes
    );
    for k in [fixture!("btf_linux_6_6"), fixture!("btf_linux_6_18")] {
        let s = support(&k).unwrap();
        assert_eq!((s.variant, s.notes.len()), (Variant::Reason, 0));
    }
    let e = support(&fixture!("btf_linux_6_9")).unwrap_err();
    assert_eq!(
        e,
        "needs Linux 5.5 with BTF (missing tracepoint btf_trace_kfree_skb)"
    );
    let args = kernel::tracepoint_args(&fixture!("btf_linux_6_18"), "kfree_skb").unwrap();
    assert_eq!(
        args,
        [
            Arg::Ptr(Some("sk_buff".into())),
            Arg::Ptr(None),
            Arg::Enum("skb_drop_reason".into()),
            Arg::Ptr(Some("sock".into())),
        ]
    );
}

fn record(flags: u16, reason: u32, stack: &[u64]) -> Vec<u8> {
    let mut r = RawDrop::zeroed();
    r.hdr.kind = raw::kind::DROP;
    r.hdr.flags = flags;
    r.reason = reason;
    r.location = 0x1000;
    r.stack_len = (stack.len() * 8) as u32;
    let mut v = bytemuck::bytes_of(&r).to_vec();
    for a in stack {
        v.extend_from_slice(&a.to_ne_bytes());
    }
    v
}

#[test]
fn decodes_stack_and_rejects_bad_lengths() {
    let names = fixture_names();
    let v = record(flag::REASON | flag::STACK, 8, &[0x2000, 0x3000]);
    let d = decode_with(&v, |x| names.name(x), |a| format!("f{a:x}")).unwrap();
    let Body::Drop(d) = d.body else { panic!() };
    assert_eq!(d.reason, "NETFILTER_DROP");
    assert_eq!(d.location, "f1000");
    assert_eq!(d.stack, Some(vec!["f2000".into(), "f3000".into()]));
    let short = &v[..v.len() - 8];
    assert!(matches!(
        decode_with(short, |_| String::new(), |_| String::new()),
        Err(DecodeError::Short { .. })
    ));
    let mut r: RawDrop = raw::read(&v).unwrap();
    r.stack_len = 12;
    assert!(matches!(
        decode_with(bytemuck::bytes_of(&r), |_| String::new(), |_| String::new()),
        Err(DecodeError::Range { .. })
    ));
}

#[test]
fn the_tracing_machinery_is_left_off_the_stack() {
    let names = fixture_names();
    let v = record(flag::REASON | flag::STACK, 8, &[1, 2, 3, 4, 5]);
    // As this machine's kernel symbolizes them.
    let sym = |a: u64| {
        match a {
            1 => "bpf_prog_8f818051449b9764_drop_kfree_skb+0x72a",
            2 => "bpf_trace_run4+0xfc",
            3 => "__traceiter_kfree_skb+0x41",
            4 => "sk_skb_reason_drop+0x90",
            5 => "nft_do_chain+0x3e8",
            _ => "nf_hook_slow+0x43",
        }
        .to_string()
    };
    let Body::Drop(d) = decode_with(&v, |x| names.name(x), sym).unwrap().body else {
        panic!()
    };
    assert_eq!(
        d.stack,
        Some(vec![
            "sk_skb_reason_drop+0x90".into(),
            "nft_do_chain+0x3e8".into()
        ])
    );
}

#[test]
fn a_stack_asked_for_but_not_recorded_is_an_empty_list() {
    let v = record(flag::REASON | flag::STACK | flag::NO_STACK, 3, &[]);
    let d = decode_with(&v, |_| "NO_SOCKET".into(), |a| format!("{a:x}")).unwrap();
    let Body::Drop(d) = d.body else { panic!() };
    assert_eq!(d.stack, Some(vec![]));
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["stack"], serde_json::json!([]));
    // Not asked for: no key at all.
    let v = record(flag::REASON, 3, &[]);
    let Body::Drop(d) = decode_with(&v, |_| "NO_SOCKET".into(), |_| String::new())
        .unwrap()
        .body
    else {
        panic!()
    };
    assert_eq!(d.stack, None);
    assert!(serde_json::to_value(&d).unwrap().get("stack").is_none());
}

#[test]
fn kernels_without_reasons_say_unknown() {
    let v = record(0, 0, &[]);
    let Body::Drop(d) = decode_with(&v, |_| "NOT_DROPPED_YET".into(), |_| String::new())
        .unwrap()
        .body
    else {
        panic!()
    };
    assert_eq!(d.reason, UNKNOWN_REASON);
}

/// The `__print_symbolic(REC-><field>, { N, "NAME" }, ...)` table of a
/// tracefs event format: the kernel's own value → name list, an oracle
/// independent of BTF.
pub(super) fn print_symbolic(format: &str, field: &str) -> Vec<(u32, String)> {
    let start = format!("__print_symbolic(REC->{field},");
    let Some(at) = format.find(&start) else {
        return Vec::new();
    };
    let mut rest = &format[at + start.len()..];
    let mut out = Vec::new();
    while let Some(open) = rest.find('{') {
        // The table ends at the call's closing parenthesis.
        if rest[..open].contains(')') {
            break;
        }
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let pair = &rest[open + 1..open + close];
        if let Some((v, n)) = pair.split_once(',') {
            if let Ok(v) = v.trim().parse() {
                out.push((v, n.trim().trim_matches('"').to_string()));
            }
        }
        rest = &rest[open + close + 1..];
    }
    out
}

#[test]
fn reads_the_symbolic_table_of_a_tracefs_format() {
    // Trimmed from /sys/kernel/tracing/events/skb/kfree_skb/format (6.18).
    let fmt = r#"print fmt: "skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->rx_sk, REC->protocol, REC->location, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 12, "NETFILTER_DROP" }, { 128, "MAX" })"#;
    assert_eq!(
        print_symbolic(fmt, "reason"),
        [
            (2, "NOT_SPECIFIED".to_string()),
            (3, "NO_SOCKET".to_string()),
            (12, "NETFILTER_DROP".to_string()),
            (128, "MAX".to_string())
        ]
    );
    assert!(print_symbolic(fmt, "state").is_empty());
}
