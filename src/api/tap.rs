//! `GET /v1/tap`: live samples of the events passing components, as NDJSON (`weir tap`).
//!
//! The stream attaches a tap ([`crate::topology::tap`]) for as long as the request is
//! open; closing it detaches the tap, and a topology with no tap attached copies nothing.
//! Each line is one JSON object:
//!
//! - `{"notice":"attached","matched":["decode:default",...]}` first: the points it watches
//!   (`component:output`, or `component:input`);
//! - `{"component_id":..,"output":..|"input":true,"event":{..}}` per sampled event;
//! - an empty line at the end of an interval in which nothing else was sent (how a
//!   closed request is noticed);
//! - `{"notice":"limited","skipped":n}` at the end of an interval in which more than
//!   `limit` events came (the rest were skipped), and `{"notice":"dropped","dropped":n}`
//!   when the tap read too slowly and lost events (the pipeline never waits for it).
//!
//! What it never shows: device keys (fields named like them, and connection strings), and
//! the fields any running source, sink or action lists in its `redact` (`***`). A caller
//! whose role is limited to devices by tag sees only the events of those devices.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::routes;

use super::access::Routes;
use super::openapi::ErrorBody;
use super::{ApiState, Caller};
use crate::registry::Registry;
use crate::tokens::Role;
use crate::topology::tap::{Port, Tap, TapFilter, TapHub, Tapped};

pub fn routes(routes: Routes) -> Routes {
    routes.route(routes!(tap))
}

/// The most a tap's queue may hold, in batches.
const MAX_QUEUE: usize = 65_536;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TapQuery {
    /// Comma-separated globs of the outputs to sample: a component id for its default
    /// output, `id.name` for a named one (`decode.errors`, `*.errors`). Without this and
    /// `inputs_of`: every component's outputs.
    outputs_of: Option<String>,
    /// Comma-separated globs of component ids whose input to sample.
    inputs_of: Option<String>,
    /// The most events sent per interval (default 100); the rest are skipped and counted.
    limit: Option<u32>,
    /// The interval `limit` counts over, in milliseconds (default 500).
    interval_ms: Option<u64>,
    /// Batches waiting for this tap before new ones are dropped (default 64, at most
    /// 65536).
    queue: Option<usize>,
}

