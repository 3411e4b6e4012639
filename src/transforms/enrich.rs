//! `enrich`: joins the device registry into events as `device`.
//!
//! The record comes from the registry's memory, which every change updates as it commits,
//! so an update made through the API is seen by the next event (no polling, no reload).

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FunctionTransform, TransformComponent, TransformContext, TransformOutput};
use crate::config::ServiceUse;
use crate::config::{FieldProblem, OutputName};
use crate::event::{Event, EventBatch};
use crate::registry::{self, Registry};

/// The output of events whose device the registry does not know (`on_unknown_device: route`).
pub const UNKNOWN: &str = "unknown";

/// Adds the registry record of each event's device as `device`: `id`, `status`, the tags as
/// fields (`device.max_temp`, `device.site`), and `desired`/`reported` properties. Keys are
/// never added. Needs the `registry:` section.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// What happens to an event whose device is not registered (or that names none):
    /// `drop` (counted as discarded), `keep` (passes without `device`) or `route` (to
    /// `<id>.unknown`).
    #[serde(default)]
    pub on_unknown_device: OnUnknownDevice,
    /// The field the record goes into.
    #[serde(default = "default_field")]
    pub field: String,
}

fn default_field() -> String {
    "device".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnknownDevice {
    #[default]
    Drop,
    Keep,
    Route,
}

impl TransformComponent for EnrichConfig {
    fn named_outputs(&self) -> Vec<OutputName> {
        match self.on_unknown_device {
            OnUnknownDevice::Route => vec![OutputName(UNKNOWN.into())],
            _ => Vec::new(),
        }
    }

    fn check(&self) -> Vec<FieldProblem> {
        match self.field.trim().is_empty() {
            true => vec![FieldProblem::at(["field"], "expected a field name")],
            false => Vec::new(),
        }
    }

    fn services(&self) -> Vec<ServiceUse> {
        vec![registry::used_by("type")]
    }

    fn build(&self, cx: &TransformContext) -> anyhow::Result<Box<dyn FunctionTransform>> {
        let registry = cx.services.get::<Registry>().ok_or_else(|| {
            anyhow::anyhow!("`enrich` needs the device registry: add a `registry:` section")
        })?;
        Ok(Box::new(Enrich::new(registry, self)))
    }
}

pub struct Enrich {
    registry: Arc<Registry>,
    field: String,
    on_unknown: OnUnknownDevice,
}

impl Enrich {
    pub fn new(registry: Arc<Registry>, config: &EnrichConfig) -> Self {
        Self {
            registry,
            field: config.field.clone(),
            on_unknown: config.on_unknown_device,
        }
    }

    /// Enriches one event; `false` if its device is unknown (the event is handled).
    fn enrich(&self, mut event: Event, out: &mut TransformOutput) -> bool {
        let entry = event
            .device_id
            .as_deref()
            .and_then(|id| self.registry.lookup(id));
        match entry {
            Some(entry) => {
                event.insert(self.field.as_str(), entry.enrichment.clone());
                out.push(event);
                true
            }
            None => {
                match self.on_unknown {
                    OnUnknownDevice::Drop => {}
                    OnUnknownDevice::Keep => out.push(event),
                    OnUnknownDevice::Route => out.push_named(UNKNOWN, event),
                }
                false
            }
        }
    }
}

impl FunctionTransform for Enrich {
    fn transform(&mut self, event: Event, out: &mut TransformOutput) {
        self.transform_batch(EventBatch::new(vec![event]), out);
    }

    fn transform_batch(&mut self, batch: EventBatch, out: &mut TransformOutput) {
        let looked_up = batch.len() as u64;
        let mut dropped = 0;
        for event in batch {
            if !self.enrich(event, out) && self.on_unknown == OnUnknownDevice::Drop {
                dropped += 1;
            }
        }
        self.registry.count_lookups(looked_up);
        if dropped > 0 {
            out.discard(dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ComponentId;
    use crate::event::{EventMeta, Fields};
    use crate::registry::{DevicePatch, DeviceSpec};
    use crate::telemetry::{ComponentTelemetry, Telemetry};
    use crate::template::Condition;

    fn event(device: &str, temperature: f64) -> Event {
        let mut fields = Fields::new();
        fields.insert("temperature".into(), temperature.into());
        Event::new(
            Some(device.into()),
            fields,
            Arc::new(EventMeta::received_by("test".into())),
        )
    }

    fn output(outputs: &[OutputName]) -> TransformOutput {
        let id = ComponentId::new("enriched");
        let telemetry: ComponentTelemetry =
            Telemetry::new().component(&id, crate::config::ComponentKind::Transform, "enrich");
        let mut all = outputs.to_vec();
        all.push(OutputName::errors());
        TransformOutput::new(&id, telemetry, &all)
    }

    #[test]
    fn adds_the_record_so_conditions_see_device_tags_and_routes_unknown_devices() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("r.redb")).unwrap();
        registry
            .create(DeviceSpec {
                id: "dev-1".into(),
                fields: DevicePatch {
                    tags: Some(serde_json::from_str(r#"{"max_temp": 95}"#).unwrap()),
                    ..DevicePatch::default()
                },
            })
            .unwrap();
        let config: EnrichConfig =
            serde_json::from_value(serde_json::json!({"on_unknown_device": "route"})).unwrap();
        let mut enrich = Enrich::new(Arc::clone(&registry), &config);
        let mut out = output(&config.named_outputs());
        enrich.transform_batch(
            EventBatch::new(vec![event("dev-1", 99.0), event("ghost", 1.0)]),
            &mut out,
        );
        let outputs = out.take();
        let default = &outputs[0].1;
        assert_eq!(default.len(), 1);
        assert_eq!(default[0].get("device").unwrap()["max_temp"], 95);
        assert!(
            default[0]
                .get("device")
                .unwrap()
                .get("primary_key")
                .is_none()
        );
        let hot: Condition =
            serde_json::from_value("temperature > device.max_temp".into()).unwrap();
        assert!(hot.matches(&default[0].view()).unwrap());
        assert_eq!(outputs[1].0, UNKNOWN);
        assert_eq!(outputs[1].1.len(), 1);

        // A change is seen by the very next event.
        registry
            .update(
                "dev-1",
                DevicePatch {
                    tags: Some(serde_json::from_str(r#"{"max_temp": 120}"#).unwrap()),
                    ..DevicePatch::default()
                },
                None,
            )
            .unwrap();
        enrich.transform_batch(EventBatch::new(vec![event("dev-1", 99.0)]), &mut out);
        let outputs = out.take();
        assert_eq!(outputs[0].1[0].get("device").unwrap()["max_temp"], 120);
        assert!(!hot.matches(&outputs[0].1[0].view()).unwrap());
    }
}
