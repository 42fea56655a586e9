//! plumb-run: a user's own BPF object as a plumb command.
//!
//! `plumb run PROG.bpf.o` is five steps, each its own module: open the
//! ELF and read its BTF ([`object`], [`btf`]); set its read-only globals
//! from `--set` and the selection ([`object::SELECTION_GLOBALS`]); load it
//! and attach each program where its section, the selection ([`target`])
//! or `--attach` says ([`attach`]); read its maps every interval and
//! stream its ring and perf buffers, decoding by BTF ([`maps`],
//! [`records`], [`decode`]); print through plumb's sink layer or as
//! Prometheus text ([`output`], [`prom`]). Everything is detached and
//! unloaded on every way out: the attachments and the object are owned
//! values dropped in order.

pub mod attach;
pub mod btf;
pub mod decode;
pub mod error;
pub mod maps;
pub mod netns;
pub mod object;
pub mod output;
pub mod prom;
pub mod records;
pub mod target;

/// The objects built from tests/bpf, for the workspace's tests.
#[cfg(feature = "testing")]
pub mod testing {
    /// The protocol counter (a socket filter; map `proto_count`, key
    /// `{proto}`, value `{packets, bytes}`).
    pub const PROTO_COUNT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/proto_count.bpf.o"));
}

pub use error::{Error, Result};
pub use output::Format;
pub use target::Target;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Everything `plumb run` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub object: PathBuf,
    pub target: Target,
    /// `--attach SECTION=TARGET`.
    pub attach: Vec<(String, String)>,
    /// `--set NAME=VALUE`.
    pub set: Vec<(String, String)>,
    /// Stop after this long (else at SIGINT/SIGTERM).
    pub duration: Option<Duration>,
    /// Print the maps this often (always once at the end).
    pub interval: Option<Duration>,
    pub format: Format,
    /// Series per Prometheus family before folding into `other`.
    pub max_series: usize,
    /// This host's name, the `node` of every record.
    pub node: String,
    /// Cut table rows to this width.
    pub width: Option<usize>,
}

/// What a run did, for its caller (and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Kernel ids of the programs that were loaded.
    pub prog_ids: Vec<u32>,
    pub attached: Vec<String>,
    pub globals: Vec<String>,
    pub records: u64,
    pub lost: u64,
}

/// Split `NAME=VALUE`.
pub fn parse_pair(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not NAME=VALUE")),
    }
}

/// Run the object until `stop`, or `duration` passes. Notes for the user
/// (what was attached, warnings) go to `notes`; maps and records to `out`.
/// `ready` is called once everything is attached.
pub fn run<W: Write>(
    opts: &Options,
    stop: &AtomicBool,
    out: W,
    notes: &mut dyn Write,
    ready: &mut dyn FnMut(&Summary),
) -> Result<Summary> {
    let mut opened = object::open(&opts.object)?;
    attach::check_overrides(&opened.programs(), &opts.attach)?;
    let globals = opened.set_globals(&opts.target.globals(), &opts.set)?;
    let loaded = opened.load()?;
    let attached = attach::attach_all(&loaded.obj, &opts.target, &opts.attach)?;
    let mut summary = Summary {
        prog_ids: loaded.prog_ids(),
        attached: attached.lines.clone(),
        globals,
        ..Summary::default()
    };
    for l in &attached.lines {
        writeln!(notes, "plumb: attached {l}")?;
    }
    if !summary.globals.is_empty() {
        writeln!(notes, "plumb: set {}", summary.globals.join(", "))?;
    }
    let reader = maps::Reader::new(&loaded.obj, loaded.btf.as_ref());
    let stream_maps = records::stream_maps(&loaded.obj);
    let streams = records::Streams::open(&stream_maps, loaded.btf.as_ref())?;
    for w in reader.warnings.iter().chain(&streams.warnings) {
        writeln!(notes, "plumb: warning: {w}")?;
    }
    let mut printer = output::Printer::new(
        out,
        opts.format,
        &loaded.name,
        &opts.node,
        opts.max_series,
        opts.width,
    );
    ready(&summary);

    let start = Instant::now();
    let mut next_dump = opts.interval.map(|i| start + i);
    let mut lost_seen = std::collections::BTreeMap::<String, u64>::new();
    let mut deliver = |printer: &mut output::Printer<W>, summary: &mut Summary| -> Result<()> {
        let (recs, lost) = {
            let mut inbox = streams.inbox.borrow_mut();
            (std::mem::take(&mut inbox.records), inbox.lost.clone())
        };
        for (map, r) in &recs {
            printer.record(map, r)?;
        }
        summary.records += recs.len() as u64;
        for (map, n) in lost {
            let seen = lost_seen.entry(map.clone()).or_default();
            if n > *seen {
                printer.lost(&map, n - *seen)?;
                summary.lost += n - *seen;
                *seen = n;
            }
        }
        Ok(())
    };
    loop {
        if stop.load(Ordering::Relaxed) || opts.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let mut wait = Duration::from_millis(100);
        if let Some(d) = opts.duration {
            wait = wait.min(d.saturating_sub(start.elapsed()));
        }
        streams.poll(wait)?;
        deliver(&mut printer, &mut summary)?;
        if let Some(at) = next_dump {
            if Instant::now() >= at {
                printer.dumps(&reader.read(&loaded.obj, loaded.btf.as_ref())?)?;
                next_dump = opts.interval.map(|i| at + i);
            }
        }
    }
    streams.drain()?;
    deliver(&mut printer, &mut summary)?;
    printer.dumps(&reader.read(&loaded.obj, loaded.btf.as_ref())?)?;
    if summary.lost > 0 {
        writeln!(notes, "plumb: {} records were lost in all", summary.lost)?;
    }
    // Detach before the object goes: streams, then links and filters.
    drop(streams);
    drop(attached);
    drop(loaded);
    Ok(summary)
}
