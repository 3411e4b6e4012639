//! One event as a record payload, and back (the layout is in [`super`]'s docs).
//!
//! Both directions share work between consecutive events of one delivery, which share
//! their metadata: the [`Encoder`] encodes a metadata block once and copies its bytes into
//! each record while the metadata stays the same, and the [`Decoder`] recognises the bytes
//! and hands out one `Arc<EventMeta>` again instead of one copy per event. Each record
//! still carries its metadata, so any record can be read on its own (a redelivery or a
//! restart starts in the middle of a segment).

use std::sync::Arc;

use jiff::Timestamp;

use super::wire::{Reader, put_fields, put_opt_str, put_str, put_time, put_varint, put_zigzag};
use super::{FRAME_LEN, FormatError, seal_frame};
use crate::event::{Event, EventError, EventMeta};

/// Bits of the metadata's `parts` byte: which optional parts follow.
const TOPIC: u8 = 1;
const ROUTING_KEY: u8 = 1 << 1;
const HEADERS: u8 = 1 << 2;
const TRACE_ID: u8 = 1 << 3;
const ERROR: u8 = 1 << 4;
const KNOWN_PARTS: u8 = TOPIC | ROUTING_KEY | HEADERS | TRACE_ID | ERROR;

/// How a record's event time is written.
const TIME_RECEIVED: u8 = 0;
const TIME_AFTER_RECEIVED: u8 = 1;
const TIME_ABSOLUTE: u8 = 2;

/// Appends one framed record for `event` to `out`; returns the frame's length.
#[cfg(test)]
pub fn write_frame(event: &Event, out: &mut Vec<u8>) -> usize {
    Encoder::default().frame(event, out)
}

/// Turns events into framed records, encoding each distinct metadata block once.
#[derive(Default)]
pub struct Encoder {
    /// The last metadata encoded, and its encoding.
    meta: Option<(EventMeta, Vec<u8>)>,
}

impl Encoder {
    /// Appends one framed record for `event` to `out`; returns the frame's length.
    pub fn frame(&mut self, event: &Event, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_LEN]);
        self.payload(event, out);
        seal_frame(out, start)
    }

    fn payload(&mut self, event: &Event, out: &mut Vec<u8>) {
        let meta = event.meta();
        let encoded = match &mut self.meta {
            Some((last, bytes)) if last == meta => bytes,
            slot => {
                let (_, bytes) = slot.insert((meta.clone(), encode_meta(meta)));
                bytes
            }
        };
        put_varint(out, encoded.len() as u64);
        out.extend_from_slice(encoded);
        put_opt_str(out, event.device_id.as_deref());
        let after = event.time.as_nanosecond() - meta.received_at.as_nanosecond();
        match i64::try_from(after) {
            Ok(0) => out.push(TIME_RECEIVED),
            Ok(nanos) => {
                out.push(TIME_AFTER_RECEIVED);
                put_zigzag(out, nanos);
            }
            Err(_) => {
                out.push(TIME_ABSOLUTE);
                put_time(out, event.time);
            }
        }
        put_fields(out, event.fields());
    }
}

fn encode_meta(meta: &EventMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    let parts = [
        (meta.topic.is_some(), TOPIC),
        (meta.routing_key.is_some(), ROUTING_KEY),
        (!meta.headers.is_empty(), HEADERS),
        (meta.trace_id.is_some(), TRACE_ID),
        (meta.error.is_some(), ERROR),
    ]
    .iter()
    .filter(|(present, _)| *present)
    .fold(0, |parts, (_, bit)| parts | bit);
    out.push(parts);
    put_str(&mut out, &meta.source);
    put_time(&mut out, meta.received_at);
    if let Some(topic) = &meta.topic {
        put_str(&mut out, topic);
    }
    if let Some(key) = &meta.routing_key {
        put_str(&mut out, key);
    }
    if !meta.headers.is_empty() {
        put_varint(&mut out, meta.headers.len() as u64);
        for (name, value) in &meta.headers {
            put_str(&mut out, name);
            put_str(&mut out, value);
        }
    }
    if let Some(trace_id) = &meta.trace_id {
        put_str(&mut out, trace_id);
    }
    if let Some(error) = &meta.error {
        put_str(&mut out, &error.component);
        put_str(&mut out, &error.message);
    }
    out
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
        let time = match r.byte()? {
            TIME_RECEIVED => meta.received_at,
            TIME_AFTER_RECEIVED => {
                let nanos = meta.received_at.as_nanosecond() + i128::from(r.zigzag()?);
                Timestamp::from_nanosecond(nanos)
                    .map_err(|_| FormatError::Malformed("time out of range"))?
            }
            TIME_ABSOLUTE => r.time()?,
            _ => return Err(FormatError::Malformed("bad time marker")),
        };
        let fields = r.fields(0)?;
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
    let parts = r.byte()?;
    if parts & !KNOWN_PARTS != 0 {
        return Err(FormatError::Malformed("unknown metadata parts"));
    }
    let source: Arc<str> = Arc::from(r.str()?);
    let mut meta = EventMeta::received_at(source, r.time()?);
    if parts & TOPIC != 0 {
        meta.topic = Some(r.str()?.to_owned());
    }
    if parts & ROUTING_KEY != 0 {
        meta.routing_key = Some(r.str()?.to_owned());
    }
    if parts & HEADERS != 0 {
        let headers = r.len()?;
        for _ in 0..headers {
            let name = r.str()?.to_owned();
            meta.headers.push((name, r.str()?.to_owned()));
        }
    }
    if parts & TRACE_ID != 0 {
        meta.trace_id = Some(r.str()?.to_owned());
    }
    if parts & ERROR != 0 {
        meta.error = Some(EventError {
            component: Arc::from(r.str()?),
            message: r.str()?.to_owned(),
        });
    }
    if !r.bytes.is_empty() {
        return Err(FormatError::Malformed("trailing metadata bytes"));
    }
    Ok(meta)
}
