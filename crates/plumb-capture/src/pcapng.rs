//! The pcapng file: one section, an interface block for each capture
//! point (its name, and a description naming the node, the network
//! namespace and the pod), an enhanced packet block per packet with a
//! comment saying the same and the direction, and at the end a statistics
//! block per interface with the kernel's receive and drop counts.
//!
//! Blocks are encoded by the `pcap-file` crate into a buffer that goes out
//! in one write per batch, and at the latest once it holds [`CHUNK`]
//! bytes (always after a whole block), so that a capture stopped between
//! writes (a signal, a limit, a reader that went away) leaves only whole
//! blocks behind. The chunk is small enough to still be in the CPU's cache
//! when the kernel copies it: a megabyte buffer made the copy into the
//! page cache plumb's main cost.

use crate::error::{Error, Result};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};
use std::borrow::Cow;
use std::io::Write;

/// What the file says about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// LINKTYPE_* number.
    pub linktype: u16,
    pub snaplen: u32,
    /// `node node-1, netns lab-a, pod shop/web-1`.
    pub description: String,
    /// The filter expression, as given.
    pub filter: String,
}

/// The kernel's counts for one interface, for its statistics block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub dropped: u64,
    pub delivered: u64,
}

fn werr(e: pcap_file::PcapError) -> Error {
    match e {
        pcap_file::PcapError::IoError(io) => Error::Write(io),
        other => Error::Write(std::io::Error::other(other.to_string())),
    }
}

/// A packet block's options, encoded ([`Writer::packet_options`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options(Vec<u8>);

/// Write out at this many buffered bytes.
pub const CHUNK: usize = 16 << 10;

pub struct Writer<W: Write> {
    out: W,
    enc: PcapNgWriter<Vec<u8>>,
}

