//! The gadget registry: the one place a gadget is registered.
//!
//! A gadget is one folder below this one: its `NAME.bpf.c` (built into a
//! skeleton by build.rs), its Rust owner (`mod.rs`: load, attach, decode,
//! describe its columns and parameters) and its tests. Adding one means
//! adding the folder, its `mod` line and one line in the [`registry!`]
//! invocation below; the registry, the event enum and its dispatch are
//! generated from that line.
//!
//! The kernel side tags each record with an `enum plumb_kind` value
//! (`plumb.h`, mirrored in `raw::kind`): an id the decoder checks, not a
//! registration; a new gadget takes the next free number.

pub mod drop;
pub mod exec;
pub mod net;
pub mod open;
pub mod reset;
pub mod retrans;
pub mod tcp;

use crate::error::{DecodeError, Error, Result};
use crate::event::{Event, Workload};
use crate::filter::Filter;
use crate::loader::StartCtx;
use crate::raw::RawHdr;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

/// Generates [`REGISTRY`], [`Body`] and its dispatch from one list of
/// `module::EventType`, in the order `plumb gadgets` lists them. `{ flow }`
/// marks a network gadget: its event has a `flow` naming both sides, and it
/// is raised in packet context, without a task.
macro_rules! registry {
    ($($module:ident :: $ty:ident $({ $flow:ident })?),* $(,)?) => {
        /// Every gadget plumb knows, in the order `plumb gadgets` lists them.
        pub static REGISTRY: &[&GadgetDesc] = &[$(&$module::DESC),*];

        /// What a gadget saw; the `type` key of the JSON output.
        #[derive(Debug, Clone, Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        // Events are built once and handed on by reference; boxing the larger
        // network variants would only add an allocation per event.
        #[allow(clippy::large_enum_variant)]
        pub enum Body {
            $($ty($module::$ty)),*
        }

        impl Body {
            /// The event's `type` key: its gadget's name.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Body::$ty(_) => $module::DESC.name),*
                }
            }

            /// The flow of a network event.
            pub fn flow(&self) -> Option<&net::Flow> {
                match self {
                    $(Body::$ty(_b) => registry!(@flow _b $($flow)?)),*
                }
            }

            /// Fill in body-side enrichment (per-side pods of network events).
            pub fn enrich(&mut self, _enricher: &mut crate::enrich::Enricher) {
                match self {
                    $(Body::$ty(_b) => registry!(@enrich _b _enricher $($flow)?)),*
                }
            }
        }

        /// Does this gadget's events name the task that caused them? Network
        /// gadgets' events are raised in packet context, where the running
        /// task is unrelated.
        pub fn has_task(desc: &GadgetDesc) -> bool {
            $(if desc.name == $module::DESC.name {
                return registry!(@task $($flow)?);
            })*
            true
        }
    };
    (@flow $b:ident flow) => { Some(&$b.flow) };
    (@flow $b:ident) => { None };
    (@enrich $b:ident $e:ident flow) => { $b.flow.enrich($e) };
    (@enrich $b:ident $e:ident) => { () };
    (@task flow) => { false };
    (@task) => { true };
}

registry! {
    exec::Exec,
    open::Open,
    tcp::Tcp,
    drop::Drop { flow },
    retrans::Retrans { flow },
    reset::Reset { flow },
}

impl Body {
    /// Workloads named inside the body (network events name one per side),
    /// for pod and container filters.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.flow().into_iter().flat_map(|f| f.workloads())
    }
}

/// Where an event happened on the network: its namespace, and the address
/// and port of each side (for `--netns`, `--addr`, `--port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub netns: u32,
    pub addrs: [Option<std::net::IpAddr>; 2],
    pub ports: [Option<u16>; 2],
}

impl Body {
    /// The event's endpoints, for gadgets whose events have them.
    pub fn endpoints(&self) -> Option<Endpoints> {
        if let Body::Tcp(t) = self {
            return Some(Endpoints {
                netns: t.netns,
                addrs: [Some(t.saddr), Some(t.daddr)],
                ports: [Some(t.sport), Some(t.dport)],
            });
        }
        self.flow().map(|f| Endpoints {
            netns: f.netns,
            addrs: [f.saddr, f.daddr],
            ports: [f.sport, f.dport],
        })
    }
}

/// Do this gadget's events have endpoints ([`Body::endpoints`])?
pub fn has_endpoints(desc: &GadgetDesc) -> bool {
    !has_task(desc) || desc.name == tcp::DESC.name
}

/// Refuse filters a gadget's events can never match: process filters on
/// network gadgets, whose events carry no task, and flow filters on
/// gadgets whose events have no flow.
pub fn check_filter(desc: &GadgetDesc, filter: &Filter) -> Result<()> {
    if let Some(flag) = filter.flow_flag().filter(|_| !has_endpoints(desc)) {
        let with: Vec<&str> = REGISTRY
            .iter()
            .filter(|g| has_endpoints(g))
            .map(|g| g.name)
            .collect();
        return Err(Error::BadFilter {
            flag,
            reason: format!(
                "{} events have no network flow; --{flag} applies to {}",
                desc.name,
                with.join(", ")
            ),
        });
    }
    match filter.process_flag() {
        Some(flag) if !has_task(desc) => Err(Error::BadFilter {
            flag,
            reason: format!(
                "{} events are raised while the kernel handles a packet and name no process; \
                 filter by --cgroup, --container, --pod, -n/--namespace or --netns instead",
                desc.name
            ),
        }),
        _ => Ok(()),
    }
}

