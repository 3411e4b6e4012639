//! Telemetry payloads of a fixed size: `{"seq":…,"temperature":…,"vibration":…,"pad":"…"}`,
//! padded to the requested length. The sensor values come from a pre-rendered pool (the
//! same on every run); only the `seq` is written per message, so the generator stays
//! cheap.

use std::io::Write as _;

/// Distinct sensor value pairs; messages cycle through them.
const POOL: usize = 1024;

/// The longest `seq` rendered: `u64::MAX` has 20 digits.
const SEQ_DIGITS: usize = 20;

pub struct Payload {
    /// `,"temperature":71.23,"vibration":1.234,"pad":"`, one per pooled reading.
    middles: Vec<Vec<u8>>,
    /// The requested size.
    size: usize,
}

impl Payload {
    /// Payloads of `size` bytes (or the smallest JSON that holds a reading, when `size` is
    /// smaller than that).
    pub fn new(size: usize) -> Self {
        let mut state: u64 = 0x5745_4952;
        let mut unit = || {
            // SplitMix64, as `weir-load`: plausible values, no dependency.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        };
        let middles = (0..POOL)
            .map(|_| {
                let temperature = 20.0 + 100.0 * unit();
                let vibration = 0.5 + 3.0 * unit();
                format!(",\"temperature\":{temperature:.2},\"vibration\":{vibration:.3},\"pad\":\"")
                    .into_bytes()
            })
            .collect();
        Self { middles, size }
    }

    /// The size of every payload (for buffers); at most this many bytes are rendered.
    pub fn len(&self) -> usize {
        self.size.max(8 + SEQ_DIGITS + 48 + 2)
    }

    /// Renders the payload of message `seq` into `out` (cleared by the caller).
    pub fn render(&self, seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"seq\":");
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{seq}");
        out.extend_from_slice(&self.middles[(seq % POOL as u64) as usize]);
        // The padding fills up to the size, leaving room for the closing `"}`.
        let pad = self.size.saturating_sub(out.len() + 2);
        out.resize(out.len() + pad, b'x');
        out.extend_from_slice(b"\"}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_of_the_requested_size() {
        let payload = Payload::new(100);
        for seq in [0, 7, 123_456_789, 1_000_000_000_000] {
            let mut out = Vec::new();
            payload.render(seq, &mut out);
            assert_eq!(out.len(), 100, "{}", String::from_utf8_lossy(&out));
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(value["seq"], seq);
            assert!(value["temperature"].is_f64());
        }
    }

    #[test]
    fn a_size_too_small_gives_the_smallest_reading() {
        let payload = Payload::new(10);
        let mut out = Vec::new();
        payload.render(5, &mut out);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["seq"], 5);
    }
}
