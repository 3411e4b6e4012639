//! `direct_method`: calls a direct method on a device connected to a `device_gateway`
//! (an overheating alarm → `reduce_load` on its device), through the `device_sessions`
//! service, under the policies every action has.
//!
//! A call counts as sent when the device answered, whatever status it chose. A device
//! that is not connected (or not subscribed to direct methods) within `connect_timeout`,
//! or that disconnects before answering, is a transient failure: retried under `retry`,
//! then dead-lettered. A device that does not answer within `response_timeout` is a
//! permanent one (dead-lettered at once): it may have acted on the call, and a method is
//! not repeated behind the operator's back. Every call that ended — answered or given up
//! — comes out as an event on `<id>.outcomes`: `device_id`, `method`, `outcome`
//! (`answered`, `not_connected`, `timeout`, `disconnected`, `failed`), and for an answer
//! its `status` and `payload`, else `error`.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::idempotency::IdempotencyKey;
use super::policy::action_config;
use super::runner::{self, Notifier, OUTCOMES, SendError};
use super::{ActionComponent, ActionContext};
use crate::config::{Duration, FieldProblem, OutputName};
use crate::device_sessions::{CallError, DeviceSessions, MethodAnswer};
use crate::event::{Event, EventMeta};
use crate::template::Template;
use crate::topology::ComponentTask;

action_config! {
    /// Calls a direct method on a device connected to a device gateway, one call per event.
    pub struct DirectMethodConfig {
        /// The device to call; default `{{ device_id }}` (the event's device).
        #[serde(default = "default_device_id")]
        pub device_id: Template,
        /// The method's name, e.g. `reduce_load`.
        pub method: Template,
        /// The method's payload: a template that renders JSON (e.g. `{"percent": 20}`);
        /// text that is not JSON is sent as a JSON string. Default: `null`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub payload: Option<Template>,
        /// How long to wait for the device's answer, 5 s to 300 s.
        #[serde(default = "default_response_timeout")]
        pub response_timeout: Duration,
        /// How long to wait for the device to be connected and subscribed to direct
        /// methods, at most 300 s (default 0: it must be connected when the call is made;
        /// `retry` tries again later).
        #[serde(default = "default_connect_timeout")]
        pub connect_timeout: Duration,
    }
}

fn default_device_id() -> Template {
    // A constant template always compiles.
    Template::compile("{{ device_id }}").unwrap_or_else(|_| unreachable!())
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(0)
}

impl ActionComponent for DirectMethodConfig {
    fn buffer(&self) -> crate::buffers::BufferConfig {
        self.policies().buffer()
    }

    fn warnings(&self) -> Vec<FieldProblem> {
        self.policies().warnings()
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.policies().check();
        let response = self.response_timeout.get().as_secs_f64();
        if !(5.0..=300.0).contains(&response) {
            problems.push(FieldProblem::at(
                ["response_timeout"],
                "expected between 5s and 300s (as an IoT hub allows)",
            ));
        }
        if self.connect_timeout.get().as_secs_f64() > 300.0 {
            problems.push(FieldProblem::at(
                ["connect_timeout"],
                "expected at most 300s (as an IoT hub allows)",
            ));
        }
        problems
    }

    fn named_outputs(&self) -> Vec<OutputName> {
        vec![OutputName(OUTCOMES.into())]
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask> {
        let sessions = cx
            .services
            .get_or_insert_with(|| Arc::new(DeviceSessions::new()));
        sessions.report_to(cx.telemetry.device_method_metrics());
        let notifier = MethodNotifier {
            component: cx.id.as_arc(),
            sessions,
            device_id: self.device_id.clone(),
            method: self.method.clone(),
            payload: self.payload.clone(),
            response_timeout: self.response_timeout.get(),
            connect_timeout: self.connect_timeout.get(),
        };
        runner::spawn(cx, self.policies(), notifier)
    }
}

struct MethodNotifier {
    component: Arc<str>,
    sessions: Arc<DeviceSessions>,
    device_id: Template,
    method: Template,
    payload: Option<Template>,
    response_timeout: std::time::Duration,
    connect_timeout: std::time::Duration,
}

/// One call, and what became of its last attempt.
pub struct Call {
    device_id: String,
    method: String,
    payload: Value,
    last: Mutex<Option<Result<MethodAnswer, CallError>>>,
}

impl Notifier for MethodNotifier {
    type Message = Call;

