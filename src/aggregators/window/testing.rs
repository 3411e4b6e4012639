//! What the window engines' unit tests build alike: a spec over aggregates of `x` grouped
//! by device, and readings of `x`.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::Value;

use super::{Emit, LatePolicy, WindowAck, WindowCommon, WindowSpec, timestamp};
use crate::aggregators::aggregate::Aggregate;
use crate::config;
use crate::event::{Event, EventMeta, Fields};

/// A spec grouped by device with these `(name, aggregate)` pairs; groups idle at once, so a
/// tick closes their windows.
pub(crate) fn spec(
    aggregates: &[(&str, &str)],
    lateness_ms: u64,
    late_events: LatePolicy,
) -> WindowSpec {
    let aggregates: IndexMap<String, Aggregate> = aggregates
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Aggregate::parse(v).unwrap()))
        .collect();
    let common = WindowCommon {
        group_by: vec!["device_id".into()],
        event_time: None,
        allowed_lateness: config::Duration::from_millis(lateness_ms),
        late_events,
        max_future: config::Duration::from_secs(3600),
        idle_timeout: Some(config::Duration::from_secs(0)),
        aggregates,
        emit: Emit::OnClose,
        max_open_windows: 1_000_000,
        shards: Some(1),
        ack: WindowAck::OnReceive,
        checkpoint_interval: config::Duration::from_secs(5),
    };
    WindowSpec::new("w".into(), &common, Duration::ZERO)
}

/// A reading of `x` from `device` at event time `t` (epoch ms).
pub(crate) fn event(device: &str, t: i64, x: i64) -> Event {
    let mut fields = Fields::new();
    fields.insert("x".into(), Value::from(x));
    let mut event = Event::new(
        Some(device.into()),
        fields,
        Arc::new(EventMeta::received_by("s".into())),
    );
    event.time = timestamp(t);
    event
}
