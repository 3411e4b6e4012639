//! Turning a request body into events: their metadata from the headers, the device from
//! the path or a field; and a body that cannot be read kept on `<id>.errors`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderMap;

use super::Handler;
use crate::config::OutputName;
use crate::event::{Event, EventBatch, EventMeta};
use crate::sources::reading;

impl Handler {
    pub(super) fn meta(&self, headers: &HeaderMap) -> EventMeta {
        let mut meta = EventMeta::received_by(Arc::clone(&self.source));
        for name in &self.headers {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                meta.headers.push((name.clone(), value.to_owned()));
            }
        }
        if let Some(traceparent) = headers
            .get(crate::event::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
        {
            meta.set_traceparent(traceparent);
        }
        meta
    }

    /// Decodes the body into events; any bad reading rejects the whole request, so a client
    /// can retry it as a unit.
    pub(super) fn decode(
        &self,
        body: &Bytes,
        path_device: Option<&str>,
        meta: &Arc<EventMeta>,
    ) -> Result<Vec<Event>, String> {
        let readings = self.decoder.decode(body).map_err(|e| e.0)?;
        let mut events = Vec::with_capacity(readings.len());
        // One shared id for every reading of a request to a device's path.
        let path_device: Option<crate::event::DeviceId> = path_device.map(Into::into);
        for (n, fields) in readings.into_iter().enumerate() {
            let device_id = match (&path_device, &self.device_id_field) {
                (Some(id), _) => id.clone(),
                (None, Some(field)) => reading::device_from_field(&fields, field)
                    .map_err(|e| format!("reading {n}: {e}"))?,
                (None, None) => return Err("no device id".into()),
            };
            events.push(reading::event(
                fields,
                device_id,
                self.event_time.as_deref(),
                meta,
                n,
            )?);
        }
        Ok(events)
    }

    /// Keeps a refused body on `<id>.errors` (truncated to 64 KiB) for inspection.
    pub(super) async fn dead_letter(
        &self,
        body: &Bytes,
        path_device: Option<&str>,
        meta: &Arc<EventMeta>,
        reason: &str,
    ) {
        let event = reading::dead_letter(
            body,
            path_device.map(Into::into),
            Arc::clone(meta),
            &self.source,
            reason,
        );
        let send = self
            .out
            .send_named(OutputName::ERRORS, EventBatch::new(vec![event]));
        // A dead letter must not hold the client hostage to a stalled error branch.
        let _ = tokio::time::timeout(self.queue_timeout, send).await;
    }
}