fn globs(list: Option<&str>) -> Vec<String> {
    list.into_iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Samples live events, as NDJSON, until the caller closes the request.
#[utoipa::path(
    get,
    path = "/v1/tap",
    operation_id = "tap",
    tag = "tap",
    params(TapQuery),
    responses(
        (status = 200, description = "Newline-delimited JSON: notices and sampled events, until the caller closes the request", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "A glob or a bound is not valid", body = ErrorBody),
        (status = 503, description = "No topology runs yet", body = ErrorBody),
    )
)]
async fn tap(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<TapQuery>,
) -> Response {
    let bad = |message: String| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": message })),
        )
            .into_response()
    };
    let filter = match TapFilter::new(
        &globs(query.outputs_of.as_deref()),
        &globs(query.inputs_of.as_deref()),
    ) {
        Ok(filter) => filter,
        Err(message) => return bad(message),
    };
    let limit = query.limit.unwrap_or(100);
    let interval = Duration::from_millis(query.interval_ms.unwrap_or(500));
    let queue = query.queue.unwrap_or(64);
    if limit == 0 || interval.is_zero() || !(1..=MAX_QUEUE).contains(&queue) {
        return bad(format!(
            "`limit` and `interval_ms` must be positive, `queue` 1 to {MAX_QUEUE}"
        ));
    }
    let Some(hub) = state.service::<TapHub>() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": "no topology runs yet" })),
        )
            .into_response();
    };
    // A caller limited to devices by tag sees only their events.
    let scope = match caller.grants.everywhere() >= Some(Role::Operator) {
        true => None,
        false => Some((caller, state.registry())),
    };
    // A caller that sees every device is copied no more than it is shown; for a scoped
    // one, events out of its scope must not spend the limit, so the limit is kept here.
    let budget = scope.is_none().then_some(u64::from(limit));
    let tap = hub.attach(filter, queue, budget);
    let first = json!({ "notice": "attached", "matched": tap.matched });
    let session = Session {
        redacted: hub.redacted(),
        tap,
        scope,
        limit,
        ticks: tokio::time::interval_at(tokio::time::Instant::now() + interval, interval),
        lines: VecDeque::from([line(&first)]),
        sent: 0,
        skipped: 0,
        dropped_reported: 0,
        wrote: false,
    };
    let stream = futures::stream::unfold(session, |mut session| async move {
        let line = session.next_line().await?;
        Some((Ok::<_, std::convert::Infallible>(line), session))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// One open tap request.
struct Session {
    tap: Tap,
    redacted: Arc<Vec<String>>,
    /// A scoped caller and the registry its devices are in.
    scope: Option<(Caller, Option<Arc<Registry>>)>,
    limit: u32,
    ticks: tokio::time::Interval,
    lines: VecDeque<Bytes>,
    /// Events sent and skipped in this interval.
    sent: u32,
    skipped: u64,
    dropped_reported: u64,
    /// Whether a line was written in this interval.
    wrote: bool,
}

impl Session {
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                self.wrote = true;
                return Some(line);
            }
            tokio::select! {
                tapped = self.tap.next() => self.take(tapped?),
                _ = self.ticks.tick() => self.end_interval(),
            }
        }
    }

    fn take(&mut self, tapped: Tapped) {
        let Tapped {
            component,
            port,
            events,
        } = tapped;
        for event in events {
            if !self.shows(event.device_id.as_deref()) {
                continue;
            }
            if self.sent >= self.limit {
                self.skipped += 1;
                continue;
            }
            self.sent += 1;
            let mut value = serde_json::to_value(&event).unwrap_or(Value::Null);
            redact(&mut value, &self.redacted, &mut String::new());
            let record = match &port {
                Port::Output(name) => {
                    json!({ "component_id": component, "output": &**name, "event": value })
                }
                Port::Input => json!({ "component_id": component, "input": true, "event": value }),
            };
            self.lines.push_back(line(&record));
        }
    }

    fn end_interval(&mut self) {
        self.skipped += self.tap.take_skipped();
        if self.skipped > 0 {
            let notice = json!({ "notice": "limited", "skipped": self.skipped });
            self.lines.push_back(line(&notice));
        }
        let dropped = self.tap.dropped();
        if dropped > self.dropped_reported {
            let notice = json!({ "notice": "dropped", "dropped": dropped - self.dropped_reported });
            self.lines.push_back(line(&notice));
            self.dropped_reported = dropped;
        }
        // An empty line in a quiet interval: writing is how a closed request is noticed,
        // and its tap detached.
        if self.lines.is_empty() && !self.wrote {
            self.lines.push_back(Bytes::from_static(b"\n"));
        }
        self.sent = 0;
        self.skipped = 0;
        self.wrote = false;
        if self.scope.is_none() {
            self.tap.refill(u64::from(self.limit));
        }
    }

    /// Whether the caller may see an event of `device`.
    fn shows(&self, device: Option<&str>) -> bool {
        let Some((caller, registry)) = &self.scope else {
            return true;
        };
        let (Some(device), Some(registry)) = (device, registry) else {
            return false;
        };
        registry
            .get(device)
            .is_some_and(|d| caller.grants.on_device(&d.tags) >= Some(Role::Operator))
    }
}

fn line(value: &Value) -> Bytes {
    let mut out = serde_json::to_vec(value).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// Field names that hold a device's key, masked in every tapped event.
const DEVICE_KEY_FIELDS: &[&str] = &[
    "primary_key",
    "secondary_key",
    "primaryKey",
    "secondaryKey",
    "symmetric_key",
    "symmetricKey",
    "shared_access_key",
    "SharedAccessKey",
    "sas_token",
    "sasToken",
];

/// What a masked value shows.
pub const MASK: &str = "***";

/// Masks device keys and the `redacted` fields (a name at any depth, or a dotted path from
/// the top) in `value`; `path` is the dotted path of `value`.
fn redact(value: &mut Value, redacted: &[String], path: &mut String) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let depth = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let masked = DEVICE_KEY_FIELDS.contains(&key.as_str())
                    || redacted.iter().any(|r| r == key || r == path);
                match masked {
                    true => *item = Value::from(MASK),
                    false => redact(item, redacted, path),
                }
                path.truncate(depth);
            }
        }
        Value::Array(items) => {
            for item in items {
                redact(item, redacted, path);
            }
        }
        // A connection string or a SAS token carries a device's key, whatever its field.
        Value::String(text)
            if text.contains("SharedAccessKey=") || text.contains("SharedAccessSignature ") =>
        {
            *value = Value::from(MASK);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_keys_and_listed_fields_are_masked_at_any_depth() {
        let mut event = json!({
            "device_id": "pump-1",
            "temperature": 21.5,
            "password": "hunter2",
            "config": { "primary_key": "abc", "api": { "token": "t" }, "token": "kept" },
            "conn": "HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0",
            "list": [{ "password": "x" }],
        });
        redact(
            &mut event,
            &["password".into(), "config.api.token".into()],
            &mut String::new(),
        );
        assert_eq!(event["temperature"], 21.5);
        assert_eq!(event["password"], MASK);
        assert_eq!(event["config"]["primary_key"], MASK);
        assert_eq!(event["config"]["api"]["token"], MASK);
        assert_eq!(event["config"]["token"], "kept", "a path names one place");
        assert_eq!(event["conn"], MASK);
        assert_eq!(event["list"][0]["password"], MASK);
    }
}
