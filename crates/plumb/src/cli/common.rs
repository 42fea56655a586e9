//! Options shared by every command that runs a gadget, described once as
//! data (clap `Arg`s) so `trace`, `profile` and the kubectl plugin offer the
//! same flags, and helpers for writing to stdout.

use clap::{Arg, ArgAction, ArgMatches};
use plumb_core::filter::FilterArgs;
use plumb_core::prepare::Limits;
use plumb_core::sink::OutputSpec;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// `--pid`, `--comm`, `--uid`, `--cgroup`, `--container`, `--pod`, `-n`.
pub fn filter_args() -> Vec<Arg> {
    vec![
        Arg::new("pid").long("pid").value_name("PID").help("Only this process (checked in the kernel)").help_heading("Filters"),
        Arg::new("comm").long("comm").value_name("NAME").help("Only processes with this command name").help_heading("Filters"),
        Arg::new("uid").long("uid").value_name("UID").help("Only this user id (checked in the kernel)").help_heading("Filters"),
        Arg::new("cgroup")
            .long("cgroup")
            .value_name("PATH")
            .action(ArgAction::Append)
            .help("Only this cgroup v2 and its descendants, a path below the cgroup2 mount (checked in the kernel; repeatable)")
            .help_heading("Filters"),
        Arg::new("container").long("container").value_name("ID").help("Only this container (id or prefix)").help_heading("Filters"),
        Arg::new("pod").long("pod").value_name("NAME").help("Only this pod").help_heading("Filters"),
        Arg::new("namespace").short('n').long("namespace").value_name("NS").help("Only pods of this Kubernetes namespace").help_heading("Filters"),
    ]
}

/// `--netns`, `--port`, `--addr`: for commands that trace network events.
pub fn flow_filter_args() -> Vec<Arg> {
    vec![
        Arg::new("netns")
            .long("netns")
            .value_name("NAME|PATH")
            .action(ArgAction::Append)
            .help("Network events only: only this network namespace, a name under /run/netns or a path such as /proc/PID/ns/net (checked in the kernel; repeatable)")
            .help_heading("Filters"),
        Arg::new("port")
            .long("port")
            .value_name("N")
            .action(ArgAction::Append)
            .help("Network events only: only flows with this port on either side (checked in the kernel for drop, retrans, reset; repeatable)")
            .help_heading("Filters"),
        Arg::new("addr")
            .long("addr")
            .value_name("IP|CIDR")
            .action(ArgAction::Append)
            .help("Network events only: only flows with an address on either side in this prefix, IPv4 or IPv6 (checked in the kernel for drop, retrans, reset; repeatable)")
            .help_heading("Filters"),
    ]
}

pub fn filter_from(m: &ArgMatches) -> FilterArgs {
    let one = |k: &str| m.try_get_one::<String>(k).ok().flatten().cloned();
    let many = |k: &str| -> Vec<String> {
        m.try_get_many::<String>(k)
            .ok()
            .flatten()
            .map(|v| v.cloned().collect())
            .unwrap_or_default()
    };
    FilterArgs {
        pid: one("pid"),
        comm: one("comm"),
        uid: one("uid"),
        cgroup: many("cgroup"),
        container: one("container"),
        pod: one("pod"),
        namespace: one("namespace"),
        netns: many("netns"),
        port: many("port"),
        addr: many("addr"),
        // Only `kubectl plumb -l` makes a pod selection, per node.
        pods: Vec::new(),
    }
}

/// `-o`, `--fields`, `--duration`, `--max-events`, `--summary`.
pub fn output_args() -> Vec<Arg> {
    vec![
        Arg::new("output")
            .short('o')
            .long("output")
            .value_name("FORMAT")
            .value_parser(["columns", "json"])
            .default_value("columns")
            .help("columns: an aligned table; json: one object per line"),
        Arg::new("fields")
            .long("fields")
            .value_name("a,b,c")
            .help("Only these keys (columns or JSON keys)"),
        Arg::new("duration")
            .long("duration")
            .value_name("TIME")
            .value_parser(parse_duration)
            .help("Stop after this long (10s, 2m, 1h)"),
        Arg::new("max-events")
            .long("max-events")
            .value_name("N")
            .value_parser(clap::value_parser!(u64).range(1..))
            .help("Stop after N events"),
        Arg::new("summary")
            .long("summary")
            .value_name("INTERVAL")
            .value_parser(parse_duration)
            .help("Print counts per key every INTERVAL instead of one line per event"),
        Arg::new("buffer")
            .long("buffer")
            .value_name("SIZE")
            .value_parser(parse_ring_size)
            .help("Size of the kernel's ring buffer (a power of two: 64K, 4M; default 4M, which holds the benchmark's unthrottled drop storm without loss). A larger buffer costs that much locked kernel memory and rides out longer bursts when the reader falls behind; records that do not fit are counted as lost, never dropped silently. drop --summary counts in the kernel and needs no large buffer"),
    ]
}

/// A ring buffer size: a power of two of at least one page, `K`/`M`/`G` suffixes allowed.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a size (like 64K or 4M)"))?;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if !n.is_power_of_two() || n < page || n > 1 << 30 {
        return Err(format!(
            "'{s}' must be a power of two between the page size ({page} bytes) and 1G"
        ));
    }
    Ok(n as u32)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration (like 10s, 500ms, 2m): {e}"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Output options as parsed.
#[derive(Debug, Clone)]
pub struct OutputOpts {
    pub json: bool,
    pub fields: Vec<String>,
    pub duration: Option<Duration>,
    pub max_events: Option<u64>,
    pub summary: Option<Duration>,
    /// Ring buffer size in bytes (`--buffer`), when given.
    pub buffer: Option<u32>,
}

impl OutputOpts {
    /// How the sinks print, for records of this host (`node_column`
    /// false) or of many nodes.
    pub fn spec(&self, node_column: bool) -> OutputSpec {
        OutputSpec {
            json: self.json,
            fields: self.fields.clone(),
            summary: self.summary,
            node_column,
            width: terminal_width(),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            duration: self.duration,
            max_events: self.max_events,
            ring_bytes: self.buffer,
        }
    }
}

pub fn output_from(m: &ArgMatches) -> OutputOpts {
    let get = |k: &str| m.try_get_one::<String>(k).ok().flatten();
    OutputOpts {
        json: get("output").map(String::as_str) == Some("json"),
        fields: get("fields")
            .map(|f| {
                f.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        duration: m
            .try_get_one::<Duration>("duration")
            .ok()
            .flatten()
            .copied(),
        max_events: m.try_get_one::<u64>("max-events").ok().flatten().copied(),
        summary: m.try_get_one::<Duration>("summary").ok().flatten().copied(),
        buffer: m.try_get_one::<u32>("buffer").ok().flatten().copied(),
    }
}

/// Width of the terminal on stdout, if stdout is one.
pub fn terminal_width() -> Option<usize> {
    if !io::stdout().is_terminal() {
        return None;
    }
    // SAFETY: TIOCGWINSZ fills a winsize struct; stdout is a terminal.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0)
            .then_some(ws.ws_col as usize)
    }
}

/// A flag set by SIGINT and SIGTERM.
pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
pub fn print_stdout(s: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
