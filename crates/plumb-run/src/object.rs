//! The user's object from file to kernel: checked to be a BPF ELF with
//! programs, its BTF read, its read-only globals set (`--set` and the
//! selection's documented globals), then loaded. A refusal names the
//! program and keeps the verifier's last lines.

use crate::btf::{Btf, Kind};
use crate::error::{Error, Result};
use libbpf_rs::{AsRawLibbpf, MapCore, Object, ObjectBuilder, OpenObject};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The globals plumb sets from the selection when the object declares
/// them (as `const volatile`); `--set` overrides them.
pub const SELECTION_GLOBALS: &[(&str, &str)] = &[
    (
        "plumb_target_pid",
        "the selected process (--pid, or the pod's main process), as the host numbers it",
    ),
    (
        "plumb_target_cgroup_id",
        "the id (inode) of the selected cgroup (--cgroup, the pod's or the process's)",
    ),
    (
        "plumb_target_netns",
        "the inode of the selected network namespace (--netns, the pod's or the process's)",
    ),
];

/// An opened, not yet loaded, object.
pub struct Opened {
    pub path: PathBuf,
    /// The object's name: the file name without `.bpf.o` / `.o`.
    pub name: String,
    pub btf: Option<Btf>,
    open: OpenObject,
}

/// The object's BTF, as libbpf holds it (the ELF's `.BTF`, sections fixed up).
fn raw_btf(obj: &OpenObject) -> Option<Vec<u8>> {
    let ptr = obj.as_libbpf_object().as_ptr();
    // SAFETY: `ptr` is a live bpf_object; libbpf owns the BTF and its raw
    // data, copied out before `obj` can go away.
    unsafe {
        let btf = libbpf_rs::libbpf_sys::bpf_object__btf(ptr);
        if btf.is_null() {
            return None;
        }
        let mut size = 0u32;
        let data = libbpf_rs::libbpf_sys::btf__raw_data(btf, &mut size);
        if data.is_null() {
            return None;
        }
        Some(std::slice::from_raw_parts(data as *const u8, size as usize).to_vec())
    }
}

fn object_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = file
        .strip_suffix(".bpf.o")
        .or_else(|| file.strip_suffix(".o"))
        .unwrap_or(&file)
        .to_string();
    stem.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Open `path`: an ELF that libbpf reads as a BPF object with programs.
pub fn open(path: &Path) -> Result<Opened> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(Error::NotElf(path.into()));
    }
    plumb_core::loader::capture_libbpf_log();
    // libbpf's messages about a malformed file can carry its bytes, which
    // libbpf-rs cannot take (see without_libbpf_log): none while opening.
    let open =
        plumb_core::loader::without_libbpf_log(|| ObjectBuilder::default().open_memory(&bytes))
            .map_err(|e| Error::NotBpf {
                path: path.into(),
                reason: e.to_string(),
            })?;
    if open.progs().next().is_none() {
        return Err(Error::NoPrograms(path.into()));
    }
    // Loading logs these names: they must be text.
    let names_ok = open
        .progs()
        .all(|p| p.name().to_str().is_some() && p.section().to_str().is_some())
        && open.maps().all(|m| m.name().to_str().is_some());
    if !names_ok {
        return Err(Error::NotBpf {
            path: path.into(),
            reason: "a program, section or map name is not UTF-8".into(),
        });
    }
    let btf = match raw_btf(&open) {
        Some(raw) => Some(Btf::parse(&raw)?),
        None => None,
    };
    Ok(Opened {
        path: path.into(),
        name: object_name(path),
        btf,
        open,
    })
}

