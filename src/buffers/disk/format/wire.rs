//! The primitives records are made of: varints, strings, timestamps and JSON values, written
//! into a `Vec<u8>` and read back by a bounds-checked [`Reader`] that refuses (never panics
//! on) malformed bytes.
//!
//! A double that is exactly a short decimal (`80.5`, `0.13`: what sensors send) is written
//! as its digits and a power of ten, 2–4 bytes instead of 8. That is lossless: `m` and
//! `10^k` are both exact doubles, and IEEE division is correctly rounded, so `m / 10^k` is
//! the double nearest the decimal, the one JSON parsing gave; the encoder checks the round
//! trip bit for bit and falls back to the 8 bytes when it does not hold (`-0.0`, `1/3`).

use jiff::Timestamp;

use super::{FormatError, MAX_DEPTH};
use crate::event::{Fields, Value};

/// Value tags.
const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const UINT: u8 = 4;
const DOUBLE: u8 = 5;
const STRING: u8 = 6;
const ARRAY: u8 = 7;
const OBJECT: u8 = 8;
/// `DECIMAL + k` (k ≤ [`MAX_DECIMALS`]): a zigzag varint `m`, the value `m / 10^k`.
const DECIMAL: u8 = 16;
const MAX_DECIMALS: usize = 15;
/// Integers below this are exact doubles.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

const POW10: [f64; MAX_DECIMALS + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

pub fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub fn put_zigzag(out: &mut Vec<u8>, n: i64) {
    put_varint(out, ((n << 1) ^ (n >> 63)) as u64);
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

pub fn put_time(out: &mut Vec<u8>, t: Timestamp) {
    put_zigzag(out, t.as_second());
    // Negative timestamps carry negative nanoseconds; keep the sign with the seconds.
    put_zigzag(out, i64::from(t.subsec_nanosecond()));
}

/// An object's entries, without a tag (the caller knows it is an object).
pub fn put_fields(out: &mut Vec<u8>, fields: &Fields) {
    put_varint(out, fields.len() as u64);
    for (key, value) in fields {
        put_str(out, key);
        put_value(out, value);
    }
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push(INT);
                put_zigzag(out, i);
            } else if let Some(u) = n.as_u64() {
                out.push(UINT);
                put_varint(out, u);
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match decimal(f) {
                    Some((k, m)) => {
                        out.push(DECIMAL + k);
                        put_zigzag(out, m);
                    }
                    None => {
                        out.push(DOUBLE);
                        out.extend_from_slice(&f.to_le_bytes());
                    }
                }
            }
        }
        Value::String(s) => {
            out.push(STRING);
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            put_varint(out, items.len() as u64);
            for item in items {
                put_value(out, item);
            }
        }
        Value::Object(fields) => {
            out.push(OBJECT);
            put_fields(out, fields);
        }
    }
}

/// `(k, m)` with `m / 10^k` exactly `f`, the fewest decimals first; `None` if there is none.
fn decimal(f: f64) -> Option<(u8, i64)> {
    for (k, scale) in POW10.iter().enumerate() {
        let m = (f * scale).round();
        // Also ends the search for NaN and infinities (they compare false).
        if m.abs() >= EXACT_INT || m.is_nan() {
            return None;
        }
        let m = m as i64;
        if (m as f64 / scale).to_bits() == f.to_bits() {
            return Some((k as u8, m));
        }
    }
    None
}

