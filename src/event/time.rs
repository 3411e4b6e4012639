//! Reading event time out of a field.

use jiff::Timestamp;
use serde_json::Value;

/// Parses an event time: an RFC 3339 string, or an epoch number whose unit follows from its
/// magnitude (seconds below 10^11, milliseconds below 10^14, microseconds above).
pub fn parse_event_time(value: &Value) -> Option<Timestamp> {
    match value {
        Value::String(text) => text.parse::<Timestamp>().ok(),
        Value::Number(n) => {
            let x = n.as_f64()?;
            if !x.is_finite() || x < 0.0 {
                return None;
            }
            let micros = if x < 1e11 {
                x * 1e6
            } else if x < 1e14 {
                x * 1e3
            } else {
                x
            };
            Timestamp::from_microsecond(micros as i64).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_magnitude() {
        let expected: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        for v in [
            Value::from(1_795_694_400),
            Value::from(1_795_694_400_000i64),
            Value::from(1_795_694_400_000_000i64),
            Value::from("2026-11-26T12:00:00Z"),
            Value::from("2026-11-26T13:00:00+01:00"),
        ] {
            assert_eq!(parse_event_time(&v), Some(expected), "{v}");
        }
        assert_eq!(parse_event_time(&Value::from("yesterday")), None);
        assert_eq!(parse_event_time(&Value::Bool(true)), None);
        assert_eq!(parse_event_time(&Value::from(-5)), None);
    }
}
