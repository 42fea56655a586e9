//! Drop reason names, from the kernel's BTF, and the `--reason` filter.
//!
//! Core reasons are the members of `enum skb_drop_reason`; their numbers
//! change between kernels. Subsystem reasons carry a subsystem id (`enum
//! skb_drop_reason_subsys`) in their high bits (the shift is read from
//! `SKB_DROP_REASON_SUBSYS_MASK`); they are named from the subsystem's own
//! enum where the BTF has it (a built-in subsystem), else `SUBSYS:n`.

use super::NORMAL_REASONS;
use crate::error::{Error, Result};
use crate::gadgets::Params;
use crate::kernel;
use libbpf_rs::btf::Btf;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

pub const REASON_WORDS: usize = 16;
/// Core reasons the kernel-side bitmap covers.
pub const BITMAP_REASONS: u32 = (REASON_WORDS * 64) as u32;

/// Every drop reason name a kernel knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReasonNames {
    /// Core reasons: value → name (`NO_SOCKET`).
    pub core: BTreeMap<u32, String>,
    /// Subsystem id → name (`OPENVSWITCH`).
    pub subsys: BTreeMap<u32, String>,
    /// Subsystem reasons the BTF names: value → name (`OVS_DROP_EXPLICIT`).
    pub sub_members: BTreeMap<u32, String>,
    /// Where the subsystem id starts (16 on every kernel so far).
    pub shift: u32,
}

/// Members that mark the end of the enum or a mask, not a reason.
fn is_marker(name: &str) -> bool {
    name == "MAX" || name == "SUBSYS_MASK" || name.ends_with("_MAX")
}

impl ReasonNames {
    pub fn from_btf(btf: &Btf<'_>) -> ReasonNames {
        let mut n = ReasonNames {
            shift: 16,
            ..Default::default()
        };
        let Some(members) = kernel::enum_members(btf, "skb_drop_reason") else {
            return n;
        };
        for (name, value) in &members {
            let tz = (*value as u64).trailing_zeros();
            if name == "SKB_DROP_REASON_SUBSYS_MASK" && (1..32).contains(&tz) {
                n.shift = tz;
            }
        }
        for (name, value) in members {
            let short = name
                .strip_prefix("SKB_DROP_REASON_")
                .or_else(|| name.strip_prefix("SKB_"))
                .unwrap_or(&name);
            if is_marker(short) || !(0..(1i128 << n.shift)).contains(&value) {
                continue;
            }
            n.core.insert(value as u32, short.to_string());
        }
        for (name, value) in kernel::enum_members(btf, "skb_drop_reason_subsys").unwrap_or_default()
        {
            let short = name
                .strip_prefix("SKB_DROP_REASON_SUBSYS_")
                .unwrap_or(&name);
            if value > 0 && short != "NUM" {
                n.subsys.insert(value as u32, short.to_string());
            }
        }
        let own = |e: &str| e.ends_with("drop_reason") && e != "skb_drop_reason";
        for (_, members) in kernel::enums_named(btf, own) {
            for (name, value) in members {
                let v = value as u64 as u32;
                let sub = v >> n.shift;
                if value >= 0 && sub > 0 && n.subsys.contains_key(&sub) && !is_marker(&name) {
                    n.sub_members.insert(v, name);
                }
            }
        }
        n
    }

