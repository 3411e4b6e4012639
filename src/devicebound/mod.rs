//! Cloud-to-device messages waiting for their device, a shared service: the admin API
//! queues them (`POST /v1/devices/{id}/messages/devicebound`), a `device_gateway`
//! delivers them to the device's connection and completes each on the device's PUBACK.
//!
//! It has no settings. The first `device_gateway` makes it (through
//! `Services::get_or_insert_with`); the API finds it with `Services::get` and answers 503
//! while no gateway runs. At most [`MAX_QUEUED`] messages wait per device, each until its
//! expiry; the queues are rewritten to `data_dir/devicebound.json` (a temporary file,
//! fsync'd and renamed) on every change, so a restart keeps them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use jiff::Timestamp;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Messages one device may have waiting, as an IoT hub allows.
pub const MAX_QUEUED: usize = 50;

const FILE: &str = "devicebound.json";

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
}

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("device `{0}` already has {MAX_QUEUED} messages waiting")]
    Full(String),
    #[error("the queue could not be written: {0}")]
    Store(#[from] std::io::Error),
}

/// The queues: see the module documentation.
pub struct Devicebound {
    file: PathBuf,
    queues: Mutex<BTreeMap<String, VecDeque<Message>>>,
    /// Wakes the connection of a device when a message is queued for it.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Messages waiting, all devices together (the first gateway's gauge).
    depth: OnceLock<Gauge>,
}

impl Devicebound {
    /// The queues kept in `data_dir`, as the last run left them.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let file = data_dir.join(FILE);
        let queues = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("{} is not a cloud-to-device queue: {e}", file.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", file.display()),
        };
        Ok(Self {
            file,
            queues: Mutex::new(queues),
            waiters: Mutex::default(),
            depth: OnceLock::new(),
        })
    }

    /// Queues `payload` for `device_id` until `ttl` has passed; the message as queued.
    pub fn enqueue(
        &self,
        device_id: &str,
        payload: String,
        properties: Vec<(String, String)>,
        ttl: std::time::Duration,
    ) -> Result<Message, QueueError> {
        let now = Timestamp::now();
        let ttl = jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::MAX);
        let message = Message {
            id: uuid_like(),
            payload,
            properties,
            enqueued_at: now,
            expires_at: now.checked_add(ttl).unwrap_or(Timestamp::MAX),
        };
        {
            let mut queues = self.lock();
            let queue = queues.entry(device_id.to_owned()).or_default();
            queue.retain(|m| m.expires_at > now);
            if queue.len() >= MAX_QUEUED {
                return Err(QueueError::Full(device_id.to_owned()));
            }
            queue.push_back(message.clone());
            if let Err(e) = self.persist(&queues) {
                if let Some(queue) = queues.get_mut(device_id) {
                    queue.pop_back();
                }
                self.update_depth(&queues);
                return Err(e.into());
            }
        }
        self.waiter(device_id).notify_one();
        Ok(message)
    }

    /// The oldest message of `device_id` that has not expired (expired ones are dropped).
    pub fn next(&self, device_id: &str) -> Option<Message> {
        let now = Timestamp::now();
        let mut queues = self.lock();
        let queue = queues.get_mut(device_id)?;
        let before = queue.len();
        queue.retain(|m| m.expires_at > now);
        let head = queue.front().cloned();
        if queue.len() != before {
            // Dropping expired messages is not worth failing a delivery: a later write
            // (or the next start) drops them again.
            let _ = self.persist(&queues);
        }
        head
    }

    /// Removes message `id` of `device_id`: the device has acknowledged it.
    pub fn complete(&self, device_id: &str, id: &str) -> std::io::Result<()> {
        let mut queues = self.lock();
        let Some(queue) = queues.get_mut(device_id) else {
            return Ok(());
        };
        queue.retain(|m| m.id != id);
        if queue.is_empty() {
            queues.remove(device_id);
        }
        self.persist(&queues)
    }

    /// Messages waiting for `device_id`, expired ones included until they are dropped.
    pub fn depth(&self, device_id: &str) -> usize {
        self.lock().get(device_id).map_or(0, VecDeque::len)
    }

    /// Fires (once, or holds one permit) when a message is queued for `device_id`.
    pub fn waiter(&self, device_id: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(waiters.entry(device_id.to_owned()).or_default())
    }

    /// Reports the messages waiting into `gauge` from now on (once; later calls do nothing).
    pub fn report_depth(&self, gauge: Gauge) {
        let queues = self.lock();
        if self.depth.set(gauge).is_ok() {
            self.update_depth(&queues);
        }
    }

    fn update_depth(&self, queues: &BTreeMap<String, VecDeque<Message>>) {
        if let Some(gauge) = self.depth.get() {
            gauge.set(queues.values().map(VecDeque::len).sum::<usize>() as i64);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VecDeque<Message>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rewrites the file: a temporary one, fsync'd, renamed over it (and the depth gauge).
    fn persist(&self, queues: &BTreeMap<String, VecDeque<Message>>) -> std::io::Result<()> {
        self.update_depth(queues);
        let bytes = serde_json::to_vec(queues).map_err(std::io::Error::other)?;
        let temporary = self.file.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.file)?;
        if let Some(dir) = self.file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// A random 128-bit id in the 8-4-4-4-12 hex form message ids usually take.
fn uuid_like() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn queues_are_bounded_ordered_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Devicebound::open(dir.path()).unwrap();
        let hour = Duration::from_secs(3600);
        let first = queue.enqueue("d1", "a".into(), vec![], hour).unwrap();
        for n in 1..MAX_QUEUED {
            queue.enqueue("d1", n.to_string(), vec![], hour).unwrap();
        }
        assert!(matches!(
            queue.enqueue("d1", "over".into(), vec![], hour),
            Err(QueueError::Full(_))
        ));
        queue
            .enqueue("d2", "x".into(), vec![], Duration::ZERO)
            .unwrap();
        drop(queue);

        let queue = Devicebound::open(dir.path()).unwrap();
        assert_eq!(queue.depth("d1"), MAX_QUEUED);
        assert_eq!(queue.next("d1"), Some(first.clone()));
        queue.complete("d1", &first.id).unwrap();
        assert_eq!(queue.next("d1").unwrap().payload, "1");
        assert_eq!(queue.next("d2"), None, "expired");
    }
}
