//! The devices connected to this weir's device gateways, as something else can reach
//! them over their connection: direct-method calls ([`DeviceSessions::call`]) and pushes
//! of desired-property changes ([`DeviceSessions::push_desired`]). A shared service.
//!
//! It has no settings. The first `device_gateway` (or `direct_method` action) makes it
//! through `Services::get_or_insert_with`; the API finds it with `Services::get`. Each
//! admitted connection registers its device ([`DeviceSessions::register`]: a newer
//! connection of the device takes the place of an older one, whichever gateway it is on)
//! and says what the device subscribed to; the registration leaves with the connection.
//! A call goes to the device's connection only, as `ToDevice::Method` with a request id
//! unique in this process, and waits for the answer the connection hands back with
//! [`DeviceSessions::answer`]; an answer to a request id that is not pending for that
//! device is ignored and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::telemetry::DeviceMethodMetrics;

/// Requests queued for one connection before a caller waits for room.
const LINK_CAPACITY: usize = 16;

/// What goes to a device over its connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ToDevice {
    /// A direct-method request: the device answers it with [`DeviceSessions::answer`].
    Method {
        rid: u64,
        name: String,
        payload: Vec<u8>,
    },
    /// A change of the device's desired properties, as a merge patch with its
    /// `$version` (JSON).
    Desired { version: u64, patch: Vec<u8> },
}

/// What a device subscribed to, so that a request of that kind can reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// `$iothub/methods/POST/#`.
    Methods,
    /// `$iothub/twin/PATCH/properties/desired/#`.
    Desired,
}

/// A device's answer to a direct method.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodAnswer {
    /// The status the device chose (an HTTP-like code by convention).
    pub status: i64,
    /// Its payload: JSON when it parses, else the text; `null` when empty.
    pub payload: Value,
}

/// Why a call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the device is not connected (or not subscribed to direct methods)")]
    NotConnected,
    #[error("the device did not answer in time")]
    Timeout,
    #[error("the device disconnected before answering")]
    Disconnected,
}

impl CallError {
    /// The `outcome` label of the call.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::Timeout => "timeout",
            Self::Disconnected => "disconnected",
        }
    }
}

/// One registered connection.
struct Link {
    serial: u64,
    gateway: Arc<str>,
    methods: bool,
    desired: bool,
    to_device: mpsc::Sender<ToDevice>,
}

/// A call waiting for its answer: the device and connection it went to.
struct Pending {
    device_id: String,
    serial: u64,
    answer: oneshot::Sender<MethodAnswer>,
}

/// The service: see the module documentation.
#[derive(Default)]
pub struct DeviceSessions {
    links: Mutex<HashMap<String, Link>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    /// Fires when a device registers or subscribes: callers waiting for it look again.
    changed: Notify,
    metrics: OnceLock<DeviceMethodMetrics>,
}

/// A connection's place in the table; dropping it takes the device out (unless a newer
/// connection took its place) and ends the calls waiting for it.
pub struct Registration {
    sessions: Arc<DeviceSessions>,
    device_id: String,
    serial: u64,
}

