//! The disk buffer's on-disk format, version 1: segment headers, record frames, and the
//! encoding of one event as a [`Record`].
//!
//! The format is written down here, once, and owes nothing to the in-memory [`Event`]
//! layout: a record is an explicit struct encoded field by field, so changing `Event` (a new
//! field, another map type) cannot silently change what old segments mean. A new format is
//! a new [`FORMAT_VERSION`] in the segment header; a reader refuses versions it does not
//! know instead of guessing.
//!
//! ```text
//! segment  = header frame*
//! header   = "WEIRBUF\0" version:u16le flags:u16le first_seq:u64le crc:u32le   (24 bytes)
//! frame    = len:u32le crc:u32le payload[len]      crc = CRC-32C(len ++ payload)
//! payload  = meta_len:varint meta device_id:opt_str time:ts fields:object
//! meta     = source:str received_at:ts topic:opt_str routing_key:opt_str
//!            headers:(varint (str str)*) trace_id:opt_str error:(0 | 1 str str)
//! ts       = seconds:zigzag-varint nanos:varint
//! value    = 0 null | 1 false | 2 true | 3 zigzag-varint i64 | 4 varint u64
//!          | 5 f64le | 6 str | 7 varint value* | 8 varint (str value)*
//! str      = varint-len utf8          opt_str = 0 | 1 str
//! ```
//!
//! The metadata is one length-prefixed block so a reader can tell, by comparing bytes,
//! that consecutive records share it (one HTTP request's readings do) and share one
//! `EventMeta` again instead of one copy per event.

use std::sync::Arc;

use crc::{CRC_32_ISCSI, Crc, Table};
use jiff::Timestamp;

use crate::event::{Event, EventError, EventMeta, Fields, Value};

/// The version this code writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;
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
        // flags: none defined in version 1.
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

fn four(b: &[u8]) -> [u8; 4] {
    let mut out = [0; 4];
    out.copy_from_slice(&b[..4]);
    out
}

fn eight(b: &[u8]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&b[..8]);
    out
}

/// Appends one framed record for `event` to `out`; returns the frame's length.
pub fn write_frame(event: &Event, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    Record::of(event).encode(out);
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

/// One event as the buffer stores it (format version 1).
pub struct Record<'a> {
    pub device_id: Option<&'a str>,
    pub time: Timestamp,
    pub source: &'a str,
    pub received_at: Timestamp,
    pub topic: Option<&'a str>,
    pub routing_key: Option<&'a str>,
    pub headers: &'a [(String, String)],
    pub trace_id: Option<&'a str>,
    pub error: Option<(&'a str, &'a str)>,
    pub fields: &'a Fields,
}