    /// The running kernel's names, read once per process.
    pub fn vmlinux() -> &'static ReasonNames {
        static NAMES: OnceLock<ReasonNames> = OnceLock::new();
        NAMES.get_or_init(|| kernel::with_vmlinux(ReasonNames::from_btf).unwrap_or_default())
    }

    fn subsys_of(&self, v: u32) -> u32 {
        v.checked_shr(self.shift).unwrap_or(0)
    }

    /// The name of reason `v`: its BTF name, else `SUBSYS:n` for a
    /// subsystem reason, else the number.
    pub fn name(&self, v: u32) -> String {
        if let Some(n) = self.core.get(&v).or_else(|| self.sub_members.get(&v)) {
            return n.clone();
        }
        let sub = self.subsys_of(v);
        if sub == 0 {
            return v.to_string();
        }
        let low = v & ((1u32 << self.shift) - 1);
        match self.subsys.get(&sub) {
            Some(s) => format!("{s}:{low}"),
            None => format!("SUBSYS_{sub}:{low}"),
        }
    }

    /// The value of a reason named as [`ReasonNames::name`] names it
    /// (case-insensitive; `SKB_DROP_REASON_` may be left on).
    pub fn value_of(&self, name: &str) -> Option<u32> {
        let up = name.trim().to_ascii_uppercase();
        let up = up.strip_prefix("SKB_DROP_REASON_").unwrap_or(&up);
        let find = |m: &BTreeMap<u32, String>, want: &str| {
            m.iter().find(|(_, n)| n.as_str() == want).map(|(v, _)| *v)
        };
        if let Some(v) = find(&self.core, up).or_else(|| find(&self.sub_members, up)) {
            return Some(v);
        }
        let (sub, low) = up.split_once(':')?;
        let low: u32 = low.parse().ok().filter(|&l| l < (1u32 << self.shift))?;
        let sub = find(&self.subsys, sub)
            .or_else(|| sub.strip_prefix("SUBSYS_").and_then(|s| s.parse().ok()))
            .filter(|&s: &u32| s > 0 && s < 32)?;
        Some((sub << self.shift) | low)
    }
}

/// What the kernel side filters, and what user space keeps exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonFilter {
    /// Core reasons to report.
    pub bits: [u64; REASON_WORDS],
    /// Subsystems whose reasons pass the kernel's filter.
    pub subsys_mask: u32,
    /// With `--reason`: exactly these names are kept.
    pub wanted: Option<BTreeSet<String>>,
}

fn bad(reason: String) -> Error {
    Error::BadParam {
        param: "reason".into(),
        reason,
    }
}

/// The filter for these params; `None`: report every reason. `has_reason`:
/// the kernel's tracepoint gives reasons at all.
pub fn reason_filter(
    params: &Params,
    names: &ReasonNames,
    has_reason: bool,
) -> Result<Option<ReasonFilter>> {
    let wanted = params.list("reason");
    if !wanted.is_empty() && params.flag("all-reasons") {
        return Err(bad(
            "--reason and --all-reasons cannot be used together (--reason shows exactly the \
             reasons it names, ordinary frees included)"
                .into(),
        ));
    }
    let mut f = ReasonFilter {
        bits: [0; REASON_WORDS],
        subsys_mask: 0,
        wanted: None,
    };
    let set = |f: &mut ReasonFilter, v: u32| {
        if v < BITMAP_REASONS {
            f.bits[v as usize / 64] |= 1 << (v % 64);
        } else if let Some(sub) = v.checked_shr(names.shift).filter(|&s| s > 0 && s < 32) {
            f.subsys_mask |= 1 << sub;
        }
    };
    if !wanted.is_empty() {
        if !has_reason {
            return Err(bad(
                "this kernel gives no drop reasons (kfree_skb has a reason from Linux 5.17)".into(),
            ));
        }
        let mut keep = BTreeSet::new();
        for w in &wanted {
            let v = names.value_of(w).ok_or_else(|| {
                let up = w.to_ascii_uppercase();
                let up = up
                    .strip_prefix("SKB_DROP_REASON_")
                    .unwrap_or(&up)
                    .to_string();
                bad(format!("this kernel has no drop reason '{up}'"))
            })?;
            set(&mut f, v);
            keep.insert(names.name(v));
        }
        f.wanted = Some(keep);
        return Ok(Some(f));
    }
    if params.flag("all-reasons") || names.core.is_empty() || !has_reason {
        return Ok(None);
    }
    for (v, n) in &names.core {
        if !NORMAL_REASONS.contains(&n.as_str()) {
            set(&mut f, *v);
        }
    }
    // Subsystem reasons are real drops: all pass by default.
    f.subsys_mask = !1;
    Ok(Some(f))
}
