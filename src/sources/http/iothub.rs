//! The HTTPS transport of IoT hub device SDKs (`iothub_transport: true`): devices post
//! telemetry to `POST /devices/{device_id}/messages/events?api-version=…` (the query is
//! not read), authenticated as the source's `auth` says (with `sas`: `Authorization:
//! SharedAccessSignature …`, exactly as on `path`), and are answered 204 as a hub does.
//!
//! A message's properties travel as headers: `iothub-app-{name}` for application
//! properties, `iothub-messageid`, `iothub-correlationid`, `iothub-userid`,
//! `iothub-contenttype` and `iothub-contentencoding` for system ones. They become
//! `meta.headers` with the names the `device_gateway` gives them (`{name}`, `$.mid`,
//! `$.cid`, `$.uid`, `$.ct`, `$.ce`), plus `iothub-connection-device-id` and
//! `iothub-enqueuedtime`, so events look the same whichever transport a device uses; `$.ct`
//! picks the decoder (JSON, MessagePack, octet-stream; else the configured `decoding`). A
//! batch (`Content-Type: application/vnd.microsoft.iothub.json`, a JSON array of
//! `{"body": base64, "properties": {…}}`) becomes the events of each message, each with
//! its own properties. AMQP, the SDKs' third transport, is not served.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use serde::Deserialize;

use super::Handler;
use crate::event::{Event, EventMeta};
use crate::sources::iothub::{CONNECTION_DEVICE_ID, ENQUEUED_TIME};
use crate::sources::reading;

/// The route the SDKs post telemetry to.
pub(super) const PATH: &str = "/devices/{device_id}/messages/events";

/// Which request format a route speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wire {
    /// weir's own: `path`, readings in the body.
    Weir,
    /// An IoT hub's device SDKs over HTTPS.
    IotHub,
}

const APP_PREFIX: &str = "iothub-app-";
const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.iothub.json";

/// System property headers, and the name the MQTT property bag gives each.
const SYSTEM: &[(&str, &str)] = &[
    ("iothub-messageid", "$.mid"),
    ("iothub-correlationid", "$.cid"),
    ("iothub-userid", "$.uid"),
    ("iothub-contenttype", "$.ct"),
    ("iothub-contentencoding", "$.ce"),
];

/// One message of a batch.
#[derive(Deserialize)]
struct BatchMessage {
    /// The payload, base64.
    body: String,
    #[serde(default)]
    properties: serde_json::Map<String, serde_json::Value>,
}

/// The property a header (or a batch message's property) `name` carries, by its
/// property-bag name.
fn property(name: &str, value: String) -> Option<(String, String)> {
    let name = name.to_ascii_lowercase();
    if let Some(app) = name.strip_prefix(APP_PREFIX) {
        return Some((app.to_owned(), value));
    }
    SYSTEM
        .iter()
        .find(|(header, _)| *header == name)
        .map(|(_, bag)| ((*bag).to_owned(), value))
}

/// The properties a request's headers carry, in their order.
fn header_properties(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            property(
                name.as_str(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn content_type(meta: &EventMeta) -> Option<&str> {
    meta.headers
        .iter()
        .find(|(name, _)| name == "$.ct")
        .map(|(_, value)| value.as_str())
}

impl Handler {
    /// The metadata of a request to [`PATH`]: its properties and those a hub adds.
    pub(super) fn iothub_meta(&self, headers: &HeaderMap, device_id: &str) -> EventMeta {
        let mut meta = self.meta(headers);
        meta.headers.extend(header_properties(headers));
        meta.headers
            .push((CONNECTION_DEVICE_ID.into(), device_id.to_owned()));
        meta.headers
            .push((ENQUEUED_TIME.into(), meta.received_at.to_string()));
        meta
    }

    /// The events of a request to [`PATH`]: one message, or a batch of them.
    pub(super) fn iothub_decode(
        &self,
        body: &Bytes,
        path_device: Option<&str>,
        headers: &HeaderMap,
        meta: &Arc<EventMeta>,
    ) -> Result<Vec<Event>, String> {
        let (Some(decoders), Some(device)) = (&self.iothub, path_device) else {
            return Err("no device id".into());
        };
        let batch = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.split(';').next().unwrap_or_default().trim() == BATCH_CONTENT_TYPE
            });
        let messages: Vec<(Vec<u8>, Arc<EventMeta>)> = match batch {
            false => vec![(body.to_vec(), Arc::clone(meta))],
            true => {
                let batch: Vec<BatchMessage> = serde_json::from_slice(body)
                    .map_err(|e| format!("not a batch of messages ({BATCH_CONTENT_TYPE}): {e}"))?;
                let mut messages = Vec::with_capacity(batch.len());
                for (n, message) in batch.into_iter().enumerate() {
                    let payload = base64::engine::general_purpose::STANDARD
                        .decode(message.body.as_bytes())
                        .map_err(|e| {
                            format!("message {n} of the batch: `body` is not base64: {e}")
                        })?;
                    let mut own = (**meta).clone();
                    own.headers
                        .extend(message.properties.into_iter().filter_map(|(name, value)| {
                            let value = match value {
                                serde_json::Value::String(text) => text,
                                other => other.to_string(),
                            };
                            property(&name, value)
                        }));
                    messages.push((payload, Arc::new(own)));
                }
                messages
            }
        };
        let device: crate::event::DeviceId = device.into();
        let mut events = Vec::new();
        for (payload, meta) in messages {
            let readings = decoders
                .for_content_type(content_type(&meta))
                .decode(&payload)
                .map_err(|e| e.0)?;
            for (n, fields) in readings.into_iter().enumerate() {
                events.push(reading::event(
                    fields,
                    device.clone(),
                    self.event_time.as_deref(),
                    &meta,
                    n,
                )?);
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_the_gateways_property_names() {
        let mut headers = HeaderMap::new();
        headers.insert("iothub-app-room", "a b".parse().unwrap());
        headers.insert("IoTHub-MessageId", "m-1".parse().unwrap());
        headers.insert("iothub-contenttype", "application/json".parse().unwrap());
        headers.insert("authorization", "SharedAccessSignature x".parse().unwrap());
        headers.insert("user-agent", "sdk".parse().unwrap());
        let mut properties = header_properties(&headers);
        properties.sort();
        assert_eq!(
            properties,
            vec![
                ("$.ct".to_owned(), "application/json".to_owned()),
                ("$.mid".to_owned(), "m-1".to_owned()),
                ("room".to_owned(), "a b".to_owned()),
            ]
        );
    }
}
