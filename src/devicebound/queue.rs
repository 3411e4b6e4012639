//! One gateway's cloud-to-device queues: messages waiting per device, and the settled
//! ones (feedback, dead letters) waiting to leave through the gateway's outputs.
//!
//! Every change is written to the gateway's queue file ([`Stored`]) before it is
//! reported, so a restart keeps what waits and what was not yet handed over. A message
//! leaves its queue one of three ways, each recorded in the same write as its removal:
//! the device's PUBACK ([`Queues::complete`], `Success`), its expiry ([`Queues::expire`],
//! run by the gateway's timer, and on every look at the queue; `Expired`), or a delivery
//! past `max_delivery_count` ([`Queues::next_delivery`]; `DeliveryCountExceeded`).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use jiff::Timestamp;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::feedback::{Ack, Outcome, Settled};
use super::store::Stored;
use super::{Limits, Message};

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("device `{device}` already has {max} messages waiting")]
    Full { device: String, max: usize },
    #[error("the queue could not be written: {0}")]
    Store(#[from] std::io::Error),
}

/// A message to queue.
#[derive(Clone, Debug, Default)]
pub struct NewMessage {
    /// Its id (`$.mid`); a random one when `None`. Queuing an id the device already has
    /// waiting queues nothing and answers the waiting message (a sender's retry).
    pub id: Option<String>,
    pub payload: String,
    pub properties: Vec<(String, String)>,
    pub ttl: std::time::Duration,
    pub ack: Ack,
}

/// A message as queued.
#[derive(Clone, Debug)]
pub struct Queued {
    pub message: Message,
    /// Messages waiting for the device now, this one included.
    pub depth: usize,
    /// False when the message was already waiting (same id): nothing new was queued.
    pub fresh: bool,
}

/// The state behind the lock.
struct State {
    stored: Stored,
    /// Settled records up to this `seq` are being handed over (by [`Queues::take_settled`]).
    claimed_through: Option<u64>,
    /// The earliest expiry the timer knows of.
    next_expiry: Option<Timestamp>,
}

/// One gateway's queues: see the module documentation.
pub struct Queues {
    file: PathBuf,
    limits: Mutex<Limits>,
    state: Mutex<State>,
    /// Wakes the connection of a device when a message is queued for it.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Wakes the expiry timer when a message expires sooner than it planned for.
    sooner: Notify,
    /// Wakes whoever hands settled messages over.
    settled: Notify,
    /// Messages waiting, all devices together (the gateway's gauge).
    depth: OnceLock<Gauge>,
}

impl Queues {
    /// The queues kept in `file`, as the last run left them.
    pub(super) fn open(file: PathBuf, limits: Limits) -> anyhow::Result<Self> {
        let stored = Stored::load(&file)?;
        let queues = Self {
            file,
            limits: Mutex::new(limits),
            state: Mutex::new(State {
                stored,
                claimed_through: None,
                next_expiry: None,
            }),
            waiters: Mutex::default(),
            sooner: Notify::new(),
            settled: Notify::new(),
            depth: OnceLock::new(),
        };
        if !queues.lock().stored.settled.is_empty() {
            queues.settled.notify_one();
        }
        Ok(queues)
    }

