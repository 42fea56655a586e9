//! `kubectl plumb capture` and `plumb remote --agents ... capture`: one
//! capture on every node hosting a selected pod, merged into one pcapng
//! in timestamp order. Each node's interfaces get their own interface
//! blocks (their descriptions name the node); a packet is written once
//! every node still capturing has promised (by its watermark) to send
//! nothing older. The limits are sent to every agent (which caps them
//! with its own) and enforced here over the merged file as well.

use super::capture::{end_line, CaptureOut};
use super::remote::{others, SomeFailed};
use clap::Args;
use plumb_agent::client::capture::{fan_out, CapItem};
use plumb_agent::client::{ClientAuth, Deadlines, Target};
use plumb_agent::proto::{CaptureRequest, CapturedPacket, PodRef};
use plumb_capture::order::TimeOrder;
use plumb_capture::pcapng::{Interface, Options, Stats, Writer};
use plumb_capture::session::{PointStats, Summary};
use plumb_capture::{Ended, Limits};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct RemoteCaptureCmd {
    /// The filter expression (tcpdump's language); several words are joined.
    #[arg(value_name = "EXPRESSION")]
    pub expression: Vec<String>,
    /// The pod to capture (with `plumb remote`, asked of every agent;
    /// with kubectl, -l selects pods too).
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,
    /// The pods' Kubernetes namespace.
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Also capture on the node's end of each pod's veths.
    #[arg(long)]
    pub node_side: bool,
    #[command(flatten)]
    pub out: CaptureOut,
    /// The kernel ring of each capture socket on the nodes [default: the agent's].
    #[arg(short = 'B', long, value_name = "SIZE", value_parser = plumb_capture::session::parse_size)]
    pub buffer_size: Option<u64>,
    /// The agents' capture token (plumb agent --capture-token-file), sent
    /// as x-plumb-capture-token; a client certificate the agent names
    /// with --capture-subject needs none.
    #[arg(long, value_name = "FILE")]
    pub capture_token_file: Option<PathBuf>,
}

/// What is known of one node's capture.
#[derive(Default)]
struct Node {
    name: String,
    /// The file's id of each of its interfaces.
    ids: Vec<u32>,
    watermark: u64,
    capturing: bool,
    done: Option<plumb_agent::proto::CaptureDone>,
}

/// The merged file.
struct Merge<W: Write> {
    w: Writer<W>,
    /// (in, out) packet options (comment, direction) by file interface id.
    options: Vec<(Options, Options)>,
    /// Packets waiting for every node's watermark to pass them, with the
    /// file's interface id of each.
    held: TimeOrder<(u32, CapturedPacket)>,
    nodes: Vec<Node>,
    limits: Limits,
    packets: u64,
    bytes: u64,
    /// Packets that arrived older than one already written.
    late: u64,
    last_ts: u64,
    ended: Option<Ended>,
}

