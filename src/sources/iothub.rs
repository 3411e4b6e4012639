//! What the transports of an IoT hub's device protocol share (the `device_gateway`'s MQTT
//! and the `http` source's HTTPS path for the SDKs): the decoder a message's content type
//! picks, and the properties a hub stamps on every message it takes in.

use crate::codecs::{Codec, Decoder, DecodingConfig};

/// The property naming the device that sent a message, as a hub stamps it.
pub(crate) const CONNECTION_DEVICE_ID: &str = "iothub-connection-device-id";
/// When the gateway took the message in (RFC 3339), as a hub stamps it.
pub(crate) const ENQUEUED_TIME: &str = "iothub-enqueuedtime";

/// The decoders a publish may ask for by content type, and the configured one.
pub(crate) struct Decoders {
    configured: Decoder,
    json: Decoder,
    msgpack: Decoder,
    bytes: Decoder,
}

impl Decoders {
    pub(crate) fn new(config: &DecodingConfig) -> Self {
        let with = |codec| {
            DecodingConfig {
                codec,
                ..config.clone()
            }
            .decoder()
        };
        Self {
            configured: config.decoder(),
            json: with(Codec::Json),
            msgpack: with(Codec::Msgpack),
            bytes: with(Codec::Bytes),
        }
    }

    /// The decoder for content type `ct` (parameters such as `; charset=utf-8` ignored);
    /// the configured one when there is none or weir does not know it.
    pub(crate) fn for_content_type(&self, ct: Option<&str>) -> &Decoder {
        let essence = ct
            .map(|ct| ct.split(';').next().unwrap_or_default().trim())
            .map(str::to_ascii_lowercase);
        match essence.as_deref() {
            Some("application/json" | "application/x-ndjson" | "application/ndjson") => &self.json,
            Some("application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack") => {
                &self.msgpack
            }
            Some("application/octet-stream") => &self.bytes,
            _ => &self.configured,
        }
    }
}
