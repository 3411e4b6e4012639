//! The disk buffer's on-disk format, version 2: segment headers and record frames here;
//! the encoding of one event in [`record`], its primitives in [`wire`].
//!
//! The format is written down here, once, and owes nothing to the in-memory
//! [`Event`](crate::event::Event)
//! layout: a record is encoded part by part, so changing `Event` (a new field, another
//! map type) cannot silently change what old segments mean. A new format is a new
//! [`FORMAT_VERSION`] in the segment header; a reader refuses versions it does not know
//! instead of guessing. Version 1 (2026-12-01, never released) wrote every optional
//! metadata part, the full event time and 8 bytes per double; version 2 made a reading of
//! four fields about a quarter smaller, which is most of what a buffer on a disk that
//! syncs ~100 MiB/s can take.
//!
//! ```text
//! segment  = header frame*
//! header   = "WEIRBUF\0" version:u16le flags:u16le first_seq:u64le crc:u32le   (24 bytes)
//! frame    = len:u32le crc:u32le payload[len]      crc = CRC-32C(len ++ payload)
//! payload  = meta_len:varint meta device_id:opt_str time fields
//! meta     = parts:u8 source:str received_at:ts [topic:str] [routing_key:str]
//!            [headers:varint (str str)*] [trace_id:str] [error:str str]
//!            (parts: bits 0..4 say which of the bracketed parts follow, in this order)
//! time     = 0 (= received_at) | 1 zigzag-varint (nanoseconds after received_at) | 2 ts
//! fields   = varint (str value)*
//! ts       = seconds:zigzag-varint nanos:zigzag-varint
//! value    = 0 null | 1 false | 2 true | 3 zigzag-varint i64 | 4 varint u64
//!          | 5 f64le | 6 str | 7 varint value* | 8 fields
//!          | 16+k zigzag-varint m   (the double m / 10^k, k <= 15; see wire.rs)
//! str      = varint-len utf8          opt_str = 0 | 1 str
//! ```
//!
//! The metadata is one length-prefixed block so a reader can tell, by comparing bytes,
//! that consecutive records share it (one HTTP request's readings do) and share one
//! `EventMeta` again instead of one copy per event.

mod record;
mod wire;

use crc::{CRC_32_ISCSI, Crc, Table};

#[cfg(test)]
pub use record::write_frame;
pub use record::{Decoder, Encoder};
use wire::{eight, four};

/// The version this code writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 2;
const MAGIC: &[u8; 8] = b"WEIRBUF\0";
/// Bytes of a segment header.
pub const HEADER_LEN: usize = 24;
/// Bytes of a frame before its payload.
pub const FRAME_LEN: usize = 8;
/// A record longer than this is not something weir wrote: the frame is corrupt.
pub const MAX_RECORD: usize = 256 * 1024 * 1024;
/// Nesting deeper than this is refused while decoding (a corrupt record must not
/// exhaust the stack).
const MAX_DEPTH: usize = 128;

static CRC32C: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

/// Why bytes on disk are not a valid record or header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the file ends inside a record (a torn write)")]
    Torn,
    #[error("checksum mismatch")]
    Checksum,
    #[error("record length {0} is out of range")]
    Length(usize),
    #[error("not a weir buffer segment")]
    Magic,
    #[error(
        "segment format version {0} is not supported (this weir reads version {FORMAT_VERSION})"
    )]
    Version(u16),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// A segment's header: its format version and the sequence number of its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_seq: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // flags: none defined in version 2.
        out[12..20].copy_from_slice(&self.first_seq.to_le_bytes());
        let crc = CRC32C.checksum(&out[..20]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let bytes: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(FormatError::Torn)?;
        if &bytes[..8] != MAGIC {
            return Err(FormatError::Magic);
        }
        if CRC32C.checksum(&bytes[..20]) != u32::from_le_bytes(four(&bytes[20..24])) {
            return Err(FormatError::Checksum);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        Ok(Self {
            first_seq: u64::from_le_bytes(eight(&bytes[12..20])),
        })
    }
}

