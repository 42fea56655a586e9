//! plumb-core: the one pipeline every plumb command runs.
//!
//! kernel ring buffer → bounds-checked decoder (`raw`, each gadget's
//! `decode`) → typed [`event::Event`] → enrichment (`enrich`: cgroup →
//! container → pod, cached) → residual user-space [`filter::Filter`] →
//! [`sink::Sink`]. Local commands and the agent use the same pipeline with
//! different sinks, get it ready the same way ([`prepare`]), and print
//! through the same [`sink::Output`]s, local or remote.

pub mod enrich;
pub mod error;
pub mod event;
pub mod filter;
pub mod gadgets;
pub mod raw;

pub use error::{Error, Result};
pub mod kernel;
pub mod loader;
pub mod perf;
pub mod preflight;
pub mod prepare;
pub mod runner;
pub mod sink;
#[doc(hidden)]
#[cfg(any(test, feature = "testing"))]
pub mod testing;
