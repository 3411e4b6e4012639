//! `device_registry`: the registry's lifecycle events (a device created, updated, deleted,
//! enabled, disabled, its key rotated) as events, so pipelines react to them like to
//! telemetry.
//!
//! Each event has the device's id, `event` (`created`, ...), and `device`: the record as it
//! is after the change (as it was, for `deleted`), without its keys. Its event time is the
//! time of the change. A source that falls more than 65,536 changes behind (a huge import
//! into a stalled pipeline) misses the oldest ones: they are counted in
//! `component_errors_total` and logged, never silently lost.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::{SourceComponent, SourceContext};
use crate::config::ServiceUse;
use crate::event::{Event, EventBatch, EventMeta, Fields, Value};
use crate::registry::{self, Change, ChangeKind, Registry};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{ComponentError, ErrorType, EventsReceived, Stage};
use crate::topology::ComponentTask;

/// Most changes gathered into one batch.
const MAX_BATCH: usize = 512;

/// Emits the device registry's lifecycle events. Needs the `registry:` section.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRegistrySourceConfig {
    /// Which changes to emit; default: all of them.
    #[serde(default = "all_kinds")]
    pub events: Vec<ChangeKind>,
}

fn all_kinds() -> Vec<ChangeKind> {
    ChangeKind::ALL.to_vec()
}

impl SourceComponent for DeviceRegistrySourceConfig {
    fn check(&self) -> Vec<crate::config::FieldProblem> {
        match self.events.is_empty() {
            true => vec![crate::config::FieldProblem::at(
                ["events"],
                "expected at least one of created, updated, deleted, enabled, disabled, key_rotated",
            )],
            false => Vec::new(),
        }
    }

    fn services(&self) -> Vec<ServiceUse> {
        vec![registry::used_by("type")]
    }

    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask> {
        let registry = cx.services.get::<Registry>().ok_or_else(|| {
            anyhow::anyhow!(
                "`device_registry` needs the device registry: add a `registry:` section"
            )
        })?;
        // Subscribed now, so nothing that happens between the build and the start is missed.
        let mut feed = registry.subscribe();
        let wanted = self.events.clone();
        Ok(Box::pin(async move {
            let source = cx.id.as_arc();
            loop {
                let first = tokio::select! {
                    _ = cx.shutdown.cancelled() => break,
                    next = feed.recv() => next,
                };
                let mut changes = Vec::new();
                match first {
                    Ok(change) => changes.push(change),
                    Err(RecvError::Lagged(missed)) => missed_changes(&cx, missed),
                    Err(RecvError::Closed) => break,
                }
                while changes.len() < MAX_BATCH {
                    match feed.try_recv() {
                        Ok(change) => changes.push(change),
                        Err(TryRecvError::Lagged(missed)) => missed_changes(&cx, missed),
                        Err(_) => break,
                    }
                }
                let events: Vec<Event> = changes
                    .iter()
                    .filter(|c| wanted.contains(&c.kind))
                    .map(|c| lifecycle_event(c, &source))
                    .collect();
                if events.is_empty() {
                    continue;
                }
                EventsReceived {
                    count: events.len(),
                    bytes: 0,
                }
                .emit(&cx.telemetry);
                cx.out.send(EventBatch::new(events)).await;
            }
            Ok(())
        }))
    }
}

fn missed_changes(cx: &SourceContext, missed: u64) {
    let message =
        format!("fell behind the registry's change feed and missed {missed} lifecycle events");
    ComponentError {
        error_type: ErrorType::Io,
        stage: Stage::Receiving,
        message: &message,
        count: missed as usize,
    }
    .emit(&cx.telemetry);
}

/// The event of one change.
pub fn lifecycle_event(change: &Change, source: &Arc<str>) -> Event {
    let device = &change.device.device;
    let mut fields = Fields::new();
    fields.insert("event".into(), Value::from(change.kind.as_str()));
    fields.insert("device".into(), change.device.snapshot().without_keys());
    let meta = EventMeta::received_at(Arc::clone(source), change.at);
    Event::new(Some(device.id.as_str().into()), fields, Arc::new(meta))
}
