//! Names and shapes from the running kernel: enum values from its BTF (drop
//! reasons, reset reasons), the prototypes of its BTF-typed tracepoints
//! (which arguments a `tp_btf` program receives on this kernel), and kernel
//! addresses from kallsyms.
//!
//! Enum numbering and tracepoint arguments differ between kernel versions,
//! so nothing here is copied from one kernel: every answer is read from the
//! BTF that describes the kernel we run on (or, in tests, from a BTF
//! fixture).

use libbpf_rs::btf::types::{Enum, Enum64, FuncProto, Int, IntEncoding, Struct, Typedef};
use libbpf_rs::btf::{Btf, BtfKind, BtfType};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

/// Value → name of the members of C enum `name`, each with `strip` removed
/// from the front. `None` if the BTF has no such enum.
pub fn enum_names(btf: &Btf<'_>, name: &str, strip: &str) -> Option<BTreeMap<u32, String>> {
    let clean = |n: &std::ffi::OsStr| {
        let n = n.to_string_lossy();
        n.strip_prefix(strip).unwrap_or(&n).to_string()
    };
    if let Some(e) = btf.type_by_name::<Enum<'_>>(name) {
        return Some(
            e.iter()
                .filter_map(|m| Some((m.value as u32, clean(m.name?))))
                .collect(),
        );
    }
    let e = btf.type_by_name::<Enum64<'_>>(name)?;
    Some(
        e.iter()
            .filter_map(|m| Some((m.value as u32, clean(m.name?))))
            .collect(),
    )
}

/// Every member of C enum `name` as (name, value), unchanged. `None` if the
/// BTF has no such enum.
pub fn enum_members(btf: &Btf<'_>, name: &str) -> Option<Vec<(String, i128)>> {
    let s = |n: &std::ffi::OsStr| n.to_string_lossy().into_owned();
    if let Some(e) = btf.type_by_name::<Enum<'_>>(name) {
        return Some(
            e.iter()
                .filter_map(|m| Some((s(m.name?), m.value as i128)))
                .collect(),
        );
    }
    let e = btf.type_by_name::<Enum64<'_>>(name)?;
    Some(
        e.iter()
            .filter_map(|m| Some((s(m.name?), m.value)))
            .collect(),
    )
}

/// Every enum of the BTF whose name satisfies `want`, with its members.
pub fn enums_named(
    btf: &Btf<'_>,
    want: impl Fn(&str) -> bool,
) -> Vec<(String, Vec<(String, i128)>)> {
    let mut out = Vec::new();
    for id in 1..=btf.len() as u32 {
        let Some(t) = btf.type_by_id::<BtfType<'_>>(id.into()) else {
            continue;
        };
        if !matches!(t.kind(), BtfKind::Enum | BtfKind::Enum64) {
            continue;
        }
        let Some(name) = t.name().and_then(|n| n.to_str()) else {
            continue;
        };
        if want(name) {
            if let Some(m) = enum_members(btf, name) {
                out.push((name.to_string(), m));
            }
        }
    }
    out
}

/// Does the BTF define `struct name`?
pub fn has_struct(btf: &Btf<'_>, name: &str) -> bool {
    btf.type_by_name::<Struct<'_>>(name).is_some()
}

/// One argument of a tracepoint, as much as a gadget needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A pointer, with the name of the struct it points to (if it does).
    Ptr(Option<String>),
    Int {
        bits: u8,
        signed: bool,
    },
    Enum(String),
    Other,
}

impl std::fmt::Display for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arg::Ptr(Some(s)) => write!(f, "struct {s} *"),
            Arg::Ptr(None) => f.write_str("void *"),
            Arg::Int { bits, signed } => write!(f, "{}{bits}", if *signed { "s" } else { "u" }),
            Arg::Enum(e) => write!(f, "enum {e}"),
            Arg::Other => f.write_str("?"),
        }
    }
}

/// Follow typedefs and const/volatile/restrict/type tags to the type they
/// name (bounded: a malformed BTF cannot loop).
fn strip<'b>(mut t: BtfType<'b>) -> Option<BtfType<'b>> {
    for _ in 0..64 {
        if !(t.is_mod() || t.kind() == BtfKind::Typedef) {
            return Some(t);
        }
        t = t.next_type()?;
    }
    None
}

fn classify(t: BtfType<'_>) -> Arg {
    let Some(t) = strip(t) else {
        return Arg::Other;
    };
    let name = |t: &BtfType<'_>| t.name().map(|n| n.to_string_lossy().into_owned());
    match t.kind() {
        BtfKind::Ptr => {
            let to = t.next_type().and_then(strip);
            Arg::Ptr(
                to.filter(|p| matches!(p.kind(), BtfKind::Struct | BtfKind::Fwd))
                    .and_then(|p| name(&p)),
            )
        }
        BtfKind::Int => match Int::try_from(t) {
            Ok(i) => Arg::Int {
                bits: i.bits,
                signed: matches!(i.encoding, IntEncoding::Signed),
            },
            Err(_) => Arg::Other,
        },
        BtfKind::Enum | BtfKind::Enum64 => name(&t).map(Arg::Enum).unwrap_or(Arg::Other),
        _ => Arg::Other,
    }
}