/// Look a gadget up by name.
pub fn find(name: &str) -> Result<&'static GadgetDesc> {
    REGISTRY
        .iter()
        .copied()
        .find(|g| g.name == name)
        .ok_or_else(|| Error::UnknownGadget {
            name: name.to_string(),
            known: REGISTRY
                .iter()
                .map(|g| g.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A gadget's description: everything the CLI, the agent and `plumb
/// gadgets` need, as data.
pub struct GadgetDesc {
    pub name: &'static str,
    /// One line for `plumb gadgets` and `--help`.
    pub summary: &'static str,
    /// Longer help text (what is left out by default, caveats).
    pub help: &'static str,
    /// Gadget-specific options, beyond the common filters.
    pub params: &'static [ParamSpec],
    /// The columns of the table output.
    pub columns: &'static [Column],
    /// Keys `--summary` groups by.
    pub summary_keys: &'static [&'static str],
    /// Hooks it needs, to tell whether it can run here.
    pub hooks: &'static [Hook],
    /// Load and attach; dropping the result detaches everything.
    pub start: fn(&StartCtx<'_>) -> Result<Box<dyn Attached>>,
}

impl std::fmt::Debug for GadgetDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GadgetDesc")
            .field("name", &self.name)
            .finish()
    }
}

/// One column of the table output: the JSON key it shows.
#[derive(Debug, Clone)]
pub struct Column {
    pub key: Cow<'static, str>,
    pub header: Cow<'static, str>,
    /// Minimum width; 0 for a last column that takes the rest of the line.
    pub width: usize,
}

impl Column {
    pub const fn new(key: &'static str, header: &'static str, width: usize) -> Self {
        Column {
            key: Cow::Borrowed(key),
            header: Cow::Borrowed(header),
            width,
        }
    }

    /// A column for a key the user named (`--fields`).
    pub fn for_key(key: &str) -> Self {
        Column {
            key: Cow::Owned(key.to_string()),
            header: Cow::Owned(key.to_uppercase()),
            width: key.len().max(8),
        }
    }
}

/// A gadget-specific option.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub help: &'static str,
    /// `None` for a switch, `Some(placeholder)` for an option with a value.
    pub value: Option<&'static str>,
}

/// Gadget options as name → value (switches have the value `true`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params(pub BTreeMap<String, String>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v != "false")
    }

    /// A comma-separated list option.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reject options the gadget does not have (from the API, where no
    /// argument parser checked them).
    pub fn check(&self, desc: &GadgetDesc) -> Result<()> {
        for k in self.0.keys() {
            if !desc.params.iter().any(|p| p.name == k) {
                return Err(Error::BadParam {
                    param: k.clone(),
                    reason: format!("gadget {} has no such option", desc.name),
                });
            }
        }
        Ok(())
    }
}

/// A kernel hook a gadget needs.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// A tracefs tracepoint `category/name`.
    Tracepoint(&'static str, &'static str),
    /// A BTF-typed raw tracepoint (`tp_btf/name`).
    TpBtf(&'static str),
    /// What the gadget itself reads from the kernel's BTF (a tracepoint's
    /// arguments, which differ between versions): `Err` says what is
    /// missing, `Ok` lists the limits on this kernel.
    Kernel(
        &'static str,
        fn() -> std::result::Result<Vec<String>, String>,
    ),
}

/// Whether a hook exists on this kernel, as far as this process can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookState {
    /// There, with these limits on this kernel (none for most hooks).
    Present(Vec<String>),
    /// Not there, and why.
    Missing(String),
    /// This process may not look (tracefs is readable by root only).
    Unknown(String),
}

impl Hook {
    pub fn state(&self) -> HookState {
        match self {
            Hook::Tracepoint(cat, name) => {
                let mut denied = None;
                for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
                    let dir = Path::new(root).join("events").join(cat).join(name);
                    match std::fs::metadata(&dir) {
                        Ok(_) => return HookState::Present(Vec::new()),
                        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                            denied = Some(format!("{root} is readable by root only"));
                        }
                        Err(_) => {}
                    }
                }
                denied.map_or_else(
                    || HookState::Missing(format!("{self} not available on this kernel")),
                    HookState::Unknown,
                )
            }
            Hook::TpBtf(name) => {
                if crate::preflight::vmlinux_has_type(&format!("btf_trace_{name}")) {
                    HookState::Present(Vec::new())
                } else {
                    HookState::Missing(format!("{self} not available on this kernel"))
                }
            }
            Hook::Kernel(_, check) => match check() {
                Ok(notes) => HookState::Present(notes),
                Err(why) => HookState::Missing(why),
            },
        }
    }

    pub fn available(&self) -> bool {
        matches!(self.state(), HookState::Present(_))
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::Tracepoint(c, n) => write!(f, "tracepoint {c}:{n}"),
            Hook::TpBtf(n) => write!(f, "tp_btf {n}"),
            Hook::Kernel(what, _) => write!(f, "{what}"),
        }
    }
}