impl<W: Write> Merge<W> {
    /// Write every held packet no node can still precede (all with
    /// `everything`).
    fn release(&mut self, everything: bool) -> plumb_capture::Result<()> {
        let until = if everything {
            u64::MAX
        } else {
            self.nodes
                .iter()
                .filter(|n| n.capturing)
                .map(|n| n.watermark)
                .min()
                .unwrap_or(u64::MAX)
        };
        while self.ended.is_none() {
            let Some((ts, (iface, p))) = self.held.pop_until(until) else {
                break;
            };
            if self.limits.packets.is_some_and(|m| self.packets >= m) {
                self.ended = Some(Ended::MaxPackets);
                break;
            }
            if self
                .limits
                .bytes
                .is_some_and(|m| self.bytes + p.data.len() as u64 > m)
            {
                self.ended = Some(Ended::MaxBytes);
                break;
            }
            if ts < self.last_ts {
                self.late += 1;
            }
            self.last_ts = self.last_ts.max(ts);
            let (i, o) = &self.options[iface as usize];
            let opts = if p.outgoing { o } else { i };
            self.w.packet(iface, ts, p.len, &p.data, opts)?;
            self.packets += 1;
            self.bytes += p.data.len() as u64;
            if self.limits.packets.is_some_and(|m| self.packets >= m) {
                self.ended = Some(Ended::MaxPackets);
            }
        }
        self.w.flush()
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Run the capture on `targets`; `pods_of` gives each its pods.
pub async fn run(
    targets: &[Target],
    auth: &ClientAuth,
    d: Deadlines,
    cmd: RemoteCaptureCmd,
    pods_of: impl Fn(&Target) -> Vec<PodRef>,
    verbose: bool,
) -> anyhow::Result<()> {
    let expression = cmd.expression.join(" ");
    // The expression is checked here first, with the same libpcap, so a
    // typo is one line and no node is asked.
    plumb_capture::filter::compile(
        &expression,
        plumb_capture::filter::LinkType::Ethernet,
        262144,
    )?;
    let token = match &cmd.capture_token_file {
        Some(p) => Some(plumb_agent::auth::Token::from_file(p)?.as_str().to_string()),
        None => None,
    };
    let out = cmd.out.open()?;
    let limits = cmd.out.limits();
    let req = CaptureRequest {
        pods: Vec::new(),
        expression: expression.clone(),
        snaplen: cmd.out.snaplen,
        duration_ms: limits.duration.map_or(0, |d| d.as_millis() as u64),
        max_packets: limits.packets.unwrap_or(0),
        max_bytes: limits.bytes.unwrap_or(0),
        node_side: cmd.node_side,
        ring_bytes: cmd.buffer_size.unwrap_or(0),
    };
    let mut m = Merge {
        w: Writer::new(
            out,
            &format!(
                "plumb {} (kubectl plumb capture)",
                env!("CARGO_PKG_VERSION")
            ),
        )?,
        options: Vec::new(),
        held: TimeOrder::default(),
        nodes: targets
            .iter()
            .map(|t| Node {
                name: t.node_or_via().to_string(),
                capturing: true,
                ..Node::default()
            })
            .collect(),
        limits,
        packets: 0,
        bytes: 0,
        late: 0,
        last_ts: 0,
        ended: None,
    };
    let mut rx = fan_out(targets, auth, token, req, pods_of, d);
    let mut failed = 0usize;
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let mut interrupted = false;
    loop {
        let item = tokio::select! {
            i = rx.recv() => i,
            _ = int.recv() => { interrupted = true; None }
            _ = term.recv() => { interrupted = true; None }
        };
        let Some(item) = item else { break };
        let r = match item {
            CapItem::Started { target, started } => {
                let n = &mut m.nodes[target];
                n.name = started.node.clone();
                for i in &started.interfaces {
                    let id = m.w.interface(&Interface {
                        name: i.name.clone(),
                        linktype: i.linktype as u16,
                        snaplen: i.snaplen,
                        description: i.description.clone(),
                        filter: expression.clone(),
                    })?;
                    let opts = (
                        m.w.packet_options(&i.comment_in, false),
                        m.w.packet_options(&i.comment_out, true),
                    );
                    m.options.push(opts);
                    m.nodes[target].ids.push(id);
                    if verbose {
                        eprintln!("plumb: capturing on {} ({})", i.name, i.description);
                    }
                }
                m.w.flush()
            }
            CapItem::Packets { target, packets } => {
                let n = &mut m.nodes[target];
                let mut top = packets.watermark_ns;
                for p in packets.packets {
                    let Some(&iface) = n.ids.get(p.interface as usize) else {
                        continue;
                    };
                    top = top.max(p.ts_ns);
                    m.held.push(p.ts_ns, (iface, p));
                }
                n.watermark = n.watermark.max(top);
                m.release(false)
            }
            CapItem::Done { target, done } => {
                let n = &mut m.nodes[target];
                n.capturing = false;
                n.done = Some(done);
                m.release(false)
            }
            CapItem::Failed { target, error } => {
                failed += 1;
                m.nodes[target].capturing = false;
                eprintln!("plumb: {error}{}", others(targets));
                m.release(false)
            }
        };
        match r {
            Ok(()) => {}
            Err(plumb_capture::Error::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                m.ended = Some(Ended::OutputClosed);
            }
            Err(e) => return Err(e.into()),
        }
        if m.ended.is_some() || m.nodes.iter().all(|n| !n.capturing) {
            break;
        }
    }
    // Dropping the receiver cancels the calls still running: each agent
    // stops its capture.
    drop(rx);
    let closed = m.ended == Some(Ended::OutputClosed);
    if !closed {
        match m.release(true) {
            Err(plumb_capture::Error::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r?,
        }
    }
    let end = now_ns();
    let mut points = Vec::new();
    let mut unsent = 0;
    for n in &m.nodes {
        let Some(done) = &n.done else { continue };
        unsent += done.unsent;
        let mut node_points = Vec::new();
        for s in &done.stats {
            let st = PointStats {
                kernel: plumb_capture::ring::Counts {
                    received: s.received,
                    dropped: s.dropped,
                },
                delivered: s.delivered,
            };
            if let (Some(&id), false) = (n.ids.get(s.interface as usize), closed) {
                m.w.stats(
                    id,
                    end,
                    Stats {
                        received: s.received,
                        dropped: s.dropped,
                        delivered: s.delivered,
                    },
                )?;
            }
            node_points.push(st);
            points.push(st);
        }
        let node_summary = Summary {
            packets: done.packets,
            bytes: done.bytes,
            ended: parse_ended(&done.ended),
            points: node_points,
        };
        eprintln!(
            "{}",
            end_line(&node_summary, &limits).replacen(
                "plumb: ",
                &format!("plumb: node {}: ", n.name),
                1
            )
        );
    }
    if !closed {
        match m.w.flush() {
            Err(plumb_capture::Error::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r?,
        }
    }
    let total = Summary {
        packets: m.packets,
        bytes: m.bytes,
        ended: m.ended.unwrap_or(if interrupted {
            Ended::Stopped
        } else {
            Ended::Duration
        }),
        points,
    };
    let mut line = end_line(
        &Summary {
            ended: m.ended.unwrap_or(Ended::Stopped),
            ..total
        },
        &limits,
    );
    if unsent > 0 {
        line.push_str(&format!(
            "; {unsent} captured but not sent: this client read too slowly"
        ));
    }
    if m.late > 0 {
        line.push_str(&format!("; {} written out of time order", m.late));
    }
    if interrupted {
        let unknown = m.nodes.iter().filter(|n| n.done.is_none()).count();
        if unknown > 0 {
            line.push_str(&format!(
                " (interrupted: the kernel counts of {unknown} nodes are not known)"
            ));
        }
    }
    eprintln!("{line}");
    SomeFailed::check(failed, targets.len())
}

fn parse_ended(s: &str) -> Ended {
    match s {
        "duration" => Ended::Duration,
        "max-packets" => Ended::MaxPackets,
        "max-bytes" => Ended::MaxBytes,
        "output-closed" => Ended::OutputClosed,
        _ => Ended::Stopped,
    }
}
