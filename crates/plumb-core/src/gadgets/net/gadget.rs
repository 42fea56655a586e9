//! The part of a network gadget that is the same for drop, retrans and
//! reset, written once: choosing the program variant that fits the kernel
//! (and saying why none does), loading with the common and the network
//! filter configuration, attaching, and the attached gadget itself (ring
//! buffer, lost records including the runs the kernel skipped, the
//! in-kernel filter's counters, the namespace map the runner refreshes).
//!
//! A gadget supplies its skeleton (through [`net_skel!`](crate::net_skel))
//! and a [`NetDecode`]: how its records become events.

use super::Support;
use crate::error::{DecodeError, Result};
use crate::event::Event;
use crate::gadgets::{Attached, Decoded};
use crate::kernel;
use crate::loader::{self, Loaded, StartCtx};
use libbpf_rs::btf::Btf;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::MapCore;
use std::os::fd::AsFd;

/// The maps every network gadget's object has (plumb.h, plumb_net_filter.h).
pub trait NetSkel {
    fn events(&self) -> &dyn MapCore;
    fn plumb_lost(&self) -> &dyn MapCore;
    fn plumb_netns(&self) -> &dyn MapCore;
    fn plumb_net_counts(&self) -> &dyn MapCore;
}

/// An open network-gadget skeleton: write the common configuration (task
/// filter, wake-up, ring size) and the network filter into it.
pub trait NetOpen {
    fn configure(&mut self, gadget: &'static str, ctx: &StartCtx<'_>) -> Result<()>;
}

/// Implements [`NetOpen`] and [`NetSkel`] for a gadget's skeleton types
/// (`OpenNameSkel`, `NameSkel`).
#[macro_export]
macro_rules! net_skel {
    ($open:ident, $skel:ident) => {
        impl $crate::gadgets::net::NetOpen for $open<'static> {
            fn configure(
                &mut self,
                gadget: &'static str,
                ctx: &$crate::loader::StartCtx<'_>,
            ) -> $crate::error::Result<()> {
                $crate::configure_common!(&mut *self, ctx, gadget);
                let ro = $crate::rodata!(self, gadget)?;
                $crate::loader::set_raw(&mut ro.plumb_net_filter, &ctx.net.raw);
                Ok(())
            }
        }
        impl $crate::gadgets::net::NetSkel for $skel<'static> {
            fn events(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.events
            }
            fn plumb_lost(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.plumb_lost
            }
            fn plumb_netns(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.plumb_netns
            }
            fn plumb_net_counts(&self) -> &dyn libbpf_rs::MapCore {
                &self.maps.plumb_net_counts
            }
        }
    };
}

/// How a gadget turns its records into events, and what it counts itself.
pub trait NetDecode<S> {
    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError>;
    /// A gadget-specific check on the finished event (`--reason`).
    fn keep(&self, _ev: &Event) -> bool {
        true
    }
    /// The gadget's own counters (stacks not recorded, ...).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Counts gathered in the kernel, when the gadget counted instead of
    /// writing records (see [`Attached::counted`]).
    fn counted(&self, _skel: &S) -> Option<Vec<(Decoded, u64)>> {
        None
    }
    /// Events the gadget lost besides ring-buffer and recursion losses.
    fn lost(&self, _skel: &S) -> u64 {
        0
    }
}