/// Can this gadget run on this kernel?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It can, with these limits (often none).
    Yes(Vec<String>),
    /// What is missing.
    No(String),
    /// Why this process cannot tell.
    Unknown(String),
}

/// Can this gadget run on this kernel, as far as this process can tell?
pub fn check_availability(desc: &GadgetDesc) -> Availability {
    let mut unknown = None;
    let mut notes = Vec::new();
    for h in desc.hooks {
        match h.state() {
            HookState::Present(n) => notes.extend(n),
            HookState::Missing(why) => return Availability::No(why),
            HookState::Unknown(why) => {
                unknown.get_or_insert(format!("cannot tell whether {h} exists: {why}"));
            }
        }
    }
    unknown.map_or(Availability::Yes(notes), Availability::Unknown)
}

/// Can this gadget run on this kernel? `Err` says what is missing (or why
/// it cannot be told).
pub fn availability(desc: &GadgetDesc) -> std::result::Result<(), String> {
    match check_availability(desc) {
        Availability::Yes(_) => Ok(()),
        Availability::No(why) | Availability::Unknown(why) => Err(why),
    }
}

/// A decoded record: its header as the kernel wrote it, and the body.
pub struct Decoded {
    pub hdr: RawHdr,
    pub body: Body,
}

/// A gadget whose programs are loaded and attached. Dropping it detaches
/// and unloads everything.
pub trait Attached {
    /// Ring buffers to read (every gadget has one, `events`).
    fn ring_buffers(&self) -> Vec<&dyn libbpf_rs::MapCore>;
    /// Turn one record into an event body; never panics on bad input.
    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError>;
    /// Records the kernel could not write (ring buffer full), so far.
    fn lost(&self) -> u64;
    /// Kernel ids of the loaded programs.
    fn prog_ids(&self) -> Vec<u32>;
    /// Hooks that could not be attached on this kernel and were skipped.
    fn skipped(&self) -> Vec<String> {
        Vec::new()
    }
    /// A gadget-specific check on the finished event (e.g. `--reason`).
    fn keep(&self, _ev: &Event) -> bool {
        true
    }
    /// What the gadget counts besides lost records (stacks not recorded,
    /// frames not symbolized), as (what, how many), for the end summary.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Records the kernel wrote to the ring buffer so far, where the gadget
    /// counts them (network gadgets): lets tests prove what was reserved.
    fn kernel_written(&self) -> Option<u64> {
        None
    }
    /// The namespace set of the in-kernel filter (`plumb_netns`), which the
    /// runner refreshes while pods come and go.
    fn netns_map(&self) -> Option<&dyn libbpf_rs::MapCore> {
        None
    }
    /// When started with [`StartCtx::count_only`] and able to: the events
    /// counted in the kernel since the last call, each with how many times
    /// it happened. `None`: the gadget writes records instead.
    fn counted(&self) -> Option<Vec<(Decoded, u64)>> {
        None
    }
}

/// The common part of an `Attached` implementation over a skeleton whose
/// maps include `events` and `plumb_lost`.
#[macro_export]
macro_rules! impl_attached_common {
    () => {
        fn ring_buffers(&self) -> Vec<&dyn libbpf_rs::MapCore> {
            vec![&self.loaded.skel().maps.events]
        }
        fn lost(&self) -> u64 {
            $crate::loader::percpu_sum(&self.loaded.skel().maps.plumb_lost)
        }
        fn prog_ids(&self) -> Vec<u32> {
            self.loaded.prog_ids()
        }
        fn skipped(&self) -> Vec<String> {
            self.loaded.skipped.clone()
        }
    };
}

/// The `.rodata` of an open skeleton, or the error saying it has none.
#[macro_export]
macro_rules! rodata {
    ($open:expr, $gadget:expr) => {
        $open
            .maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| $crate::Error::Open {
                gadget: $gadget,
                source: libbpf_rs::Error::from(std::io::Error::other("BPF object has no .rodata")),
            })
    };
}

/// Apply the common configuration (filter, wake-up threshold, ring size)
/// to an open skeleton.
#[macro_export]
macro_rules! configure_common {
    ($open:expr, $ctx:expr, $gadget:expr) => {{
        let open = $open;
        let ctx = $ctx;
        let ro = $crate::rodata!(open, $gadget)?;
        $crate::loader::set_filter(&mut ro.plumb_filter, &ctx.filter);
        ro.plumb_wakeup_bytes = ctx.wakeup_bytes;
        open.maps
            .events
            .set_max_entries(ctx.ring_bytes)
            .map_err(|source| $crate::Error::Open {
                gadget: $gadget,
                source,
            })?;
    }};
}
