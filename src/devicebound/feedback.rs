//! What becomes of a cloud-to-device message, in an IoT hub's terms: the `ack` a sender
//! asks for, and the outcome that settles the message (completed by the device, expired,
//! delivered too often).

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Message;

/// Which outcomes of a message produce a feedback record, as an IoT hub's `ack` property:
/// `positive` when the device completed it, `negative` when it was dead-lettered
/// (expired, delivered too often), `full` both, `none` (the default) neither.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    #[default]
    None,
    Positive,
    Negative,
    Full,
}

impl Ack {
    /// Whether a message with this `ack` asks for feedback on `outcome`.
    pub fn wants(self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Success => matches!(self, Self::Positive | Self::Full),
            Outcome::Expired | Outcome::DeliveryCountExceeded => {
                matches!(self, Self::Negative | Self::Full)
            }
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Self::None
    }
}

/// How a message left its queue, named as an IoT hub's feedback `statusCode`. (A hub's
/// `Rejected` and `Purged` need a device that rejects, which MQTT cannot, or a purge,
/// which weir has no API for: they do not occur.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The device acknowledged it (PUBACK).
    Success,
    /// Its time to live passed before the device acknowledged it.
    Expired,
    /// It was sent `max_delivery_count` times without an acknowledgement.
    DeliveryCountExceeded,
}

impl Outcome {
    /// The `statusCode` of its feedback record.
    pub fn status_code(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::Expired => "Expired",
            Self::DeliveryCountExceeded => "DeliveryCountExceeded",
        }
    }

    /// The `description` of its feedback record, as a hub words it.
    pub fn description(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::Expired => "Message expired",
            Self::DeliveryCountExceeded => "Message delivery count exceeded",
        }
    }

    /// Whether the message was dead-lettered (removed undelivered).
    pub fn is_dead_letter(self) -> bool {
        self != Self::Success
    }
}

/// A message that left its queue and whose outcome someone must hear about: feedback
/// its `ack` asks for, or a dead letter. Kept in the queue file until the gateway's
/// outputs have committed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    /// Order of settlement within one gateway, never reused.
    pub seq: u64,
    pub device_id: String,
    pub message: Message,
    pub outcome: Outcome,
    /// When it was settled.
    pub at: Timestamp,
}

impl Settled {
    /// Whether the sender asked to hear about this outcome.
    pub fn wants_feedback(&self) -> bool {
        self.message.ack.wants(self.outcome)
    }

    /// Whether this outcome must be kept at all: asked-for feedback or a dead letter.
    pub fn worth_keeping(message: &Message, outcome: Outcome) -> bool {
        message.ack.wants(outcome) || outcome.is_dead_letter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_picks_the_outcomes_fed_back() {
        use Outcome::*;
        let cases = [
            (Ack::None, [false, false, false]),
            (Ack::Positive, [true, false, false]),
            (Ack::Negative, [false, true, true]),
            (Ack::Full, [true, true, true]),
        ];
        for (ack, wanted) in cases {
            let got = [Success, Expired, DeliveryCountExceeded].map(|o| ack.wants(o));
            assert_eq!(got, wanted, "{ack:?}");
        }
        assert_eq!(serde_json::to_string(&Ack::Full).unwrap(), r#""full""#);
    }
}
