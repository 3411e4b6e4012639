//! The `mqtt` source's options, the protocol version's two spellings, and the checks
//! `validate` runs on them.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::decode::{DEVICE_ID_PARAM, DeviceIdRule};
use super::session::Settings;
use crate::broker::CredentialFields;
use crate::codecs::DecodingConfig;
use crate::config::Sensitive;
use crate::config::{ByteSize, Duration, FieldProblem, RedactedUrl, ServiceUse};
use crate::sources::gate::{DeviceGate, UnknownDevices};
use crate::sources::{SourceComponent, SourceContext};
use crate::template::Template;
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

/// Subscribes to MQTT topics.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// e.g. `mqtt://127.0.0.1:1883`, or `mqtts://broker:8883` (TLS).
    pub url: RedactedUrl,
    /// Topic filters, e.g. `devices/+/telemetry`.
    pub topics: Vec<String>,
    /// A topic pattern (`devices/{device_id}/telemetry`) or a template over `topic`
    /// (`{{ (topic | split('/'))[1] }}`); default: the reading's `device_id_field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default = "default_device_field")]
    pub device_id_field: String,
    /// 0 (at most once) or 1 (at least once, acked after commit).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Default: `weir-<component id>`. Keep it stable: the persistent session is keyed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The user name weir connects as, for brokers that want credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password, e.g. `${MQTT_PASSWORD}`; never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Sensitive>,
    /// A file holding the password (its trailing newline is not part of it), read when
    /// the source starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Subscribe as `$share/<group>/<topic>`, so instances split the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_group: Option<String>,
    /// `5` (the default) or `"3.1.1"`.
    #[serde(default)]
    pub protocol: MqttVersion,
    /// Start without the broker's stored session (drops what weir had not acked).
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT 5, persistent sessions: how long the broker keeps the session, and what weir
    /// has not acknowledged, after weir disconnects. Default: for as long as it will.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_expiry: Option<Duration>,
    /// Largest packet weir takes: a message's payload with its topic and properties
    /// (default `1MiB`). MQTT 5 announces it as the maximum packet size, so the broker
    /// keeps larger messages back (Mosquitto drops them and logs it); a 3.1.1 broker sends
    /// them, and the connection breaks on each.
    #[serde(default = "default_max_packet")]
    pub max_packet: ByteSize,
    /// Publishes the broker may have unacknowledged with weir at once.
    #[serde(default = "default_inflight")]
    pub max_inflight: u16,
    #[serde(default)]
    pub decoding: DecodingConfig,
    /// Field holding the event time; default: arrival time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// Certificates for `mqtts://`: `ca_file` to trust the broker (default: the system's
    /// roots), `cert_file`/`key_file` for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Devices the registry does not know: `accept` or `refuse` (to `<id>.errors`).
    /// Disabled devices are always refused when the pipeline has a `registry:`.
    #[serde(default, skip_serializing_if = "UnknownDevices::is_accept")]
    pub unknown_devices: UnknownDevices,
}

fn default_device_field() -> String {
    "device_id".into()
}
fn default_qos() -> u8 {
    1
}
fn default_inflight() -> u16 {
    100
}
fn default_max_packet() -> ByteSize {
    ByteSize::mib(1)
}

/// The MQTT protocol version a source speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4), for brokers without 5 (Azure IoT Hub, older ones).
    V3_1_1,
    /// MQTT 5: receive maximum, session expiry, reason codes, user properties.
    #[default]
    V5,
}

impl MqttVersion {
    const NAMES: &str = "expected `5` or `\"3.1.1\"`";
}

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // YAML reads `5` as a number and `3.1.1` as text; take either spelling.
        let value = serde_json::Value::deserialize(deserializer)?;
        match &value {
            serde_json::Value::Number(n) if n.as_u64() == Some(5) => Ok(Self::V5),
            serde_json::Value::String(s) if s == "5" => Ok(Self::V5),
            serde_json::Value::String(s) if s == "3.1.1" => Ok(Self::V3_1_1),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not an MQTT version: {}",
                Self::NAMES
            ))),
        }
    }
}

impl Serialize for MqttVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::V3_1_1 => serializer.serialize_str("3.1.1"),
            Self::V5 => serializer.serialize_u8(5),
        }
    }
}

impl JsonSchema for MqttVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MqttVersion".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "MQTT protocol version: 5 or \"3.1.1\".",
            "enum": [5, "5", "3.1.1"]
        })
    }
}

impl MqttSourceConfig {
    /// Host, port, and whether the connection uses TLS.
    fn broker(&self) -> Result<(String, u16, bool), String> {
        crate::broker::mqtt::broker_address(self.url.expose_str())
    }

    /// The packet size limit in bytes: at least a small packet, at most what MQTT's
    /// length field can say (256 MiB).
    fn max_packet_bytes(&self) -> Result<u32, String> {
        const MQTT_MAX: u64 = 268_435_455;
        match self.max_packet.get() {
            n if n < 128 => Err(format!(
                "{} is too small for an MQTT packet: expected at least 128B",
                self.max_packet
            )),
            n if n > MQTT_MAX => Err(format!(
                "{} is more than MQTT can carry (256MiB)",
                self.max_packet
            )),
            n => Ok(n as u32),
        }
    }

