//! Cloud-to-device messages waiting for their device, a shared service: the admin API
//! (`POST /v1/devices/{id}/messages/devicebound`) and the `device_message` action queue
//! them, a `device_gateway` delivers them to the device's connection and completes each
//! on the device's PUBACK.
//!
//! It has no settings of its own. The first `device_gateway` makes it (through
//! `Services::get_or_insert_with`) and every gateway opens its own [`Queues`] in it, by
//! component id, kept in `data_dir/devicebound/<gateway id>.json` (see [`queue`]); the
//! API and actions find it with `Services::get` and pick a gateway with
//! [`Devicebound::gateway`] (by id; the only one when there is one). A gateway's queues
//! live as long as some instance of it runs, so a reload that rebuilds the gateway keeps
//! them, and one that removes it stops offering it.
//!
//! A message carries the `ack` its sender asked for; when it leaves its queue (completed,
//! expired, delivered too often) the outcome is kept, in the same file, until the
//! gateway's outputs (`<id>.feedback`, `<id>.devicebound_dead_letters`) committed it
//! ([`feedback`]).

pub mod feedback;
mod queue;
mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use feedback::{Ack, Outcome, Settled};
pub use queue::{NewMessage, QueueError, Queued, Queues};

/// Where each gateway's queue file goes, under `data_dir`.
const DIR: &str = "devicebound";
/// The one file of the first format, before gateways had one each.
const LEGACY_FILE: &str = "devicebound.json";

/// One message for a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `$.mid`, unique per message.
    pub id: String,
    /// The body, as the device receives it.
    pub payload: String,
    /// Application properties, in the topic's property bag.
    #[serde(default)]
    pub properties: Vec<(String, String)>,
    pub enqueued_at: Timestamp,
    pub expires_at: Timestamp,
    /// The feedback its sender asked for.
    #[serde(default, skip_serializing_if = "Ack::is_none")]
    pub ack: Ack,
    /// Times it was sent to the device so far.
    #[serde(default)]
    pub delivery_count: u32,
}

/// The bounds of one gateway's queues (its `devicebound` settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Messages one device may have waiting (an IoT hub allows 50).
    pub max_queued: usize,
    /// Deliveries without an acknowledgement before a message is dead-lettered.
    pub max_delivery_count: u32,
    /// Settled messages (feedback, dead letters) kept while the outputs do not take them.
    pub max_settled: usize,
}

/// Why no gateway's queues could be picked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoGateway {
    #[error("no device gateway runs: add a `device_gateway` source to the pipeline")]
    None,
    #[error("{} device gateways run: name one with `gateway` ({})", .0.len(), .0.join(", "))]
    Ambiguous(Vec<String>),
    #[error("no device gateway `{asked}` runs; the gateways are: {}", choices.join(", "))]
    Unknown { asked: String, choices: Vec<String> },
}

/// Every gateway's queues, by the gateway's component id: see the module documentation.
#[derive(Default)]
pub struct Devicebound {
    gateways: Mutex<BTreeMap<String, Weak<Queues>>>,
}

impl Devicebound {
    /// The queues of gateway `id`: the ones a running instance of it holds, or those its
    /// file in `data_dir` keeps (the legacy `data_dir/devicebound.json` becomes the file
    /// of the first gateway that opens one, when it has none yet).
    pub fn open(&self, id: &str, data_dir: &Path, limits: Limits) -> anyhow::Result<Arc<Queues>> {
        let mut gateways = self.lock();
        if let Some(queues) = gateways.get(id).and_then(Weak::upgrade) {
            queues.set_limits(limits);
            return Ok(queues);
        }
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let file = dir.join(format!("{id}.json"));
        let legacy = data_dir.join(LEGACY_FILE);
        if !file.exists() && legacy.exists() {
            std::fs::rename(&legacy, &file).map_err(|e| {
                anyhow::anyhow!(
                    "cannot move {} to {}: {e}",
                    legacy.display(),
                    file.display()
                )
            })?;
            tracing::info!(gateway = id, file = %file.display(), "the cloud-to-device queues of {} are now this gateway's", legacy.display());
        }
        let queues = Arc::new(Queues::open(file, limits)?);
        gateways.insert(id.to_owned(), Arc::downgrade(&queues));
        Ok(queues)
    }

    /// The queues of gateway `asked`, or of the only gateway when none is asked for.
    pub fn gateway(&self, asked: Option<&str>) -> Result<Arc<Queues>, NoGateway> {
        let mut gateways = self.lock();
        gateways.retain(|_, queues| queues.strong_count() > 0);
        if gateways.is_empty() {
            return Err(NoGateway::None);
        }
        let choices = || gateways.keys().cloned().collect::<Vec<_>>();
        match asked {
            Some(asked) => {
                gateways
                    .get(asked)
                    .and_then(Weak::upgrade)
                    .ok_or_else(|| NoGateway::Unknown {
                        asked: asked.to_owned(),
                        choices: choices(),
                    })
            }
            None => {
                let mut live = gateways.values().filter_map(Weak::upgrade);
                match (live.next(), live.next()) {
                    (Some(only), None) => Ok(only),
                    (None, _) => Err(NoGateway::None),
                    (Some(_), Some(_)) => Err(NoGateway::Ambiguous(choices())),
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Weak<Queues>>> {
        self.gateways.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
