//! `plumb capture`: packets of the selected pod, network namespace or
//! interface, filtered in the kernel by a tcpdump expression, written as
//! pcapng (a file, or `-` for `| tshark -r -`). The selection is resolved
//! here (pods through the runtime, as `plumb run` does); capturing and the
//! file are plumb-capture's.

use super::bpftrace::Usage;
use super::common;
use clap::Args;
use plumb_bpftrace::Context;
use plumb_capture::pcapng::{self, Interface, Writer};
use plumb_capture::ring::Packet;
use plumb_capture::{Capture, Limits, Place, Point, RingSize, Sink, Spec};
use plumb_core::enrich::cgroupfs::CgroupFs;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub const LONG_ABOUT: &str = "\
Capture packets into a pcapng file. EXPRESSION is tcpdump's filter language (pcap-filter(7)), \
compiled by libpcap and run in the kernel on each capture socket, so packets it rejects never \
reach plumb.

Without a selection, plumb captures on --interface of this host. With --pod (or --netns) it \
captures inside that pod's network namespace, on all its interfaces but loopback (or on \
--interface there); --node-side adds the node's end of each of the pod's veths, to tell \"left \
the pod\" from \"reached the node\". Each interface gets its own interface block; every packet's \
comment names the node, the network namespace, the pod and the direction. The kernel's drop \
counts go into each interface's statistics block and into the last line on stderr.

Examples:
  plumb capture --pod web-1 -n shop 'tcp port 8080' --duration 30s -w web.pcapng
  plumb capture -n shop -l app=checkout --node-side 'tcp port 8080' -w checkout.pcapng
  plumb capture --netns lab-a --node-side icmp -w - | tshark -r -
  plumb capture --interface eth0 'udp port 53' --max-packets 1000 -w dns.pcapng";

#[derive(Debug, Clone, Args)]
pub struct CaptureCmd {
    /// The filter expression (tcpdump's language); several words are joined.
    #[arg(value_name = "EXPRESSION")]
    pub expression: Vec<String>,
    /// Capture inside this pod's network namespace (on this node; with -n, in that namespace).
    #[arg(long, value_name = "NAME", conflicts_with = "netns")]
    pub pod: Option<String>,
    /// The pod's Kubernetes namespace (with -l: only pods of it).
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Every pod of this node with these labels (app=web,tier=db; asked of
    /// the container runtime, which holds the kubelet's copy of them).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", conflicts_with_all = ["pod", "netns"])]
    pub selector: Option<String>,
    /// Capture inside a network namespace: a name under /run/netns or a path (/proc/PID/ns/net).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// Only this interface (repeatable); without --pod or --netns, an interface of this host.
    #[arg(short = 'i', long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Also capture on the node's end of each captured veth.
    #[arg(long)]
    pub node_side: bool,
    #[command(flatten)]
    pub out: CaptureOut,
    /// The kernel ring of each capture socket (tcpdump's -B), e.g. 4MiB.
    #[arg(short = 'B', long, value_name = "SIZE", default_value = "4MiB",
          value_parser = plumb_capture::session::parse_size)]
    pub buffer_size: u64,
}

/// Where a capture goes and when it stops: the same for `plumb capture`
/// and `kubectl plumb capture`.
#[derive(Debug, Clone, Args)]
pub struct CaptureOut {
    /// The file to write, or - for stdout.
    #[arg(short = 'w', value_name = "FILE.pcapng|-", required = true)]
    pub write: String,
    /// Stop after this long (30s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many packets.
    #[arg(long, value_name = "N")]
    pub max_packets: Option<u64>,
    /// Stop before the captured bytes pass SIZE (bytes, or with k, M, G, KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", value_parser = plumb_capture::session::parse_size)]
    pub max_bytes: Option<u64>,
    /// Keep at most N bytes of each packet.
    #[arg(short = 's', long, value_name = "N", default_value_t = 262144,
          value_parser = clap::value_parser!(u32).range(1..=262144))]
    pub snaplen: u32,
}

impl CaptureOut {
    pub fn limits(&self) -> Limits {
        Limits {
            duration: self.duration,
            packets: self.max_packets,
            bytes: self.max_bytes,
        }
    }

