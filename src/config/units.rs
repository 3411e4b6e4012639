//! Durations (`250ms 10s 5m 1h 7d`) and sizes (`512KiB 64MiB`) as configuration values.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of time written with a unit: `250ms`, `10s`, `5m`, `1h`, `7d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "`{s}` has no unit: expected a duration such as `250ms`, `10s`, `5m`, `1h` or `7d`"
            ));
        }
        humantime::parse_duration(s.trim()).map(Self).map_err(|err| {
            format!("`{s}` is not a duration ({err}): expected e.g. `250ms`, `10s`, `5m`, `1h`, `7d`")
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Accept a number too, so the error can say what is missing (the unit).
        let value = serde_json::Value::deserialize(deserializer)?;
        match value {
            serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` has no unit: expected a duration such as `250ms`, `10s`, `5m`, `1h` or `7d`"
            ))),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^\s*(\d+(\.\d+)?\s*(ns|us|µs|ms|s|sec|m|min|h|hr|d|day|days|w)\s*)+$",
            "description": "A duration with a unit: 250ms, 10s, 5m, 1h, 7d.",
            "examples": ["10s", "5m"]
        })
    }
}

/// An amount of bytes written with a unit: `512KiB`, `64MiB`, `1GB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|size| Self(size.as_u64()))
            .map_err(|err| format!("`{s}` is not a size ({err}): expected e.g. `512KiB`, `64MiB`"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec_short())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            serde_json::Value::Number(n) => n.as_u64().map(Self).ok_or_else(|| {
                serde::de::Error::custom(format!("`{n}` is not a size: expected e.g. `64MiB`"))
            }),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not a size: expected e.g. `512KiB`, `64MiB`"
            ))),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                { "type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$" },
                { "type": "integer", "minimum": 0 }
            ],
            "description": "A size in bytes, with a unit: 512KiB, 64MiB.",
            "examples": ["64MiB"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        for (text, millis) in [
            ("250ms", 250),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("7d", 604_800_000),
        ] {
            assert_eq!(
                text.parse::<Duration>().unwrap().get().as_millis(),
                millis,
                "{text}"
            );
        }
    }

    #[test]
    fn a_bare_number_is_not_a_duration() {
        let err = "10".parse::<Duration>().unwrap_err();
        assert!(err.contains("no unit"), "{err}");
        assert!("ten seconds".parse::<Duration>().is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!("512KiB".parse::<ByteSize>().unwrap(), ByteSize::kib(512));
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize::mib(64));
        assert!("lots".parse::<ByteSize>().is_err());
    }
}