/// A value for a global of type `ty`, as bytes of its size.
fn encode(btf: &Btf, ty: u32, size: usize, value: &str) -> std::result::Result<Vec<u8>, String> {
    let (_, t) = btf.resolve(ty).ok_or("its type is not in the BTF")?;
    let int = |signed: bool, size: usize| -> std::result::Result<Vec<u8>, String> {
        let v = value.trim();
        let parsed: i128 = if let Some(h) = v.strip_prefix("0x") {
            i128::from_str_radix(h, 16).map_err(|e| format!("'{value}' is not a number: {e}"))?
        } else {
            v.parse()
                .map_err(|e| format!("'{value}' is not a number: {e}"))?
        };
        let bits = (size * 8) as u32;
        let (lo, hi) = if signed {
            (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
        } else {
            (0, (1i128 << bits) - 1)
        };
        if parsed < lo || parsed > hi {
            return Err(format!(
                "{value} does not fit its {bits}-bit {}integer",
                if signed { "" } else { "unsigned " }
            ));
        }
        Ok(parsed.to_le_bytes()[..size].to_vec())
    };
    match &t.kind {
        Kind::Int { bool: true, .. } => match value {
            "1" | "true" => Ok(vec![1; 1]
                .into_iter()
                .chain(std::iter::repeat(0))
                .take(size)
                .collect()),
            "0" | "false" => Ok(vec![0; size]),
            _ => Err(format!("'{value}' is not a bool (true, false, 1, 0)")),
        },
        Kind::Int {
            size: s, signed, ..
        } if (*s as usize) <= 8 && *s as usize == size => int(*signed, size),
        Kind::Enum {
            values, size: s, ..
        } => match values.iter().find(|(n, _)| n == value) {
            Some((_, v)) => Ok(i128::from(*v).to_le_bytes()[..*s as usize].to_vec()),
            None => int(true, *s as usize),
        },
        Kind::Array { .. } => {
            if value.len() >= size {
                return Err(format!(
                    "'{value}' does not fit in {size} bytes with its NUL"
                ));
            }
            let mut b = value.as_bytes().to_vec();
            b.resize(size, 0);
            Ok(b)
        }
        _ => Err("only integers, bools, enums and char arrays can be set".into()),
    }
}

impl Opened {
    /// The read-only globals the object declares, by name.
    pub fn rodata_globals(&self) -> Vec<String> {
        self.btf
            .as_ref()
            .map(|b| {
                b.section_vars(".rodata")
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Set read-only globals before load. `auto` are the selection's
    /// globals, set only where the object declares them; `set` are the
    /// user's, which must exist and win over `auto`.
    pub fn set_globals(
        &mut self,
        auto: &BTreeMap<String, String>,
        set: &[(String, String)],
    ) -> Result<Vec<String>> {
        let vars = self
            .btf
            .as_ref()
            .map(|b| b.section_vars(".rodata"))
            .unwrap_or_default();
        let mut writes: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in auto {
            if vars.iter().any(|(n, _)| n == k) {
                writes.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in set {
            if !vars.iter().any(|(n, _)| n == k) {
                let known: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
                return Err(Error::BadGlobal {
                    name: k.clone(),
                    reason: if known.is_empty() {
                        "the object declares no read-only (const volatile) globals".into()
                    } else {
                        format!(
                            "no such read-only global; the object has: {}",
                            known.join(", ")
                        )
                    },
                });
            }
            writes.insert(k.clone(), v.clone());
        }
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let btf = self.btf.as_ref().expect("vars come from the BTF");
        let mut encoded = Vec::new();
        for (k, v) in &writes {
            let (_, var) = vars.iter().find(|(n, _)| n == k).expect("checked above");
            let bytes =
                encode(btf, var.ty, var.size as usize, v).map_err(|reason| Error::BadGlobal {
                    name: k.clone(),
                    reason,
                })?;
            encoded.push((var.offset as usize, bytes));
        }
        let mut map = self
            .open
            .maps_mut()
            .find(|m| m.name().to_string_lossy().ends_with(".rodata"))
            .ok_or_else(|| Error::BadGlobal {
                name: writes.keys().next().cloned().unwrap_or_default(),
                reason: "the object has no .rodata map".into(),
            })?;
        let data = map.initial_value_mut().ok_or_else(|| Error::BadGlobal {
            name: writes.keys().next().cloned().unwrap_or_default(),
            reason: "the .rodata map has no initial value".into(),
        })?;
        for (off, bytes) in encoded {
            let Some(dst) = data.get_mut(off..off + bytes.len()) else {
                return Err(Error::BadGlobal {
                    name: String::new(),
                    reason: "the global lies outside .rodata".into(),
                });
            };
            dst.copy_from_slice(&bytes);
        }
        Ok(writes
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect())
    }

    /// Programs by (name, section), for `--attach` and messages.
    pub fn programs(&self) -> Vec<(String, String)> {
        self.open
            .progs()
            .map(|p| {
                (
                    p.name().to_string_lossy().into_owned(),
                    p.section().to_string_lossy().into_owned(),
                )
            })
            .collect()
    }

    /// Load into the kernel.
    pub fn load(self) -> Result<Loaded> {
        plumb_core::loader::take_libbpf_log();
        let programs = self.programs();
        let Opened {
            path,
            name,
            btf,
            open,
        } = self;
        let obj = open.load().map_err(|e| {
            let log = plumb_core::loader::take_libbpf_log();
            let program = log.iter().find_map(|l| {
                let rest = l.split("prog '").nth(1)?;
                let (p, tail) = rest.split_once('\'')?;
                tail.contains("failed to load").then(|| p.to_string())
            });
            // Did the verifier run (its log is there), or did libbpf or the
            // kernel refuse before (an fentry target this kernel lacks)?
            let verified = log
                .iter()
                .any(|l| l.contains("-- BEGIN PROG LOAD LOG --") || l.starts_with("processed "));
            let verifier: Vec<String> = log
                .iter()
                .filter(|l| {
                    !l.starts_with("libbpf:")
                        && !l.contains("-- END PROG LOAD LOG --")
                        && !l.contains("-- BEGIN PROG LOAD LOG --")
                })
                .cloned()
                .collect();
            // libbpf's own words about the program, when the verifier did not run.
            let said = program.as_ref().and_then(|p| {
                let tag = format!("prog '{p}': ");
                log.iter().find_map(|l| {
                    let rest = l.split(&tag).nth(1)?;
                    (!rest.starts_with("failed to load") && !rest.starts_with("failed to prepare load attributes"))
                        .then(|| rest.trim().to_string())
                })
            });
            let mut reason = said.filter(|_| !verified).unwrap_or_else(|| e.to_string());
            let section = programs.iter().find(|(n, _)| Some(n) == program.as_ref()).map(|(_, s)| s.as_str());
            if !verified && section.is_some_and(|s| s.starts_with("fentry") || s.starts_with("fexit") || s.starts_with("fmod_ret")) {
                reason.push_str(" (this kernel may refuse fentry/fexit programs: a kprobe or tracepoint may do)");
            }
            Error::Load {
                reason,
                log: if program.is_some() && verified { verifier } else { Vec::new() },
                verified,
                program,
            }
        })?;
        Ok(Loaded {
            path,
            name,
            btf,
            obj,
        })
    }
}

/// A loaded object. Dropping it unloads its programs and maps.
pub struct Loaded {
    pub path: PathBuf,
    pub name: String,
    pub btf: Option<Btf>,
    pub obj: Object,
}

impl Loaded {
    /// The kernel ids of the object's programs (for tests and messages).
    pub fn prog_ids(&self) -> Vec<u32> {
        self.obj
            .progs()
            .filter_map(|p| libbpf_rs::Program::id_from_fd(std::os::fd::AsFd::as_fd(&p)).ok())
            .collect()
    }

    /// Map names, for messages.
    pub fn map_names(&self) -> Vec<String> {
        self.obj
            .maps()
            .map(|m| m.name().to_string_lossy().into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::build::BtfBuilder;

    #[test]
    fn globals_are_encoded_by_type_and_checked_for_range() {
        let mut b = BtfBuilder::new();
        let u32_ = b.int("unsigned int", 4, false);
        let i8_ = b.int("signed char", 1, true);
        let c = b.int("char", 1, true);
        let arr = b.array(c, u32_, 4);
        let e = b.enm("mode", &[("FAST", 3)]);
        let btf = Btf::parse(&b.bytes()).unwrap();
        assert_eq!(
            encode(&btf, u32_, 4, "4242").unwrap(),
            4242u32.to_le_bytes()
        );
        assert_eq!(encode(&btf, u32_, 4, "0x10").unwrap(), 16u32.to_le_bytes());
        assert!(encode(&btf, u32_, 4, "-1")
            .unwrap_err()
            .contains("does not fit"));
        assert_eq!(encode(&btf, i8_, 1, "-2").unwrap(), [0xfe]);
        assert_eq!(encode(&btf, arr, 4, "ab").unwrap(), b"ab\0\0");
        assert!(encode(&btf, arr, 4, "abcd").is_err());
        assert_eq!(encode(&btf, e, 4, "FAST").unwrap(), 3u32.to_le_bytes());
        assert!(encode(&btf, u32_, 4, "x")
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn names_come_from_the_file() {
        assert_eq!(
            object_name(Path::new("/x/proto-count.bpf.o")),
            "proto_count"
        );
        assert_eq!(object_name(Path::new("a.o")), "a");
    }
}