    /// The output, opened (a file is created; `-` is stdout).
    pub fn open(&self) -> anyhow::Result<Box<dyn Write>> {
        if self.write == "-" {
            return Ok(Box::new(std::io::stdout()));
        }
        let f = std::fs::File::create(&self.write)
            .map_err(|e| Usage(format!("cannot write {}: {e}", self.write)))?;
        Ok(Box::new(f))
    }
}

/// `app=web,tier=db` as the label map the CRI filters on.
fn equality_selector(s: &str) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut m = std::collections::HashMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once("==")
            .or_else(|| part.split_once('='))
            .filter(|(k, _)| !k.ends_with('!'))
            .ok_or_else(|| {
                Usage(format!(
                    "-l {s}: on one node plumb selects by equality only (key=value,...); \
                     kubectl plumb capture takes any selector"
                ))
            })?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    if m.is_empty() {
        return Err(Usage(format!("-l {s:?}: an empty selector")).into());
    }
    Ok(m)
}

impl CaptureCmd {
    /// Where to capture: the pod, the pods the selector matches, the
    /// namespace, or this host's interfaces.
    fn places(&self) -> anyhow::Result<Vec<Place>> {
        if let Some(sel) = &self.selector {
            let labels = equality_selector(sel)?;
            let endpoints = super::trace::runtime_endpoints();
            let pods = plumb_cri::pods_with_labels(&endpoints, &labels, Duration::from_secs(5))
                .map_err(Usage)?;
            let pods: Vec<(String, String)> = pods
                .into_iter()
                .filter(|(ns, _)| self.namespace.as_ref().is_none_or(|n| n == ns))
                .collect();
            if pods.is_empty() {
                let within = self
                    .namespace
                    .as_ref()
                    .map_or(String::new(), |n| format!(" in namespace {n}"));
                return Err(Usage(format!("-l {sel}: no pod of this node matches{within}")).into());
            }
            return pods
                .iter()
                .map(|(ns, name)| self.pod_place(Some(ns), name))
                .collect();
        }
        if let Some(pod) = &self.pod {
            return Ok(vec![self.pod_place(self.namespace.as_deref(), pod)?]);
        }
        if self.namespace.is_some() {
            return Err(Usage("-n needs --pod or -l".to_string()).into());
        }
        self.place().map(|p| vec![p])
    }

    /// A pod of this node: its network namespace (refused when it is the
    /// node's own, as a hostNetwork pod's is).
    fn pod_place(&self, namespace: Option<&str>, pod: &str) -> anyhow::Result<Place> {
        let fs = CgroupFs::discover();
        let c = Context::of_pod(namespace, pod, fs.as_ref(), &super::trace::local_sources())?;
        let netns = PathBuf::from(format!("/proc/{}/ns/net", c.pid));
        let (ns, name) = c.pod.clone().unwrap_or_default();
        if plumb_capture::point::is_own_netns(&netns) {
            return Err(Usage(format!(
                "pod {ns}/{name} has no network namespace of its own (hostNetwork: it shares \
                 the node's); capture on the node with --interface"
            ))
            .into());
        }
        Ok(Place {
            netns: Some(netns),
            pod: c.pod,
            interfaces: self.interfaces.clone(),
            node_side: self.node_side,
        })
    }

    fn place(&self) -> anyhow::Result<Place> {
        if let Some(n) = &self.netns {
            plumb_core::filter::netns::resolve(n)?;
            let path = if n.contains('/') {
                PathBuf::from(n)
            } else {
                PathBuf::from(plumb_core::filter::netns::RUN_NETNS).join(n)
            };
            return Ok(Place {
                netns: Some(path),
                pod: None,
                interfaces: self.interfaces.clone(),
                node_side: self.node_side,
            });
        }
        if self.interfaces.is_empty() {
            return Err(
                Usage("say where to capture: --pod, --netns or --interface".to_string()).into(),
            );
        }
        if self.node_side {
            return Err(Usage("--node-side needs --pod, -l or --netns".to_string()).into());
        }
        Ok(Place {
            netns: None,
            pod: None,
            interfaces: self.interfaces.clone(),
            node_side: false,
        })
    }
}