    fn credentials(&self) -> CredentialFields<'_> {
        CredentialFields {
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            password_file: self.password_file.as_deref(),
        }
    }

    pub(super) fn device_rule(&self) -> Result<DeviceIdRule, String> {
        match &self.device_id {
            None => Ok(DeviceIdRule::Field(self.device_id_field.clone())),
            Some(text) if text.contains("{{") => {
                let template = Template::compile(text)?;
                if let Some(name) = template.variables().into_iter().find(|n| n != "topic") {
                    return Err(format!("`{name}` is not known here: the device id template can use `topic`"));
                }
                Ok(DeviceIdRule::Template(template))
            }
            Some(pattern) => pattern
                .split('/')
                .position(|segment| segment == DEVICE_ID_PARAM)
                .map(DeviceIdRule::Segment)
                .ok_or_else(|| format!("`{pattern}` is neither a topic pattern with `{DEVICE_ID_PARAM}` nor a template")),
        }
    }
}

impl SourceComponent for MqttSourceConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        match self.broker() {
            Err(message) => problems.push(FieldProblem::at(["url"], message)),
            Ok((_, _, false)) if self.tls.is_some() => {
                problems.push(FieldProblem::at(["tls"], "`tls` needs an `mqtts://` URL"));
            }
            Ok(_) => {}
        }
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            problems.push(FieldProblem::at(
                ["topics"],
                "expected at least one topic filter",
            ));
        }
        if self.qos > 1 {
            problems.push(FieldProblem::at(["qos"], "expected 0 or 1"));
        }
        if self.max_inflight == 0 {
            problems.push(FieldProblem::at(["max_inflight"], "expected at least 1"));
        }
        if self.session_expiry.is_some() && self.protocol != MqttVersion::V5 {
            problems.push(FieldProblem::at(
                ["session_expiry"],
                "`session_expiry` needs MQTT 5 (`protocol: 5`); a 3.1.1 broker decides itself",
            ));
        }
        if self.session_expiry.is_some() && self.clean_session {
            problems.push(FieldProblem::at(
                ["session_expiry"],
                "a clean session is not kept: drop `session_expiry` or `clean_session`",
            ));
        }
        if let Err(message) = self.max_packet_bytes() {
            problems.push(FieldProblem::at(["max_packet"], message));
        }
        if let Err(message) = self.device_rule() {
            problems.push(FieldProblem::at(["device_id"], message));
        }
        if let Err(message) = self.decoding.check() {
            problems.push(FieldProblem::at(["decoding"], message));
        }
        problems.extend(self.credentials().check());
        problems
    }

    fn services(&self) -> Vec<ServiceUse> {
        self.unknown_devices.services()
    }

    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask> {
        let (host, port, secure) = self.broker().map_err(anyhow::Error::msg)?;
        let rule = self.device_rule().map_err(anyhow::Error::msg)?;
        let max_packet_bytes = self.max_packet_bytes().map_err(anyhow::Error::msg)?;
        // Certificates are read now, so a bad file fails the start (or rolls a reload back).
        let tls = match secure {
            true => Some(self.tls.clone().unwrap_or_default().client_config()?),
            false => None,
        };
        // The password file is read now, so a missing one fails the start with its name.
        let credentials = self.credentials().resolve()?;
        let gate = DeviceGate::new(cx.services.get(), self.unknown_devices)?;
        let settings = Settings {
            version: self.protocol,
            client_id: self
                .client_id
                .clone()
                .unwrap_or_else(|| format!("weir-{}", cx.id)),
            host,
            port,
            tls,
            clean: self.clean_session,
            session_expiry: self
                .session_expiry
                .map(|expiry| u32::try_from(expiry.get().as_secs()).unwrap_or(u32::MAX)),
            max_inflight: self.max_inflight,
            max_packet_bytes,
            credentials,
        };
        let config = self.clone();
        Ok(Box::pin(async move {
            super::run(config, settings, rule, gate, cx).await
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<MqttSourceConfig, serde_json::Error> {
        let json = format!(r#"{{"url": "mqtt://127.0.0.1:1883", "topics": ["t/+"]{extra}}}"#);
        serde_json::from_str(&json)
    }

    fn problems(extra: &str) -> Vec<String> {
        config(extra)
            .expect("parses")
            .check()
            .into_iter()
            .map(|p| format!("{p:?}"))
            .collect()
    }

    #[test]
    fn the_protocol_is_5_by_default_and_takes_either_spelling() {
        assert_eq!(config("").unwrap().protocol, MqttVersion::V5);
        assert_eq!(
            config(r#", "protocol": 5"#).unwrap().protocol,
            MqttVersion::V5
        );
        assert_eq!(
            config(r#", "protocol": "5""#).unwrap().protocol,
            MqttVersion::V5
        );
        assert_eq!(
            config(r#", "protocol": "3.1.1""#).unwrap().protocol,
            MqttVersion::V3_1_1
        );
        let err = config(r#", "protocol": 4"#).unwrap_err().to_string();
        assert!(err.contains("not an MQTT version"), "{err}");
    }

    #[test]
    fn session_expiry_needs_mqtt5_and_a_persistent_session() {
        assert!(problems(r#", "session_expiry": "1h""#).is_empty());
        let v3 = problems(r#", "session_expiry": "1h", "protocol": "3.1.1""#);
        assert!(v3.iter().any(|p| p.contains("needs MQTT 5")), "{v3:?}");
        let clean = problems(r#", "session_expiry": "1h", "clean_session": true"#);
        assert!(clean.iter().any(|p| p.contains("not kept")), "{clean:?}");
    }

    #[test]
    fn max_packet_fits_what_mqtt_can_carry() {
        assert!(problems(r#", "max_packet": "64KiB""#).is_empty());
        let small = problems(r#", "max_packet": "16B""#);
        assert!(small.iter().any(|p| p.contains("too small")), "{small:?}");
        let large = problems(r#", "max_packet": "1GiB""#);
        assert!(
            large.iter().any(|p| p.contains("more than MQTT")),
            "{large:?}"
        );
    }
}