impl<W: Write> Writer<W> {
    /// A new file on `out`: its section header is written at once.
    pub fn new(out: W, application: &str) -> Result<Writer<W>> {
        let shb = SectionHeaderBlock {
            endianness: Endianness::native(),
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(
                application.to_string(),
            ))],
            ..SectionHeaderBlock::default()
        };
        let enc =
            PcapNgWriter::with_section_header(Vec::with_capacity(1 << 20), shb).map_err(werr)?;
        let mut w = Writer { out, enc };
        w.flush()?;
        Ok(w)
    }

    /// Add an interface; its id is the number of interfaces before it.
    pub fn interface(&mut self, i: &Interface) -> Result<u32> {
        let id = self.enc.interfaces().len() as u32;
        let mut filter = vec![0u8];
        filter.extend_from_slice(i.filter.as_bytes());
        let mut options = vec![
            InterfaceDescriptionOption::IfName(Cow::Owned(i.name.clone())),
            InterfaceDescriptionOption::IfDescription(Cow::Owned(i.description.clone())),
            InterfaceDescriptionOption::IfTsResol(9),
        ];
        if !i.filter.is_empty() {
            options.push(InterfaceDescriptionOption::IfFilter(Cow::Owned(filter)));
        }
        self.enc
            .write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::from(u32::from(i.linktype)),
                snaplen: i.snaplen,
                options,
            })
            .map_err(werr)?;
        Ok(id)
    }

    /// The options of a packet's block (its comment, its direction in
    /// epb_flags), encoded once for all the packets that share them: pass
    /// them to [`Writer::packet`].
    pub fn packet_options(&self, comment: &str, outgoing: bool) -> Options {
        // epb_flags: bits 0-1 are the direction, 1 inbound, 2 outbound.
        let flags: u32 = if outgoing { 2 } else { 1 };
        let mut b = Vec::with_capacity(comment.len() + 20);
        let opt = |b: &mut Vec<u8>, code: u16, v: &[u8]| {
            b.extend_from_slice(&code.to_ne_bytes());
            b.extend_from_slice(&(v.len() as u16).to_ne_bytes());
            b.extend_from_slice(v);
            b.resize(b.len().next_multiple_of(4), 0);
        };
        // A comment longer than an option can hold is cut (at a char boundary).
        let mut end = comment.len().min(u16::MAX as usize - 3);
        while !comment.is_char_boundary(end) {
            end -= 1;
        }
        opt(&mut b, 1, &comment.as_bytes()[..end]);
        opt(&mut b, 2, &flags.to_ne_bytes());
        opt(&mut b, 0, &[]);
        Options(b)
    }

    /// Add a packet (to the buffer; written out at [`CHUNK`] bytes and by
    /// [`Writer::flush`]). The hot path of a capture: its enhanced packet
    /// block is laid out here (in the section's native byte order) with
    /// options encoded beforehand, with no allocation per packet.
    pub fn packet(
        &mut self,
        iface: u32,
        ts_ns: u64,
        len: u32,
        data: &[u8],
        opts: &Options,
    ) -> Result<()> {
        let padded = data.len().next_multiple_of(4);
        let total = (32 + padded + opts.0.len()) as u32;
        let b = self.enc.get_mut();
        b.reserve(total as usize);
        b.extend_from_slice(&6u32.to_ne_bytes());
        b.extend_from_slice(&total.to_ne_bytes());
        b.extend_from_slice(&iface.to_ne_bytes());
        b.extend_from_slice(&((ts_ns >> 32) as u32).to_ne_bytes());
        b.extend_from_slice(&(ts_ns as u32).to_ne_bytes());
        b.extend_from_slice(&(data.len() as u32).to_ne_bytes());
        b.extend_from_slice(&len.to_ne_bytes());
        b.extend_from_slice(data);
        b.resize(b.len() + padded - data.len(), 0);
        b.extend_from_slice(&opts.0);
        b.extend_from_slice(&total.to_ne_bytes());
        if b.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    /// The statistics block of interface `iface`, at `ts_ns`.
    pub fn stats(&mut self, iface: u32, ts_ns: u64, s: Stats) -> Result<()> {
        self.enc
            .write_pcapng_block(InterfaceStatisticsBlock {
                interface_id: iface,
                timestamp: ts_ns,
                options: vec![
                    InterfaceStatisticsOption::IsbIfRecv(s.received),
                    InterfaceStatisticsOption::IsbIfDrop(s.dropped),
                    InterfaceStatisticsOption::IsbUsrDeliv(s.delivered),
                ],
            })
            .map_err(werr)?;
        Ok(())
    }

    /// Bytes waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.enc.get_ref().len()
    }

    /// Write out what is buffered, in one write.
    pub fn flush(&mut self) -> Result<()> {
        let buf = self.enc.get_mut();
        if !buf.is_empty() {
            self.out.write_all(buf).map_err(Error::Write)?;
            buf.clear();
        }
        self.out.flush().map_err(Error::Write)
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
    use pcap_file::pcapng::{Block, PcapNgReader};
    use std::time::Duration;

    #[test]
    fn what_is_written_reads_back_with_comments_flags_and_statistics() {
        let mut w = Writer::new(Vec::new(), "plumb test").unwrap();
        let id = w
            .interface(&Interface {
                name: "eth0".into(),
                linktype: 1,
                snaplen: 262144,
                description: "node n1, netns lab-a".into(),
                filter: "udp".into(),
            })
            .unwrap();
        let o = w.packet_options("pod a/b, out", true);
        w.packet(id, 1_700_000_000_123_456_789, 60, &[7u8; 42], &o)
            .unwrap();
        w.stats(
            id,
            1_700_000_001_000_000_000,
            Stats {
                received: 3,
                dropped: 2,
                delivered: 1,
            },
        )
        .unwrap();
        w.flush().unwrap();
        let bytes = w.get_ref().clone();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut seen = Vec::new();
        while let Some(b) = r.next_block() {
            seen.push(b.unwrap().into_owned());
        }
        let Block::EnhancedPacket(p) = &seen[1] else {
            panic!("{seen:?}")
        };
        assert_eq!(p.timestamp, Duration::from_nanos(1_700_000_000_123_456_789));
        assert_eq!((p.original_len, p.data.len()), (60, 42));
        assert!(p
            .options
            .contains(&EnhancedPacketOption::Comment("pod a/b, out".into())));
        assert!(p.options.contains(&EnhancedPacketOption::Flags(2)));
        let Block::InterfaceStatistics(s) = &seen[2] else {
            panic!("{seen:?}")
        };
        assert!(s.options.contains(&InterfaceStatisticsOption::IsbIfDrop(2)));
    }

    #[test]
    fn the_hand_laid_packet_block_is_byte_for_byte_what_pcap_file_writes() {
        let data = [1u8, 2, 3, 4, 5, 6, 7];
        let iface = Interface {
            name: "eth0".into(),
            linktype: 1,
            snaplen: 65535,
            description: "d".into(),
            filter: String::new(),
        };
        let mut ours = Writer::new(Vec::new(), "x").unwrap();
        ours.interface(&iface).unwrap();
        let o = ours.packet_options("node n, netns x, in", false);
        ours.packet(0, 1_234_567_890_987_654_321, 99, &data, &o)
            .unwrap();
        ours.flush().unwrap();
        let mut theirs = Writer::new(Vec::new(), "x").unwrap();
        theirs.interface(&iface).unwrap();
        theirs
            .enc
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(1_234_567_890_987_654_321),
                original_len: 99,
                data: Cow::Borrowed(&data[..]),
                options: vec![
                    EnhancedPacketOption::Comment(Cow::Borrowed("node n, netns x, in")),
                    EnhancedPacketOption::Flags(1),
                ],
            })
            .unwrap();
        theirs.flush().unwrap();
        assert_eq!(ours.get_ref(), theirs.get_ref());
    }
}