    pub(super) fn set_limits(&self, limits: Limits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `new` for `device_id` until its `ttl` has passed.
    pub fn enqueue(&self, device_id: &str, new: NewMessage) -> Result<Queued, QueueError> {
        let now = Timestamp::now();
        let ttl = jiff::SignedDuration::try_from(new.ttl).unwrap_or(jiff::SignedDuration::MAX);
        let message = Message {
            id: new.id.unwrap_or_else(uuid_like),
            payload: new.payload,
            properties: new.properties,
            enqueued_at: now,
            expires_at: now.checked_add(ttl).unwrap_or(Timestamp::MAX),
            ack: new.ack,
            delivery_count: 0,
        };
        let max = self.limits().max_queued;
        let mut state = self.lock();
        let expired = settle_expired(&mut state.stored, device_id, now);
        let queue = state.stored.queues.entry(device_id.to_owned()).or_default();
        let refused = match queue.iter().find(|m| m.id == message.id) {
            Some(waiting) => Some(Ok(Queued {
                message: waiting.clone(),
                depth: queue.len(),
                fresh: false,
            })),
            None if queue.len() >= max => Some(Err(QueueError::Full {
                device: device_id.to_owned(),
                max,
            })),
            None => None,
        };
        if let Some(answer) = refused {
            if queue.is_empty() {
                state.stored.queues.remove(device_id);
            }
            if expired {
                self.save(&mut state)?;
            }
            return answer;
        }
        queue.push_back(message.clone());
        let depth = queue.len();
        if let Err(e) = self.save(&mut state) {
            if let Some(queue) = state.stored.queues.get_mut(device_id) {
                queue.pop_back();
            }
            self.update_depth(&state);
            return Err(e.into());
        }
        if state.next_expiry.is_none_or(|t| message.expires_at < t) {
            state.next_expiry = Some(message.expires_at);
            self.sooner.notify_one();
        }
        drop(state);
        self.waiter(device_id).notify_one();
        Ok(Queued {
            message,
            depth,
            fresh: true,
        })
    }

    /// The message to send `device_id` now, counted as one more delivery: the oldest
    /// that has not expired and was not delivered `max_delivery_count` times already
    /// (those are settled on the way).
    pub fn next_delivery(&self, device_id: &str) -> Option<Message> {
        let now = Timestamp::now();
        let max = self.limits().max_delivery_count;
        let mut state = self.lock();
        let mut changed = settle_expired(&mut state.stored, device_id, now);
        let mut next = None;
        while let Some(queue) = state.stored.queues.get_mut(device_id) {
            let Some(head) = queue.front_mut() else { break };
            if head.delivery_count < max {
                head.delivery_count += 1;
                next = Some(head.clone());
                changed = true;
                break;
            }
            let Some(spent) = queue.pop_front() else {
                break;
            };
            settle(
                &mut state.stored,
                device_id,
                spent,
                Outcome::DeliveryCountExceeded,
                now,
            );
            changed = true;
        }
        if changed {
            // Counting a delivery is not worth failing it: at worst a restart forgets it.
            if let Err(e) = self.save(&mut state) {
                tracing::warn!(file = %self.file.display(), error = %e, "the cloud-to-device queue could not be written");
            }
        }
        next
    }

    /// Removes message `id` of `device_id`: the device has acknowledged it. A message no
    /// longer waiting (it expired meanwhile) is not settled twice.
    pub fn complete(&self, device_id: &str, id: &str) -> std::io::Result<()> {
        let mut state = self.lock();
        let Some(queue) = state.stored.queues.get_mut(device_id) else {
            return Ok(());
        };
        let Some(at) = queue.iter().position(|m| m.id == id) else {
            return Ok(());
        };
        let done = queue.remove(at);
        if queue.is_empty() {
            state.stored.queues.remove(device_id);
        }
        if let Some(done) = done {
            settle(
                &mut state.stored,
                device_id,
                done,
                Outcome::Success,
                Timestamp::now(),
            );
        }
        self.save(&mut state)
    }

    /// Settles every message expired at `now`; the earliest expiry still ahead.
    pub fn expire(&self, now: Timestamp) -> Option<Timestamp> {
        let mut state = self.lock();
        let devices: Vec<String> = state.stored.queues.keys().cloned().collect();
        let mut changed = false;
        for device in devices {
            changed |= settle_expired(&mut state.stored, &device, now);
        }
        if changed && let Err(e) = self.save(&mut state) {
            tracing::warn!(file = %self.file.display(), error = %e, "expired cloud-to-device messages could not be removed from the queue file");
        }
        let next = state
            .stored
            .queues
            .values()
            .flat_map(|queue| queue.iter().map(|m| m.expires_at))
            .min();
        state.next_expiry = next;
        next
    }

    /// Fires when a message was queued that expires before the last [`Queues::expire`]
    /// said the next one would.
    pub fn sooner(&self) -> &Notify {
        &self.sooner
    }

    /// Up to `max` settled messages not yet being handed over, oldest first; they are
    /// claimed until [`Queues::handed_over`] or [`Queues::release`].
    pub fn take_settled(&self, max: usize) -> Vec<Settled> {
        let mut state = self.lock();
        let after = state.claimed_through;
        let taken: Vec<Settled> = state
            .stored
            .settled
            .iter()
            .filter(|s| after.is_none_or(|after| s.seq > after))
            .take(max)
            .cloned()
            .collect();
        if let Some(last) = taken.last() {
            state.claimed_through = Some(last.seq);
        }
        taken
    }

    /// The settled messages up to `through` were handed over: forgotten, for good.
    pub fn handed_over(&self, through: u64) -> std::io::Result<()> {
        let mut state = self.lock();
        state.stored.settled.retain(|s| s.seq > through);
        if state.claimed_through.is_some_and(|c| c <= through) {
            state.claimed_through = None;
        }
        self.save(&mut state)
    }

    /// What was claimed was not handed over: the next [`Queues::take_settled`] gets it again.
    pub fn release(&self) {
        self.lock().claimed_through = None;
        self.settled.notify_one();
    }

    /// Fires (or holds one permit) when a message was settled.
    pub fn settled(&self) -> &Notify {
        &self.settled
    }

    /// Messages waiting for `device_id`, expired ones included until they are settled.
    pub fn depth(&self, device_id: &str) -> usize {
        self.lock()
            .stored
            .queues
            .get(device_id)
            .map_or(0, VecDeque::len)
    }

    /// Fires (once, or holds one permit) when a message is queued for `device_id`.
    pub fn waiter(&self, device_id: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(waiters.entry(device_id.to_owned()).or_default())
    }

    /// Reports the messages waiting into `gauge` from now on (once; later calls do nothing).
    pub fn report_depth(&self, gauge: Gauge) {
        let state = self.lock();
        if self.depth.set(gauge).is_ok() {
            self.update_depth(&state);
        }
    }

    fn update_depth(&self, state: &State) {
        if let Some(gauge) = self.depth.get() {
            gauge.set(
                state
                    .stored
                    .queues
                    .values()
                    .map(VecDeque::len)
                    .sum::<usize>() as i64,
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the state, bounds the settled list (dropping the oldest, logged), and wakes
    /// whoever hands settled messages over.
    fn save(&self, state: &mut State) -> std::io::Result<()> {
        let max_settled = self.limits().max_settled;
        let over = state.stored.settled.len().saturating_sub(max_settled);
        if over > 0 {
            state.stored.settled.drain(..over);
            tracing::warn!(file = %self.file.display(), dropped = over, "more settled cloud-to-device messages wait to leave than `devicebound.max_settled` allows: the oldest were dropped (is `<id>.feedback` read?)");
        }
        self.update_depth(state);
        let result = state.stored.save(&self.file);
        if !state.stored.settled.is_empty() {
            self.settled.notify_one();
        }
        result
    }
}

/// Settles the expired messages of `device_id`; whether any were.
fn settle_expired(stored: &mut Stored, device_id: &str, now: Timestamp) -> bool {
    let Some(queue) = stored.queues.get_mut(device_id) else {
        return false;
    };
    if queue.iter().all(|m| m.expires_at > now) {
        return false;
    }
    let (live, expired): (VecDeque<Message>, VecDeque<Message>) = std::mem::take(queue)
        .into_iter()
        .partition(|m| m.expires_at > now);
    if live.is_empty() {
        stored.queues.remove(device_id);
    } else {
        *queue = live;
    }
    for message in expired {
        settle(stored, device_id, message, Outcome::Expired, now);
    }
    true
}

/// Records `message`'s outcome when feedback or a dead letter is due.
fn settle(stored: &mut Stored, device_id: &str, message: Message, outcome: Outcome, at: Timestamp) {
    if !Settled::worth_keeping(&message, outcome) {
        return;
    }
    let seq = stored.next_seq;
    stored.next_seq += 1;
    stored.settled.push_back(Settled {
        seq,
        device_id: device_id.to_owned(),
        message,
        outcome,
        at,
    });
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