/// The CRC-32C of `bytes` (the checksum of frames, headers and the ack file).
pub fn checksum(bytes: &[u8]) -> u32 {
    CRC32C.checksum(bytes)
}

/// Fills in the frame header (length, checksum) of the frame whose payload follows
/// `out[start..start + FRAME_LEN]`; returns the frame's length.
fn seal_frame(out: &mut [u8], start: usize) -> usize {
    let len = (out.len() - start - FRAME_LEN) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let mut digest = CRC32C.digest();
    digest.update(&len.to_le_bytes());
    digest.update(&out[start + FRAME_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&digest.finalize().to_le_bytes());
    out.len() - start
}

/// The payload of the frame at the start of `bytes`, checked; with the frame's length.
pub fn read_frame(bytes: &[u8]) -> Result<(&[u8], usize), FormatError> {
    let head = bytes.get(..FRAME_LEN).ok_or(FormatError::Torn)?;
    let len = u32::from_le_bytes(four(&head[..4])) as usize;
    if len == 0 || len > MAX_RECORD {
        return Err(FormatError::Length(len));
    }
    let payload = bytes
        .get(FRAME_LEN..FRAME_LEN + len)
        .ok_or(FormatError::Torn)?;
    let mut digest = CRC32C.digest();
    digest.update(&head[..4]);
    digest.update(payload);
    if digest.finalize() != u32::from_le_bytes(four(&head[4..8])) {
        return Err(FormatError::Checksum);
    }
    Ok((payload, FRAME_LEN + len))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jiff::Timestamp;
    use serde_json::Value;

    use super::*;
    use crate::event::{Event, EventError, EventMeta};
    use serde_json::json;

    fn event() -> Event {
        let mut meta =
            EventMeta::received_at(Arc::from("http"), Timestamp::new(1_700_000_000, 5).unwrap());
        meta.topic = Some("devices/a/telemetry".into());
        meta.headers = vec![("x-trace".into(), "1".into())];
        meta.error = Some(EventError {
            component: Arc::from("lake"),
            message: "no".into(),
        });
        let fields = match json!({
            "temperature": 21.5, "count": -3, "big": u64::MAX, "ok": true, "none": null,
            "tags": ["a", 1, {"b": false}], "nested": {"x": "y"}
        }) {
            Value::Object(fields) => fields,
            _ => unreachable!(),
        };
        let mut event = Event::new(Some(Arc::from("pump-7")), fields, Arc::new(meta));
        event.time = Timestamp::new(-5, -7).unwrap();
        event
    }

    #[test]
    fn a_record_round_trips_every_part_of_an_event() {
        let original = event();
        let mut out = Vec::new();
        let len = write_frame(&original, &mut out);
        assert_eq!(len, out.len());
        let (payload, consumed) = read_frame(&out).unwrap();
        assert_eq!(consumed, len);
        let decoded = Decoder::default().decode(payload).unwrap();
        assert_eq!(decoded, original);
        let keys: Vec<_> = decoded.fields().keys().collect();
        let want: Vec<_> = original.fields().keys().collect();
        assert_eq!(keys, want, "field order is kept");
    }

    #[test]
    fn every_kind_of_event_time_round_trips() {
        let received = Timestamp::new(1_800_000_000, 123_456_789).unwrap();
        let meta = Arc::new(EventMeta::received_at(Arc::from("http"), received));
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        let mut ends = Vec::new();
        let times = [
            received,
            Timestamp::new(1_799_999_990, 5).unwrap(),
            Timestamp::new(1_800_000_001, 0).unwrap(),
            Timestamp::MIN,
            Timestamp::MAX,
        ];
        for time in times {
            let mut event = Event::new(None, Default::default(), Arc::clone(&meta));
            event.time = time;
            encoder.frame(&event, &mut out);
            ends.push(out.len());
        }
        let mut decoder = Decoder::default();
        let mut at = 0;
        for (time, end) in times.into_iter().zip(ends) {
            let (payload, n) = read_frame(&out[at..]).unwrap();
            assert_eq!(at + n, end);
            assert_eq!(decoder.decode(payload).unwrap().time, time);
            at = end;
        }
    }

    #[test]
    fn one_encoder_follows_a_change_of_metadata() {
        let a = event();
        let mut other = a.meta().clone();
        other.topic = None;
        other.trace_id = Some("abc".into());
        let b = Event::new(None, a.fields().clone(), Arc::new(other));
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        let first = encoder.frame(&a, &mut out);
        encoder.frame(&b, &mut out);
        encoder.frame(&a, &mut out);
        let mut decoder = Decoder::default();
        let mut at = 0;
        for want in [&a, &b, &a] {
            let (payload, n) = read_frame(&out[at..]).unwrap();
            assert_eq!(decoder.decode(payload).unwrap().meta(), want.meta());
            at += n;
        }
        assert_eq!(at, out.len());
        assert!(first > 0);
    }

    /// A reading as the http source makes it from `weir-load`'s body: the size the disk
    /// buffer bench and `http_delta` report per reading (version 1 wrote 116 bytes).
    #[test]
    fn a_typical_reading_is_small() {
        let meta = Arc::new(EventMeta::received_at(
            Arc::from("devices"),
            Timestamp::new(1_800_000_000, 123_456_789).unwrap(),
        ));
        let fields = match json!({
            "seq": 1_234_567, "temperature": 80.5, "vibration": 0.13, "ts": 1_800_000_000_123u64
        }) {
            Value::Object(fields) => fields,
            _ => unreachable!(),
        };
        let event = Event::new(Some(Arc::from("load-000123")), fields, meta);
        let mut out = Vec::new();
        let len = write_frame(&event, &mut out);
        assert!(len <= 90, "{len} bytes");
        let decoded = Decoder::default()
            .decode(read_frame(&out).unwrap().0)
            .unwrap();
        assert_eq!(decoded, event);
    }

    #[test]
    fn consecutive_records_share_their_metadata() {
        let (a, b) = (event(), event());
        let mut out = Vec::new();
        let first = write_frame(&a, &mut out);
        write_frame(&b, &mut out);
        let mut decoder = Decoder::default();
        let x = decoder.decode(read_frame(&out).unwrap().0).unwrap();
        let y = decoder
            .decode(read_frame(&out[first..]).unwrap().0)
            .unwrap();
        assert!(std::ptr::eq(x.meta(), y.meta()));
    }

    #[test]
    fn a_flipped_bit_or_a_short_frame_is_detected() {
        let mut out = Vec::new();
        write_frame(&event(), &mut out);
        for cut in 0..out.len() {
            assert_eq!(read_frame(&out[..cut]).err(), Some(FormatError::Torn));
        }
        let mut bad = out.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(read_frame(&bad).err(), Some(FormatError::Checksum));
        let mut bad_len = out.clone();
        bad_len[0] ^= 1;
        assert!(read_frame(&bad_len).is_err());
    }

    #[test]
    fn headers_are_checked() {
        let header = SegmentHeader { first_seq: 42 }.encode();
        assert_eq!(
            SegmentHeader::decode(&header),
            Ok(SegmentHeader { first_seq: 42 })
        );
        let mut other = header;
        other[8] = 3;
        assert_eq!(SegmentHeader::decode(&other), Err(FormatError::Checksum));
        // A version 1 segment (records laid out differently) is refused, not misread.
        let mut version_1 = header;
        version_1[8..10].copy_from_slice(&1u16.to_le_bytes());
        let crc = checksum(&version_1[..20]);
        version_1[20..24].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&version_1),
            Err(FormatError::Version(1))
        );
        assert_eq!(SegmentHeader::decode(&header[..10]), Err(FormatError::Torn));
        assert_eq!(
            SegmentHeader::decode(&[0; HEADER_LEN]),
            Err(FormatError::Magic)
        );
    }

    #[test]
    fn garbage_with_a_valid_checksum_is_refused_not_a_panic() {
        for payload in [
            &[0u8][..],
            &[5, 1, 2],
            &[200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 1],
        ] {
            assert!(Decoder::default().decode(payload).is_err());
        }
    }
}