impl DeviceSessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts calls into `metrics` from now on (once; later calls do nothing).
    pub fn report_to(&self, metrics: DeviceMethodMetrics) {
        let _ = self.metrics.set(metrics);
    }

    /// Registers a connection of `device_id` on gateway `gateway`, subscribed to
    /// nothing yet; the requests for it arrive on the receiver.
    pub fn register(
        self: &Arc<Self>,
        device_id: &str,
        gateway: Arc<str>,
    ) -> (Registration, mpsc::Receiver<ToDevice>) {
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let (to_device, requests) = mpsc::channel(LINK_CAPACITY);
        let link = Link {
            serial,
            gateway,
            methods: false,
            desired: false,
            to_device,
        };
        self.lock_links().insert(device_id.to_owned(), link);
        self.changed.notify_waiters();
        let registration = Registration {
            sessions: Arc::clone(self),
            device_id: device_id.to_owned(),
            serial,
        };
        (registration, requests)
    }

    /// Calls method `name` on `device_id` with `payload`: waits up to `connect_timeout`
    /// for the device to be connected and subscribed to direct methods, then up to
    /// `response_timeout` for its answer.
    pub async fn call(
        &self,
        device_id: &str,
        name: &str,
        payload: &Value,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<MethodAnswer, CallError> {
        let result = self
            .try_call(device_id, name, payload, response_timeout, connect_timeout)
            .await;
        if let Some(metrics) = self.metrics.get() {
            match &result {
                Ok((_, took)) => {
                    metrics.outcome("answered").inc();
                    metrics.latency.observe(took.as_secs_f64());
                }
                Err(e) => {
                    metrics.outcome(e.outcome()).inc();
                }
            }
        }
        result.map(|(answer, _)| answer)
    }

    async fn try_call(
        &self,
        device_id: &str,
        name: &str,
        payload: &Value,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<(MethodAnswer, Duration), CallError> {
        let (serial, to_device) = self
            .subscribed(device_id, Subscription::Methods, connect_timeout)
            .await
            .ok_or(CallError::NotConnected)?;
        let rid = self.next.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.lock_pending().insert(
            rid,
            Pending {
                device_id: device_id.to_owned(),
                serial,
                answer,
            },
        );
        let request = ToDevice::Method {
            rid,
            name: name.to_owned(),
            payload: serde_json::to_vec(payload).unwrap_or_else(|_| b"null".to_vec()),
        };
        let started = Instant::now();
        let exchange = async {
            to_device
                .send(request)
                .await
                .map_err(|_| CallError::NotConnected)?;
            answered.await.map_err(|_| CallError::Disconnected)
        };
        let result = match tokio::time::timeout(response_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout),
        };
        // Answered, or not: a late answer is a stray one from now on.
        self.lock_pending().remove(&rid);
        result.map(|answer| (answer, started.elapsed()))
    }

    /// Hands the answer of `device_id` to request `rid` to its caller; `false` (and
    /// counted) when no call of that device waits for it.
    pub fn answer(&self, device_id: &str, rid: &str, status: i64, payload: &[u8]) -> bool {
        let waiting = rid.parse::<u64>().ok().and_then(|rid| {
            let mut pending = self.lock_pending();
            let theirs = pending.get(&rid).is_some_and(|p| p.device_id == device_id);
            theirs.then(|| pending.remove(&rid)).flatten()
        });
        let delivered = waiting.is_some_and(|pending| {
            let payload = answer_payload(payload);
            pending
                .answer
                .send(MethodAnswer { status, payload })
                .is_ok()
        });
        if !delivered && let Some(metrics) = self.metrics.get() {
            metrics.stray_responses.inc();
        }
        delivered
    }

    /// Pushes a desired-property change to `device_id` if it is connected to gateway
    /// `gateway` and subscribed to such changes; whether it was queued for the device.
    pub fn push_desired(
        &self,
        gateway: &str,
        device_id: &str,
        version: u64,
        patch: Vec<u8>,
    ) -> bool {
        let links = self.lock_links();
        let Some(link) = links.get(device_id) else {
            return false;
        };
        if !link.desired || &*link.gateway != gateway {
            return false;
        }
        // Never waits: a connection too busy to take it is a device whose twin will be
        // stale until it asks for it again (logged by the caller).
        link.to_device
            .try_send(ToDevice::Desired { version, patch })
            .is_ok()
    }

    /// The connection of `device_id` once it is subscribed to `kind`, waiting up to
    /// `wait` for it.
    async fn subscribed(
        &self,
        device_id: &str,
        kind: Subscription,
        wait: Duration,
    ) -> Option<(u64, mpsc::Sender<ToDevice>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a change in between is not missed.
            changed.as_mut().enable();
            if let Some(link) = self.lock_links().get(device_id) {
                let ready = match kind {
                    Subscription::Methods => link.methods,
                    Subscription::Desired => link.desired,
                };
                if ready && !link.to_device.is_closed() {
                    return Some((link.serial, link.to_device.clone()));
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Whether `device_id` is connected and subscribed to `kind` right now.
    pub fn is_subscribed(&self, device_id: &str, kind: Subscription) -> bool {
        self.lock_links()
            .get(device_id)
            .is_some_and(|link| match kind {
                Subscription::Methods => link.methods,
                Subscription::Desired => link.desired,
            })
    }

    fn lock_links(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Registration {
    /// The device subscribed to (`on`) or unsubscribed from `kind`.
    pub fn set(&self, kind: Subscription, on: bool) {
        let mut links = self.sessions.lock_links();
        if let Some(link) = links
            .get_mut(&self.device_id)
            .filter(|l| l.serial == self.serial)
        {
            match kind {
                Subscription::Methods => link.methods = on,
                Subscription::Desired => link.desired = on,
            }
        }
        drop(links);
        self.sessions.changed.notify_waiters();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut links = self.sessions.lock_links();
        if links
            .get(&self.device_id)
            .is_some_and(|l| l.serial == self.serial)
        {
            links.remove(&self.device_id);
        }
        drop(links);
        // Calls waiting for this connection's answers end now ("disconnected").
        self.sessions
            .lock_pending()
            .retain(|_, p| p.serial != self.serial);
    }
}

/// A device's answer payload as JSON: parsed when it is JSON, else its text; `null` when
/// empty.
fn answer_payload(payload: &[u8]) -> Value {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

#[cfg(test)]
mod tests;