impl<'a> Record<'a> {
    pub fn of(event: &'a Event) -> Self {
        let meta = event.meta();
        Self {
            device_id: event.device_id.as_deref(),
            time: event.time,
            source: &meta.source,
            received_at: meta.received_at,
            topic: meta.topic.as_deref(),
            routing_key: meta.routing_key.as_deref(),
            headers: &meta.headers,
            trace_id: meta.trace_id.as_deref(),
            error: meta
                .error
                .as_ref()
                .map(|e| (&*e.component, e.message.as_str())),
            fields: event.fields(),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut meta = Vec::with_capacity(64);
        put_str(&mut meta, self.source);
        put_time(&mut meta, self.received_at);
        put_opt_str(&mut meta, self.topic);
        put_opt_str(&mut meta, self.routing_key);
        put_varint(&mut meta, self.headers.len() as u64);
        for (name, value) in self.headers {
            put_str(&mut meta, name);
            put_str(&mut meta, value);
        }
        put_opt_str(&mut meta, self.trace_id);
        match self.error {
            None => meta.push(0),
            Some((component, message)) => {
                meta.push(1);
                put_str(&mut meta, component);
                put_str(&mut meta, message);
            }
        }
        put_varint(out, meta.len() as u64);
        out.extend_from_slice(&meta);
        put_opt_str(out, self.device_id);
        put_time(out, self.time);
        put_object(out, self.fields);
    }
}

/// Turns payloads back into events, sharing metadata and device ids between consecutive
/// records that have the same ones.
#[derive(Default)]
pub struct Decoder {
    last_meta: Option<(Vec<u8>, Arc<EventMeta>)>,
    last_device: Option<Arc<str>>,
}

impl Decoder {
    pub fn decode(&mut self, payload: &[u8]) -> Result<Event, FormatError> {
        let mut r = Reader { bytes: payload };
        let meta_len = r.len()?;
        let meta_bytes = r.take(meta_len)?;
        let meta = match &self.last_meta {
            Some((bytes, meta)) if bytes.as_slice() == meta_bytes => Arc::clone(meta),
            _ => {
                let meta = Arc::new(decode_meta(meta_bytes)?);
                self.last_meta = Some((meta_bytes.to_vec(), Arc::clone(&meta)));
                meta
            }
        };
        let device_id = match r.opt_str()? {
            None => None,
            Some(id) => Some(match &self.last_device {
                Some(last) if &**last == id => Arc::clone(last),
                _ => {
                    let id: Arc<str> = Arc::from(id);
                    self.last_device = Some(Arc::clone(&id));
                    id
                }
            }),
        };
        let time = r.time()?;
        let fields = match r.value(0)? {
            Value::Object(fields) => fields,
            _ => return Err(FormatError::Malformed("the fields are not an object")),
        };
        if !r.bytes.is_empty() {
            return Err(FormatError::Malformed("trailing bytes"));
        }
        let mut event = Event::new(device_id, fields, meta);
        event.time = time;
        Ok(event)
    }
}

fn decode_meta(bytes: &[u8]) -> Result<EventMeta, FormatError> {
    let mut r = Reader { bytes };
    let source: Arc<str> = Arc::from(r.str()?);
    let mut meta = EventMeta::received_at(source, r.time()?);
    meta.topic = r.opt_str()?.map(str::to_owned);
    meta.routing_key = r.opt_str()?.map(str::to_owned);
    let headers = r.len()?;
    for _ in 0..headers {
        let name = r.str()?.to_owned();
        meta.headers.push((name, r.str()?.to_owned()));
    }
    meta.trace_id = r.opt_str()?.map(str::to_owned);
    meta.error = match r.byte()? {
        0 => None,
        1 => Some(EventError {
            component: Arc::from(r.str()?),
            message: r.str()?.to_owned(),
        }),
        _ => return Err(FormatError::Malformed("bad error marker")),
    };
    if !r.bytes.is_empty() {
        return Err(FormatError::Malformed("trailing metadata bytes"));
    }
    Ok(meta)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_zigzag(out: &mut Vec<u8>, n: i64) {
    put_varint(out, ((n << 1) ^ (n >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_time(out: &mut Vec<u8>, t: Timestamp) {
    put_zigzag(out, t.as_second());
    // Negative timestamps carry negative nanoseconds; keep the sign with the seconds.
    put_zigzag(out, i64::from(t.subsec_nanosecond()));
}

fn put_object(out: &mut Vec<u8>, fields: &Fields) {
    out.push(8);
    put_varint(out, fields.len() as u64);
    for (key, value) in fields {
        put_str(out, key);
        put_value(out, value);
    }
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(0),
        Value::Bool(false) => out.push(1),
        Value::Bool(true) => out.push(2),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push(3);
                put_zigzag(out, i);
            } else if let Some(u) = n.as_u64() {
                out.push(4);
                put_varint(out, u);
            } else {
                out.push(5);
                out.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_le_bytes());
            }
        }
        Value::String(s) => {
            out.push(6);
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(7);
            put_varint(out, items.len() as u64);
            for item in items {
                put_value(out, item);
            }
        }
        Value::Object(fields) => put_object(out, fields),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, FormatError> {
        let (&b, rest) = self
            .bytes
            .split_first()
            .ok_or(FormatError::Malformed("truncated"))?;
        self.bytes = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if n > self.bytes.len() {
            return Err(FormatError::Malformed("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, FormatError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(FormatError::Malformed("varint too long"))
    }

    fn zigzag(&mut self) -> Result<i64, FormatError> {
        let n = self.varint()?;
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    /// A count or length, bounded by what is left (each item takes at least a byte).
    fn len(&mut self) -> Result<usize, FormatError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len())
            .ok_or(FormatError::Malformed("length beyond the record"))
    }

    fn str(&mut self) -> Result<&'a str, FormatError> {
        let len = self.len()?;
        std::str::from_utf8(self.take(len)?).map_err(|_| FormatError::Malformed("invalid UTF-8"))
    }

    fn opt_str(&mut self) -> Result<Option<&'a str>, FormatError> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            _ => Err(FormatError::Malformed("bad option marker")),
        }
    }

    fn time(&mut self) -> Result<Timestamp, FormatError> {
        let seconds = self.zigzag()?;
        let nanos = i32::try_from(self.zigzag()?)
            .map_err(|_| FormatError::Malformed("nanoseconds out of range"))?;
        Timestamp::new(seconds, nanos).map_err(|_| FormatError::Malformed("time out of range"))
    }

    fn value(&mut self, depth: usize) -> Result<Value, FormatError> {
        if depth > MAX_DEPTH {
            return Err(FormatError::Malformed("nested too deeply"));
        }
        Ok(match self.byte()? {
            0 => Value::Null,
            1 => Value::Bool(false),
            2 => Value::Bool(true),
            3 => Value::from(self.zigzag()?),
            4 => Value::from(self.varint()?),
            5 => {
                let f = f64::from_le_bytes(eight(self.take(8)?));
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            }
            6 => Value::String(self.str()?.to_owned()),
            7 => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            8 => {
                let n = self.len()?;
                let mut fields = Fields::with_capacity(n);
                for _ in 0..n {
                    let key = self.str()?.to_owned();
                    fields.insert(key, self.value(depth + 1)?);
                }
                Value::Object(fields)
            }
            _ => return Err(FormatError::Malformed("unknown value tag")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        other[8] = 2;
        assert!(SegmentHeader::decode(&other).is_err());
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
