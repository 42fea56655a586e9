//! Names from the running kernel: enum values from its BTF (drop reasons,
//! reset reasons, TCP states) and kernel addresses from kallsyms.
//!
//! Enum numbering differs between kernel versions, so no table here is
//! copied from one kernel: every name is read from the BTF that describes
//! the kernel we run on (or, in tests, from a BTF fixture).

use libbpf_rs::btf::types::{Enum, Enum64};
use libbpf_rs::btf::Btf;
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
