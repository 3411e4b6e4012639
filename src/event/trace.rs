//! Traced readings: the W3C trace context a reading arrives with, and whether it is sampled.
//!
//! A source hands the `traceparent` its transport carried (an HTTP header, an MQTT 5 user
//! property, an AMQP header, a device's property bag) to [`EventMeta::set_traceparent`]:
//! its trace id becomes the event's `trace_id`, and a reading flagged sampled (flags `01`)
//! is [`Sampled`]. A source's `trace: { sample }` samples more readings at its output. Every
//! hop a sampled reading makes is logged and timed (`telemetry::trace`).
//!
//! What it costs a reading that is not sampled: the engine asks [`any_sampled`] (one
//! relaxed atomic load) per batch, and looks no further while no sampled reading is alive
//! anywhere in the process.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::EventMeta;

/// Sampled readings alive in the process (each [`Sampled`] counts once while it exists).
static SAMPLED_ALIVE: AtomicUsize = AtomicUsize::new(0);

/// Whether any sampled reading exists: if not, no batch needs looking at.
#[inline]
pub fn any_sampled() -> bool {
    SAMPLED_ALIVE.load(Ordering::Relaxed) != 0
}

/// The parts of a valid W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// The caller's span: 16 lowercase hex digits, not all zero.
    pub parent_id: String,
    /// Flag `01`: the caller recorded this trace.
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` for anything the W3C format does not allow.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four parts; a later version may add more.
        if (version == "00" && parts.next().is_some()) || version == "ff" {
            return None;
        }
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        if !hex(version, 2) || !hex(trace_id, 32) || !hex(parent_id, 16) || !hex(flags, 2) {
            return None;
        }
        if zero(trace_id) || zero(parent_id) {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            sampled: flags & 1 == 1,
        })
    }
}

/// The mark of a sampled reading: its hops are logged and timed.
#[derive(Debug)]
pub struct Sampled {
    /// The span of the caller that sent the reading (from its `traceparent`), which the
    /// reading's own spans descend from.
    pub parent_id: Option<String>,
}

impl Sampled {
    fn new(parent_id: Option<String>) -> Self {
        SAMPLED_ALIVE.fetch_add(1, Ordering::Relaxed);
        Self { parent_id }
    }
}

impl Clone for Sampled {
    fn clone(&self) -> Self {
        Self::new(self.parent_id.clone())
    }
}

impl Drop for Sampled {
    fn drop(&mut self) {
        SAMPLED_ALIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a reading is sampled is not part of what it says.
impl PartialEq for Sampled {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Names a transport may carry the trace context under (HTTP is case-insensitive).
pub const TRACEPARENT: &str = "traceparent";

impl EventMeta {
    /// Takes the trace context of a `traceparent` value: its trace id becomes the event's,
    /// and a reading flagged sampled is [`Sampled`]. An invalid value is ignored (a trace
    /// header is advice, never a reason to refuse a reading).
    pub fn set_traceparent(&mut self, value: &str) {
        let Some(parent) = TraceParent::parse(value) else {
            return;
        };
        if parent.sampled {
            self.sampled = Some(Sampled::new(Some(parent.parent_id)));
        }
        self.trace_id = Some(parent.trace_id);
    }

    /// [`Self::set_traceparent`] from the `traceparent` among `headers` (MQTT 5 user
    /// properties, AMQP headers, a device's property bag), if there is one.
    pub fn adopt_traceparent_header(&mut self) {
        let found = self
            .headers
            .iter()
            .rev()
            .find(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT))
            .map(|(_, value)| value.clone());
        if let Some(value) = found {
            self.set_traceparent(&value);
        }
    }

    /// Samples the reading (a source's `trace.sample` chose it): it gets a trace id of its
    /// own if it arrived without one.
    pub fn sample(&mut self) {
        if self.sampled.is_some() {
            return;
        }
        if self.trace_id.is_none() {
            self.trace_id = Some(hex::encode(rand::random::<[u8; 16]>()));
        }
        self.sampled = Some(Sampled::new(None));
    }

    /// Whether the reading's hops are logged and timed.
    pub fn is_sampled(&self) -> bool {
        self.sampled.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses() {
        let parent = TraceParent::parse(VALID).unwrap();
        assert_eq!(parent.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id, "00f067aa0ba902b7");
        assert!(parent.sampled);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!TraceParent::parse(&unsampled).unwrap().sampled);
    }

    #[test]
    fn what_the_format_forbids_is_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_flagged_header_samples_the_reading_and_the_mark_is_counted() {
        let mut meta = EventMeta::received_by("src".into());
        meta.headers.push(("TraceParent".into(), VALID.into()));
        meta.adopt_traceparent_header();
        assert_eq!(
            meta.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(meta.is_sampled());
        assert!(any_sampled());
        let mut unflagged = EventMeta::received_by("src".into());
        unflagged.set_traceparent(&VALID.replace("-01", "-00"));
        assert!(unflagged.trace_id.is_some() && !unflagged.is_sampled());
    }
}