/// The arguments a `tp_btf/<name>` program receives on the kernel that
/// `btf` describes, read from its `btf_trace_<name>` typedef (a pointer to
/// the probe's prototype, whose first argument is the tracepoint's private
/// `void *` and is left out). `None` if there is no such tracepoint.
pub fn tracepoint_args(btf: &Btf<'_>, name: &str) -> Option<Vec<Arg>> {
    let td = btf.type_by_name::<Typedef<'_>>(&format!("btf_trace_{name}"))?;
    let ptr = strip(td.next_type()?)?;
    if ptr.kind() != BtfKind::Ptr {
        return None;
    }
    let proto = FuncProto::try_from(strip(ptr.next_type()?)?).ok()?;
    Some(
        proto
            .iter()
            .skip(1)
            .map(|p| {
                btf.type_by_id::<BtfType<'_>>(p.ty)
                    .map(classify)
                    .unwrap_or(Arg::Other)
            })
            .collect(),
    )
}

/// Run `f` on the running kernel's BTF; `None` if it cannot be read.
pub fn with_vmlinux<T>(f: impl FnOnce(&Btf<'_>) -> T) -> Option<T> {
    Btf::from_vmlinux().ok().map(|b| f(&b))
}

/// The running kernel's members of enum `name`, read once per process.
pub fn vmlinux_enum(name: &'static str, strip: &'static str) -> &'static BTreeMap<u32, String> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, &'static BTreeMap<u32, String>>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    c.entry(name).or_insert_with(|| {
        let names = Btf::from_vmlinux()
            .ok()
            .and_then(|btf| enum_names(&btf, name, strip))
            .unwrap_or_default();
        Box::leak(Box::new(names))
    })
}

/// Name of `value` in `names`, or the number when this kernel has no name for it.
pub fn name_or_number(names: &BTreeMap<u32, String>, value: u32) -> String {
    names
        .get(&value)
        .cloned()
        .unwrap_or_else(|| value.to_string())
}

/// Kernel address → `function+0xoff`, via kallsyms (blazesym), cached.
pub struct KernelSymbols {
    symbolizer: blazesym::symbolize::Symbolizer,
    src: blazesym::symbolize::source::Source<'static>,
    cache: HashMap<u64, String>,
    /// Addresses that could not be symbolized.
    pub unresolved: u64,
}

impl Default for KernelSymbols {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelSymbols {
    pub fn new() -> Self {
        use blazesym::symbolize::source::{Kernel, Source};
        use blazesym::MaybeDefault;
        KernelSymbols {
            symbolizer: blazesym::symbolize::Symbolizer::new(),
            src: Source::Kernel(Kernel {
                vmlinux: MaybeDefault::None,
                ..Default::default()
            }),
            cache: HashMap::new(),
            unresolved: 0,
        }
    }

    pub fn name(&mut self, addr: u64) -> String {
        if let Some(n) = self.cache.get(&addr) {
            return n.clone();
        }
        let name = match self
            .symbolizer
            .symbolize_single(&self.src, blazesym::symbolize::Input::AbsAddr(addr))
        {
            Ok(blazesym::symbolize::Symbolized::Sym(s)) => {
                format!("{}+{:#x}", s.name, addr.saturating_sub(s.addr))
            }
            _ => {
                self.unresolved += 1;
                format!("{addr:#x}")
            }
        };
        if self.cache.len() > 65536 {
            self.cache.clear();
        }
        self.cache.insert(addr, name.clone());
        name
    }
}

/// Can perf-event programs call bpf_get_current_task_btf (Linux 5.11),
/// and so read the current task with plain loads instead of one
/// bpf_probe_read_kernel per field? Asked of the kernel once.
pub fn perf_event_has_task_btf() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: libbpf's probe takes no pointers but the optional opts.
        let r = unsafe {
            libbpf_sys::libbpf_probe_bpf_helper(
                libbpf_sys::BPF_PROG_TYPE_PERF_EVENT,
                libbpf_sys::BPF_FUNC_get_current_task_btf,
                std::ptr::null(),
            )
        };
        // Unlike the ancestor probe, an error means "read it the old way".
        r == 1
    })
}

/// Can tracing programs (tracepoints, perf events, `tp_btf`) call
/// bpf_get_current_ancestor_cgroup_id on this kernel? Linux 5.10 offers it
/// to cgroup programs only; there the cgroup filter reads the ancestors
/// from the task (plumb.h, `plumb_ancestor_cgroup_id`). Asked of the
/// kernel once (libbpf loads a probe program).
pub fn tracing_has_ancestor_cgroup_helper() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: libbpf's probe takes no pointers but the optional opts.
        let r = unsafe {
            libbpf_sys::libbpf_probe_bpf_helper(
                libbpf_sys::BPF_PROG_TYPE_TRACEPOINT,
                libbpf_sys::BPF_FUNC_get_current_ancestor_cgroup_id,
                std::ptr::null(),
            )
        };
        // An error (no BPF at all) keeps the helper: loading then says why.
        r != 0
    })
}
