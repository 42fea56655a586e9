//! A capture run: every socket polled from one thread, each ready block
//! read in place, packets handed to a sink in timestamp order, until the
//! caller stops it or a limit is reached; then the kernel's counts.
//!
//! With one socket, packets go to the sink straight from the ring. With
//! several, the kernel hands each socket's blocks over independently (a
//! block that is not full waits for its retire timeout), so packets are
//! copied out and held for a little longer than that timeout, and let go
//! in timestamp order.

use crate::error::{Error, Result};
use crate::order::TimeOrder;
use crate::point::{self, Place, Point, Spec};
use crate::ring::{Counts, Packet, Ring};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// When a capture stops by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub duration: Option<Duration>,
    pub packets: Option<u64>,
    /// Captured bytes (what is kept of each packet).
    pub bytes: Option<u64>,
}

/// A size: bytes, or with a unit (k, M, G are powers of 1000; KiB, MiB,
/// GiB of 1024; a trailing B is optional).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 65536, 10MB or 4MiB)"))?;
    let mult: u64 = match unit.trim().trim_end_matches(['B', 'b']) {
        "" => 1,
        "k" | "K" => 1000,
        "M" | "m" => 1000 * 1000,
        "G" | "g" => 1000 * 1000 * 1000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit (use k, M, G, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Where packets go.
pub trait Sink {
    /// A packet of point number `point`.
    fn packet(&mut self, point: usize, p: &Packet<'_>) -> Result<()>;
    /// The end of a batch: write out what is buffered.
    fn flush(&mut self) -> Result<()>;
}

/// Why a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Stopped,
    Duration,
    MaxPackets,
    MaxBytes,
    /// The reader of the output went away (a closed pipe).
    OutputClosed,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Stopped => "stopped",
            Ended::Duration => "duration",
            Ended::MaxPackets => "max-packets",
            Ended::MaxBytes => "max-bytes",
            Ended::OutputClosed => "output-closed",
        }
    }
}

/// One point's figures at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PointStats {
    pub kernel: Counts,
    pub delivered: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub points: Vec<PointStats>,
    pub packets: u64,
    pub bytes: u64,
    pub ended: Ended,
}

impl Summary {
    pub fn dropped(&self) -> u64 {
        self.points.iter().map(|p| p.kernel.dropped).sum()
    }

    /// Packets the kernel queued that were not written because a limit
    /// stopped the capture first.
    pub fn left(&self) -> u64 {
        let received: u64 = self.points.iter().map(|p| p.kernel.received).sum();
        received.saturating_sub(self.dropped() + self.packets)
    }
}

/// A packet copied out of its ring, waiting for its turn.
struct Held {
    point: usize,
    len: u32,
    outgoing: bool,
    data: Vec<u8>,
}

/// Sockets open on every point, not yet read.
pub struct Capture {
    points: Vec<Point>,
    rings: Vec<Ring>,
    retire: Duration,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The running state of a capture's sink side.
struct Out<'a> {
    sink: &'a mut dyn Sink,
    limits: Limits,
    packets: u64,
    bytes: u64,
    delivered: Vec<u64>,
    ended: Option<Ended>,
    error: Option<Error>,
}

