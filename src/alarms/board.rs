//! The alarm board: what the API knows about the alarms of every running `alarm` transform.
//!
//! Each alarm transform publishes its active alarms here when they change and takes
//! acknowledgements from here. The board is one of the topology's shared services (the
//! first alarm transform makes it), so `/v1/alarms` finds it as every other service is
//! found and sees every alarm transform without reaching into the graph.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

use super::Severity;
use crate::config::ComponentId;
use crate::event::Fields;

/// One active alarm as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlarmSummary {
    pub id: String,
    /// The alarm's name (`name`, default: the component id).
    pub alarm: String,
    /// The `alarm` transform that owns it.
    pub component: String,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub severity: Severity,
    /// Event time of the reading that raised it.
    #[schema(value_type = String, format = DateTime)]
    pub started_at: jiff::Timestamp,
    pub acknowledged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub acknowledged_at: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    /// The fields of the reading that raised it (or last changed its severity).
    #[schema(value_type = Object)]
    pub values: Fields,
}

/// What an acknowledgement came to.
#[derive(Debug)]
pub enum AckOutcome {
    Acknowledged(AlarmSummary),
    AlreadyAcknowledged(AlarmSummary),
    /// The alarm is not active (any more).
    NotFound,
}

/// An acknowledgement asked for through the API.
pub struct AckRequest {
    pub alarm_id: String,
    pub by: Option<String>,
    pub respond: oneshot::Sender<AckOutcome>,
}

/// One alarm transform's entry on the board.
pub struct BoardEntry {
    active: Mutex<BTreeMap<String, AlarmSummary>>,
    acks: mpsc::UnboundedSender<AckRequest>,
    /// Wakes the transform's task when an acknowledgement is waiting.
    wake: Arc<Notify>,
}

impl BoardEntry {
    /// Replaces the published alarm of `key` (`None`: it cleared).
    pub fn publish(&self, key: &str, summary: Option<AlarmSummary>) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        match summary {
            Some(summary) => active.insert(key.to_owned(), summary),
            None => active.remove(key),
        };
    }

    fn holds(&self, alarm_id: &str) -> bool {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.values().any(|a| a.id == alarm_id)
    }

    fn list(&self) -> Vec<AlarmSummary> {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.values().cloned().collect()
    }
}

/// What the transform keeps of its entry: where acknowledgements arrive.
pub struct BoardInbox {
    pub entry: Arc<BoardEntry>,
    pub acks: mpsc::UnboundedReceiver<AckRequest>,
    pub wake: Arc<Notify>,
}

/// Every alarm transform's entry, by component id.
#[derive(Default)]
pub struct AlarmBoard {
    entries: Mutex<BTreeMap<ComponentId, Arc<BoardEntry>>>,
}

impl AlarmBoard {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers (or replaces, on a reload) the entry of alarm transform `id`.
    pub fn register(&self, id: &ComponentId) -> BoardInbox {
        let (tx, rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let entry = Arc::new(BoardEntry {
            active: Mutex::new(BTreeMap::new()),
            acks: tx,
            wake: Arc::clone(&wake),
        });
        self.lock().insert(id.clone(), Arc::clone(&entry));
        BoardInbox {
            entry,
            acks: rx,
            wake,
        }
    }

    /// Removes `entry` if it is still the one registered for `id` (a successor may have
    /// replaced it).
    pub fn unregister(&self, id: &ComponentId, entry: &Arc<BoardEntry>) {
        let mut entries = self.lock();
        if entries.get(id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            entries.remove(id);
        }
    }

    /// Every active alarm, by component and key.
    pub fn list(&self) -> Vec<AlarmSummary> {
        let entries: Vec<_> = self.lock().values().cloned().collect();
        entries.iter().flat_map(|e| e.list()).collect()
    }

    /// Asks the transform holding `alarm_id` to acknowledge it; `None` if no transform
    /// holds it or the one that did has stopped.
    pub async fn acknowledge(&self, alarm_id: &str, by: Option<String>) -> Option<AckOutcome> {
        let entry = self.lock().values().find(|e| e.holds(alarm_id)).cloned()?;
        let (respond, outcome) = oneshot::channel();
        let request = AckRequest {
            alarm_id: alarm_id.to_owned(),
            by,
            respond,
        };
        entry.acks.send(request).ok()?;
        entry.wake.notify_one();
        outcome.await.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ComponentId, Arc<BoardEntry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}