/// Which program variant fits the running kernel, from its BTF; the error
/// `plumb gadgets` would give when none does.
pub fn variant<V>(
    gadget: &'static str,
    hook: &str,
    support: impl FnOnce(&Btf<'_>) -> std::result::Result<Support<V>, String>,
) -> Result<V> {
    kernel::with_vmlinux(support)
        .unwrap_or_else(|| Err("cannot read the kernel's BTF (/sys/kernel/btf/vmlinux)".into()))
        .map(|s| s.variant)
        .map_err(|why| super::unsupported(gadget, hook, why))
}

/// For `plumb gadgets`: `Err` why a gadget cannot run here, or its limits.
pub fn kernel_support<V>(
    support: impl FnOnce(&Btf<'_>) -> std::result::Result<Support<V>, String>,
) -> std::result::Result<Vec<String>, String> {
    kernel::with_vmlinux(|b| support(b).map(|s| s.notes))
        .unwrap_or_else(|| Err("cannot read the kernel's BTF (/sys/kernel/btf/vmlinux)".into()))
}

/// Open, configure (common + network filter, then `configure` for the
/// gadget's own options), leave out the programs of other variants
/// (`leave_out`), load, fill the namespace set, and attach every loaded
/// program (those in `optional` may be missing on this kernel).
pub fn load<B, O, S>(
    gadget: &'static str,
    builder: B,
    ctx: &StartCtx<'_>,
    leave_out: &[&str],
    optional: &[&str],
    configure: impl FnOnce(&mut O) -> Result<()>,
) -> Result<Loaded<S>>
where
    B: SkelBuilder<'static, Output = O>,
    O: OpenSkel<'static, Output = S> + NetOpen,
    S: Skel<'static> + NetSkel,
{
    let mut loaded = loader::load(gadget, builder, |open: &mut O| {
        open.configure(gadget, ctx)?;
        for mut p in open.open_object_mut().progs_mut() {
            if leave_out.iter().any(|n| p.name() == *n) {
                p.set_autoload(false);
            }
        }
        configure(open)
    })?;
    super::kernel::sync(
        loaded.skel().plumb_netns(),
        &Default::default(),
        &ctx.net.netns,
    )
    .map_err(|source| crate::Error::Open { gadget, source })?;
    loaded.attach(gadget, optional)?;
    Ok(loaded)
}

/// A network gadget, loaded and attached.
pub struct NetGadget<S: 'static, D> {
    pub loaded: Loaded<S>,
    pub decoder: D,
}

impl<S: Skel<'static> + NetSkel, D: NetDecode<S>> NetGadget<S, D> {
    pub fn boxed(loaded: Loaded<S>, decoder: D) -> Box<dyn Attached>
    where
        S: 'static,
        D: 'static,
    {
        Box::new(NetGadget { loaded, decoder })
    }
}

impl<S: Skel<'static> + NetSkel, D: NetDecode<S>> Attached for NetGadget<S, D> {
    fn ring_buffers(&self) -> Vec<&dyn MapCore> {
        vec![self.loaded.skel().events()]
    }

    fn decode(&self, data: &[u8]) -> std::result::Result<Decoded, DecodeError> {
        self.decoder.decode(data)
    }

    /// Ring buffer full, plus runs the kernel skipped (recursion) of every
    /// loaded program.
    fn lost(&self) -> u64 {
        let skel = self.loaded.skel();
        let skipped: u64 = skel
            .object()
            .progs()
            .filter(|p| p.autoload())
            .filter(|p| libbpf_rs::Program::id_from_fd(p.as_fd()).is_ok())
            .map(|p| super::recursion_misses(&p))
            .sum();
        loader::percpu_sum(skel.plumb_lost()) + skipped + self.decoder.lost(skel)
    }

    fn prog_ids(&self) -> Vec<u32> {
        self.loaded.prog_ids()
    }

    fn skipped(&self) -> Vec<String> {
        self.loaded.skipped.clone()
    }

    fn keep(&self, ev: &Event) -> bool {
        self.decoder.keep(ev)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut c = self.decoder.counters();
        let counts = self.loaded.skel().plumb_net_counts();
        c.push((
            "left out by the in-kernel filter",
            loader::percpu_slot_sum(counts, 0),
        ));
        c
    }

    fn kernel_written(&self) -> Option<u64> {
        Some(loader::percpu_slot_sum(
            self.loaded.skel().plumb_net_counts(),
            1,
        ))
    }

    fn netns_map(&self) -> Option<&dyn MapCore> {
        Some(self.loaded.skel().plumb_netns())
    }

    fn counted(&self) -> Option<Vec<(Decoded, u64)>> {
        self.decoder.counted(self.loaded.skel())
    }
}