impl Out<'_> {
    /// Give one packet to the sink unless a limit is reached; false: stop.
    fn give(&mut self, point: usize, p: &Packet<'_>) -> bool {
        if self.ended.is_some() || self.error.is_some() {
            return false;
        }
        if self.limits.packets.is_some_and(|m| self.packets >= m) {
            self.ended = Some(Ended::MaxPackets);
            return false;
        }
        if self
            .limits
            .bytes
            .is_some_and(|m| self.bytes + p.data.len() as u64 > m)
        {
            self.ended = Some(Ended::MaxBytes);
            return false;
        }
        match self.sink.packet(point, p) {
            Ok(()) => {
                self.packets += 1;
                self.bytes += p.data.len() as u64;
                self.delivered[point] += 1;
                if self.limits.packets.is_some_and(|m| self.packets >= m) {
                    self.ended = Some(Ended::MaxPackets);
                }
                true
            }
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    fn fail(&mut self, e: Error) {
        match &e {
            Error::Write(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {
                self.ended = Some(Ended::OutputClosed)
            }
            _ => self.error = Some(e),
        }
    }

    fn flush(&mut self) {
        if self.error.is_none() && self.ended != Some(Ended::OutputClosed) {
            if let Err(e) = self.sink.flush() {
                self.fail(e);
            }
        }
    }
}

impl Capture {
    /// Open a socket on every interface of every place.
    pub fn open(places: &[Place], spec: &Spec) -> Result<Capture> {
        let (points, rings) = point::open(places, spec)?.into_iter().unzip();
        Ok(Capture {
            points,
            rings,
            retire: Duration::from_millis(u64::from(spec.ring.retire_ms)),
        })
    }

    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// Read until `stop` is set or a limit is reached.
    pub fn run(
        &mut self,
        sink: &mut dyn Sink,
        limits: Limits,
        stop: &AtomicBool,
    ) -> Result<Summary> {
        let start = Instant::now();
        let deadline = limits.duration.map(|d| start + d);
        let mut out = Out {
            sink,
            limits,
            packets: 0,
            bytes: 0,
            delivered: vec![0; self.rings.len()],
            ended: None,
            error: None,
        };
        let mut held = TimeOrder::default();
        let hold = self.retire + Duration::from_millis(30);
        let mut fds: Vec<libc::pollfd> = self
            .rings
            .iter()
            .map(|r| libc::pollfd {
                fd: r.fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            })
            .collect();
        loop {
            if stop.load(Ordering::Relaxed) {
                out.ended.get_or_insert(Ended::Stopped);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                out.ended.get_or_insert(Ended::Duration);
            }
            if out.ended.is_some() || out.error.is_some() {
                break;
            }
            let wait = deadline
                .map_or(Duration::from_millis(100), |d| {
                    d.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(100));
            // SAFETY: fds is a live array of pollfd of the length passed.
            unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    wait.as_millis() as i32,
                )
            };
            self.drain(&mut out, &mut held, Some(hold));
        }
        // Packets already queued when the capture was stopped are read:
        // the last, partly filled block is handed over at its retire timeout.
        if matches!(out.ended, Some(Ended::Stopped | Ended::Duration)) {
            std::thread::sleep(self.retire + Duration::from_millis(10));
            let ended = out.ended.take();
            self.drain(&mut out, &mut held, None);
            out.ended = out.ended.or(ended);
        } else {
            self.drain(&mut out, &mut held, None);
        }
        out.flush();
        if let Some(e) = out.error {
            return Err(e);
        }
        let points = self
            .rings
            .iter_mut()
            .zip(&out.delivered)
            .map(|(r, &d)| PointStats {
                kernel: r.counts(),
                delivered: d,
            })
            .collect();
        Ok(Summary {
            points,
            packets: out.packets,
            bytes: out.bytes,
            ended: out.ended.unwrap_or(Ended::Stopped),
        })
    }

    /// Read every ready block; with several sockets, let go of held
    /// packets older than `hold` (all of them when None).
    fn drain(&mut self, out: &mut Out<'_>, held: &mut TimeOrder<Held>, hold: Option<Duration>) {
        let direct = self.rings.len() == 1;
        for (i, ring) in self.rings.iter_mut().enumerate() {
            while ring.ready() {
                if out.ended.is_some() || out.error.is_some() {
                    // Stopped by a limit: leave the rest in the ring (the
                    // kernel counted it as received; the summary says how
                    // many were left).
                    return;
                }
                if direct {
                    ring.next_block(|p| out.give(i, &p));
                } else {
                    ring.next_block(|p| {
                        let h = Held {
                            point: i,
                            len: p.len,
                            outgoing: p.outgoing,
                            data: p.data.to_vec(),
                        };
                        held.push(p.ts_ns, h);
                        true
                    });
                }
            }
        }
        let until = hold.map_or(u64::MAX, |h| now_ns().saturating_sub(h.as_nanos() as u64));
        while let Some((ts, h)) = held.pop_until(until) {
            let p = Packet {
                ts_ns: ts,
                len: h.len,
                data: &h.data,
                outgoing: h.outgoing,
            };
            if !out.give(h.point, &p) {
                break;
            }
        }
        out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_and_without_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("2k"), Ok(2000));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
