//! The idempotency key every notification carries, so a receiver can make at-least-once
//! delivery exactly once.
//!
//! An alarm transition's key is its alarm id and its sequence number in that alarm,
//! `<alarm_id>-<alarm_seq>` (e.g. `3f9a0c2e1b7d4a55-2`): the same transition re-sent after
//! a crash, by any action, has the same key, and two transitions never share one. Any other
//! event's key is `ev-` and the first 16 bytes (hex) of a SHA-256 over its device id, event
//! time and fields: stable across restarts (a disk buffer hands the same record back),
//! and equal for two readings only when they are the same reading.
//!
//! How each action carries it: `webhook` in an `Idempotency-Key` header, `amqp_publish` as
//! the message's `message_id`, `email` in its `Message-ID` (`<key.action@weir>`), `log` as
//! an `idempotency_key` field. `mqtt_publish` speaks MQTT 3.1.1, which has no message
//! properties: weir does not change the payload behind the user's back, so a receiver that
//! must dedupe takes the key from the payload template (`{{ alarm_id }}-{{ alarm_seq }}`).

use std::hash::Hasher;

use sha2::{Digest, Sha256};

use crate::event::Event;

/// A notification's idempotency key (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of the notification `event` causes.
    pub fn of(event: &Event) -> IdempotencyKey {
        let alarm_id = event.get("alarm_id").and_then(|v| v.as_str());
        let seq = event.get("alarm_seq").and_then(|v| v.as_u64());
        if let (Some(alarm_id), Some(seq)) = (alarm_id, seq) {
            return IdempotencyKey(format!("{alarm_id}-{seq}"));
        }
        let mut hasher = StableHasher::default();
        hasher.write(event.device_id.as_deref().unwrap_or("").as_bytes());
        hasher.write(&[0]);
        hasher.write(&event.time.as_nanosecond().to_le_bytes());
        // Fields serialize in their order, which the buffers keep.
        if let Ok(fields) = serde_json::to_vec(event.fields()) {
            hasher.write(&fields);
        }
        let digest = hasher.0.finalize();
        IdempotencyKey(format!("ev-{}", hex::encode(&digest[..16])))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A [`Hasher`] whose result does not change between runs or Rust releases (SHA-256), for
/// fingerprints that are written to disk (`dedupe`).
#[derive(Default, Clone)]
pub struct StableHasher(Sha256);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{EventMeta, Fields, Value};

    fn event(fields: &[(&str, Value)]) -> Event {
        let mut map = Fields::new();
        for (name, value) in fields {
            map.insert((*name).into(), value.clone());
        }
        let mut event = Event::new(
            Some("dev-1".into()),
            map,
            Arc::new(EventMeta::received_by("s".into())),
        );
        event.time = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        event
    }

    #[test]
    fn an_alarm_transition_is_keyed_by_alarm_and_sequence() {
        let raised = event(&[
            ("alarm_id", Value::from("a1")),
            ("alarm_seq", Value::from(1)),
        ]);
        let cleared = event(&[
            ("alarm_id", Value::from("a1")),
            ("alarm_seq", Value::from(2)),
        ]);
        assert_eq!(IdempotencyKey::of(&raised).as_str(), "a1-1");
        assert_eq!(IdempotencyKey::of(&cleared).as_str(), "a1-2");
    }

    #[test]
    fn another_event_is_keyed_by_its_content() {
        let a = event(&[("t", Value::from(1))]);
        let b = event(&[("t", Value::from(2))]);
        let key = IdempotencyKey::of(&a);
        assert!(key.as_str().starts_with("ev-"), "{key}");
        assert_eq!(key.as_str().len(), 3 + 32);
        assert_eq!(key, IdempotencyKey::of(&a.clone()));
        assert_ne!(key, IdempotencyKey::of(&b));
    }

    #[test]
    fn the_stable_hasher_does_not_depend_on_the_run() {
        let mut hasher = StableHasher::default();
        hasher.write(b"weir");
        // The first 8 bytes of SHA-256("weir"), little-endian.
        let digest = Sha256::digest(b"weir");
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        assert_eq!(hasher.finish(), u64::from_le_bytes(first));
    }
}