/// Reads what the `put_*` functions wrote; every read checks what is left.
pub struct Reader<'a> {
    pub bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn byte(&mut self) -> Result<u8, FormatError> {
        let (&b, rest) = self
            .bytes
            .split_first()
            .ok_or(FormatError::Malformed("truncated"))?;
        self.bytes = rest;
        Ok(b)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if n > self.bytes.len() {
            return Err(FormatError::Malformed("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub fn varint(&mut self) -> Result<u64, FormatError> {
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

    pub fn zigzag(&mut self) -> Result<i64, FormatError> {
        let n = self.varint()?;
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    /// A count or length, bounded by what is left (each item takes at least a byte).
    pub fn len(&mut self) -> Result<usize, FormatError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len())
            .ok_or(FormatError::Malformed("length beyond the record"))
    }

    pub fn str(&mut self) -> Result<&'a str, FormatError> {
        let len = self.len()?;
        std::str::from_utf8(self.take(len)?).map_err(|_| FormatError::Malformed("invalid UTF-8"))
    }

    pub fn opt_str(&mut self) -> Result<Option<&'a str>, FormatError> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            _ => Err(FormatError::Malformed("bad option marker")),
        }
    }

    pub fn time(&mut self) -> Result<Timestamp, FormatError> {
        let seconds = self.zigzag()?;
        let nanos = i32::try_from(self.zigzag()?)
            .map_err(|_| FormatError::Malformed("nanoseconds out of range"))?;
        Timestamp::new(seconds, nanos).map_err(|_| FormatError::Malformed("time out of range"))
    }

    /// An object's entries (as [`put_fields`] wrote them).
    pub fn fields(&mut self, depth: usize) -> Result<Fields, FormatError> {
        if depth > MAX_DEPTH {
            return Err(FormatError::Malformed("nested too deeply"));
        }
        let n = self.len()?;
        let mut fields = Fields::with_capacity(n);
        for _ in 0..n {
            let key = self.str()?.to_owned();
            fields.insert(key, self.value(depth + 1)?);
        }
        Ok(fields)
    }

    fn value(&mut self, depth: usize) -> Result<Value, FormatError> {
        if depth > MAX_DEPTH {
            return Err(FormatError::Malformed("nested too deeply"));
        }
        Ok(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            INT => Value::from(self.zigzag()?),
            UINT => Value::from(self.varint()?),
            DOUBLE => double(f64::from_le_bytes(eight(self.take(8)?))),
            STRING => Value::String(self.str()?.to_owned()),
            ARRAY => {
                let n = self.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => Value::Object(self.fields(depth + 1)?),
            tag if (DECIMAL..=DECIMAL + MAX_DECIMALS as u8).contains(&tag) => {
                let scale = POW10[usize::from(tag - DECIMAL)];
                double(self.zigzag()? as f64 / scale)
            }
            _ => return Err(FormatError::Malformed("unknown value tag")),
        })
    }
}

fn double(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

pub fn four(b: &[u8]) -> [u8; 4] {
    let mut out = [0; 4];
    out.copy_from_slice(&b[..4]);
    out
}

pub fn eight(b: &[u8]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&b[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: f64) -> Value {
        let mut out = Vec::new();
        put_value(&mut out, &double(f));
        let mut r = Reader { bytes: &out };
        let value = r.value(0).unwrap();
        assert!(r.bytes.is_empty());
        value
    }

    #[test]
    fn short_decimals_take_few_bytes_and_come_back_bit_for_bit() {
        for (f, bytes) in [(80.5, 3), (0.13, 2), (3.0, 2), (-21.75, 3), (101.32, 4)] {
            let mut out = Vec::new();
            put_value(&mut out, &double(f));
            assert_eq!(out.len(), bytes, "{f}");
            assert_eq!(round_trip(f).as_f64().map(f64::to_bits), Some(f.to_bits()));
        }
    }

    #[test]
    fn doubles_that_are_no_short_decimal_keep_all_their_bits() {
        for f in [
            1.0 / 3.0,
            -0.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            1e300,
            0.1 + 0.2,
            123_456_789.123_456_78,
        ] {
            assert_eq!(
                round_trip(f).as_f64().map(f64::to_bits),
                Some(f.to_bits()),
                "{f:e}"
            );
        }
        let mut out = Vec::new();
        put_value(&mut out, &double(1.0 / 3.0));
        assert_eq!(out[0], DOUBLE);
    }
}
