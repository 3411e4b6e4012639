//! A device's telemetry PUBLISH as events: the payload decoded by its content type
//! (`$.ct`, else the configured `decoding`) once its content encoding (`$.ce`) is
//! checked ([`super::content_encoding`]), the property bag as headers, and the
//! properties a hub adds (`iothub-connection-device-id`, `iothub-enqueuedtime`).

use std::sync::Arc;

use crate::event::{Event, EventMeta};
use crate::sources::reading;

pub(super) use crate::sources::iothub::{CONNECTION_DEVICE_ID, Decoders, ENQUEUED_TIME};

/// The metadata every reading of one publish shares.
pub(super) fn meta(
    source: &Arc<str>,
    device_id: &str,
    topic: &str,
    properties: Vec<(String, String)>,
) -> EventMeta {
    let mut meta = EventMeta::received_by(Arc::clone(source));
    let enqueued = meta.received_at.to_string();
    meta.topic = Some(topic.to_owned());
    meta.headers = properties;
    meta.adopt_traceparent_header();
    meta.headers
        .push((CONNECTION_DEVICE_ID.into(), device_id.to_owned()));
    meta.headers.push((ENQUEUED_TIME.into(), enqueued));
    meta
}

/// The readings of one telemetry payload, or why it holds none.
pub(super) fn events(
    decoders: &Decoders,
    device_id: &str,
    payload: &[u8],
    meta: &Arc<EventMeta>,
) -> Result<Vec<Event>, String> {
    let header = |wanted: &str| {
        meta.headers
            .iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value.as_str())
    };
    super::content_encoding::check(header("$.ce"), payload)?;
    let ct = header("$.ct");
    let readings = decoders
        .for_content_type(ct)
        .decode(payload)
        .map_err(|e| e.0)?;
    readings
        .into_iter()
        .enumerate()
        .map(|(n, fields)| reading::event(fields, device_id.into(), None, meta, n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::{Codec, DecodingConfig};

    #[test]
    fn the_content_type_picks_the_decoder() {
        let decoders = Decoders::new(&DecodingConfig {
            codec: Codec::Bytes,
            ..DecodingConfig::default()
        });
        let source: Arc<str> = "gw".into();
        let of = |ct: Option<&str>| {
            let mut properties = vec![("room".to_owned(), "a".to_owned())];
            if let Some(ct) = ct {
                properties.push(("$.ct".into(), ct.into()));
            }
            let meta = Arc::new(meta(
                &source,
                "d1",
                "devices/d1/messages/events/",
                properties,
            ));
            events(&decoders, "d1", br#"{"t": 21}"#, &meta).unwrap()
        };
        let json = of(Some("application/json; charset=utf-8"));
        assert_eq!(json[0].fields().get("t"), Some(&serde_json::json!(21)));
        let raw = of(None);
        assert!(
            raw[0].fields().get("payload").is_some(),
            "configured codec: bytes"
        );
        let headers = &json[0].meta().headers;
        assert!(headers.contains(&(CONNECTION_DEVICE_ID.into(), "d1".into())));
        assert!(headers.iter().any(|(name, _)| name == ENQUEUED_TIME));
        assert!(headers.contains(&("room".into(), "a".into())));
    }

    #[test]
    fn a_traceparent_in_the_property_bag_is_the_trace_id() {
        let source: Arc<str> = "gw".into();
        let properties = vec![(
            "traceparent".to_owned(),
            "00-9cf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )];
        let meta = meta(
            &source,
            "pump-1",
            "devices/pump-1/messages/events/",
            properties,
        );
        assert_eq!(
            meta.trace_id.as_deref(),
            Some("9cf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(meta.is_sampled());
    }
}