/// Packets into the pcapng writer, each with its point's comment.
struct FileSink<W: Write> {
    w: Writer<W>,
    ids: Vec<u32>,
    /// (in, out) packet options (comment, direction) of each point.
    options: Vec<(pcapng::Options, pcapng::Options)>,
}

impl<W: Write> Sink for FileSink<W> {
    fn packet(&mut self, point: usize, p: &Packet<'_>) -> plumb_capture::Result<()> {
        let (i, o) = &self.options[point];
        let opts = if p.outgoing { o } else { i };
        self.w.packet(self.ids[point], p.ts_ns, p.len, p.data, opts)
    }

    fn flush(&mut self) -> plumb_capture::Result<()> {
        self.w.flush()
    }
}

/// The interface block of a point.
pub fn interface_of(p: &Point, snaplen: u32, expression: &str) -> Interface {
    Interface {
        name: p.interface.clone(),
        linktype: p.link.number(),
        snaplen,
        description: p.description(),
        filter: expression.to_string(),
    }
}

pub fn run(cmd: CaptureCmd, verbose: bool) -> anyhow::Result<()> {
    plumb_core::preflight::check_capabilities()?;
    let expression = cmd.expression.join(" ");
    let places = cmd.places()?;
    let spec = Spec {
        node: plumb_core::runner::node_name(),
        expression: expression.clone(),
        snaplen: cmd.out.snaplen,
        ring: RingSize::of_bytes(cmd.buffer_size as usize),
    };
    let stop = common::stop_on_signals()?;
    // The sockets first (a bad expression or place stops here, before a
    // file is made), then the output.
    let mut cap = Capture::open(&places, &spec).map_err(CaptureFailed)?;
    let out = cmd.out.open()?;
    let mut w =
        Writer::new(out, &format!("plumb {}", env!("CARGO_PKG_VERSION"))).map_err(CaptureFailed)?;
    let mut ids = Vec::new();
    for p in cap.points() {
        ids.push(w.interface(&interface_of(p, cmd.out.snaplen, &expression))?);
        if verbose {
            eprintln!("plumb: capturing on {} ({})", p.interface, p.description());
        }
    }
    let options = cap
        .points()
        .iter()
        .map(|p| {
            (
                w.packet_options(&p.comment(false), false),
                w.packet_options(&p.comment(true), true),
            )
        })
        .collect();
    let mut sink = FileSink { w, ids, options };
    sink.w.flush()?;
    let limits = cmd.out.limits();
    let s = cap.run(&mut sink, limits, &stop).map_err(CaptureFailed)?;
    let end = now_ns();
    if s.ended != plumb_capture::Ended::OutputClosed {
        for (i, st) in s.points.iter().enumerate() {
            sink.w.stats(
                sink.ids[i],
                end,
                pcapng::Stats {
                    received: st.kernel.received,
                    dropped: st.kernel.dropped,
                    delivered: st.delivered,
                },
            )?;
        }
        match sink.w.flush() {
            Err(plumb_capture::Error::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r.map_err(CaptureFailed)?,
        }
    }
    eprintln!("{}", end_line(&s, &limits));
    Ok(())
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `plumb: N packets, M dropped by the kernel`, and why it stopped.
pub fn end_line(s: &plumb_capture::Summary, l: &Limits) -> String {
    let mut line = format!(
        "plumb: {} packets, {} dropped by the kernel",
        s.packets,
        s.dropped()
    );
    use plumb_capture::Ended::*;
    let why = match s.ended {
        MaxPackets => l.packets.map(|n| format!("--max-packets {n}")),
        MaxBytes => l.bytes.map(|n| format!("--max-bytes {n}")),
        Duration => l
            .duration
            .map(|d| format!("--duration {}", humantime::format_duration(d))),
        OutputClosed => Some("the reader closed the output".to_string()),
        Stopped => None,
    };
    if let Some(w) = why {
        line.push_str(&format!(" (stopped by {w}"));
        if s.left() > 0 {
            line.push_str(&format!("; {} more were queued and not written", s.left()));
        }
        line.push(')');
    }
    line
}

/// A refusal by plumb-capture.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CaptureFailed(pub plumb_capture::Error);