    fn prepare(&self, event: &Event) -> Result<Call, String> {
        let view = event.view();
        let device_id = runner::render(&self.device_id, &view, "device_id")?;
        if device_id.is_empty() {
            return Err("`device_id` rendered empty".into());
        }
        let method = runner::render(&self.method, &view, "method")?;
        if method.is_empty() {
            return Err("`method` rendered empty".into());
        }
        let payload = match &self.payload {
            Some(template) => {
                let text = runner::render(template, &view, "payload")?;
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
            None => Value::Null,
        };
        Ok(Call {
            device_id,
            method,
            payload,
            last: Mutex::new(None),
        })
    }

    fn identity(&self, call: &Call, hasher: &mut dyn Hasher) {
        let mut hasher = hasher;
        call.device_id.hash(&mut hasher);
        call.method.hash(&mut hasher);
        call.payload.to_string().hash(&mut hasher);
    }

    async fn send(&self, call: &Call, _key: &IdempotencyKey) -> Result<(), SendError> {
        let result = self
            .sessions
            .call(
                &call.device_id,
                &call.method,
                &call.payload,
                self.response_timeout,
                self.connect_timeout,
            )
            .await;
        let failure = result.as_ref().err().map(|e| {
            let message = format!("device `{}`, method `{}`: {e}", call.device_id, call.method);
            match e {
                CallError::Timeout => SendError::Permanent(message),
                CallError::NotConnected | CallError::Disconnected => SendError::Transient(message),
            }
        });
        *call.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        failure.map_or(Ok(()), Err)
    }

    fn outcome(&self, event: &Event, call: &Call, result: Result<(), &str>) -> Option<Event> {
        let mut fields = Map::new();
        fields.insert("device_id".into(), call.device_id.as_str().into());
        fields.insert("method".into(), call.method.as_str().into());
        let last = call.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (last, result) {
            (Some(Ok(answer)), _) => {
                fields.insert("outcome".into(), "answered".into());
                fields.insert("status".into(), answer.status.into());
                fields.insert("payload".into(), answer.payload);
            }
            (Some(Err(e)), Err(error)) => {
                fields.insert("outcome".into(), e.outcome().into());
                fields.insert("error".into(), error.into());
            }
            (_, error) => {
                fields.insert("outcome".into(), "failed".into());
                if let Err(error) = error {
                    fields.insert("error".into(), error.into());
                }
            }
        }
        let meta = EventMeta::received_by(Arc::clone(&self.component));
        let mut report = Event::new(Some(call.device_id.as_str().into()), fields, Arc::new(meta));
        // The outcome belongs to the reading that asked for the call.
        report.time = event.time;
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DirectMethodConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn timeouts_are_held_to_a_hubs_bounds() {
        let fine = config(r#"{"method": "reduce_load"}"#);
        assert!(fine.check().is_empty(), "{:?}", fine.check());
        assert_eq!(fine.named_outputs(), vec![OutputName("outcomes".into())]);
        let short = config(r#"{"method": "m", "response_timeout": "1s"}"#);
        assert_eq!(short.check().len(), 1);
        let long = config(r#"{"method": "m", "connect_timeout": "301s"}"#);
        assert_eq!(long.check().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_device_is_transient_and_reported_as_not_connected() {
        let notifier = MethodNotifier {
            component: "act".into(),
            sessions: Arc::new(DeviceSessions::new()),
            device_id: default_device_id(),
            method: Template::compile("reduce_{{ level }}").unwrap(),
            payload: Some(Template::compile(r#"{"by": {{ by }}}"#).unwrap()),
            response_timeout: std::time::Duration::from_secs(5),
            connect_timeout: std::time::Duration::ZERO,
        };
        let mut fields = Map::new();
        fields.insert("level".into(), "load".into());
        fields.insert("by".into(), 20.into());
        let meta = Arc::new(EventMeta::received_by("src".into()));
        let event = Event::new(Some("pump-1".into()), fields, meta);
        let call = notifier.prepare(&event).unwrap();
        assert_eq!(call.method, "reduce_load");
        assert_eq!(call.payload, serde_json::json!({"by": 20}));
        let key = IdempotencyKey::of(&event);
        let sent = notifier.send(&call, &key).await;
        assert!(matches!(sent, Err(SendError::Transient(_))));
        let report = notifier.outcome(&event, &call, Err("gave up")).unwrap();
        assert_eq!(report.fields()["outcome"], "not_connected");
        assert_eq!(report.fields()["device_id"], "pump-1");
        assert_eq!(report.fields()["error"], "gave up");
    }
}
