//! Running a window engine: sharding by group key, ticks, late and error outputs,
//! checkpoints.
//!
//! Every window type is a [`WindowEngine`]: state for many groups that folds events and
//! emits results. [`spawn`] runs `shards` engines, one task each; a router task hashes
//! each event's group key to pick its shard, so a group's events always meet the same
//! state and the groups spread over the cores. When the input ends (a drain), every shard
//! hands back its open groups and the router writes them to one checkpoint file, which the
//! next start reads back and spreads over its shards again.

mod checkpoint;
mod groups;
#[cfg(test)]
mod tests;

pub use groups::{GroupState, Groups};

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use checkpoint::{Checkpoint, Closed, restore, shard_path, write_checkpoint};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handover::{Arrival, Handover};
use super::window::{GroupKey, Outcome, WindowSpec};
use super::{AggregatorContext, LATE};
use crate::config::aggregator::EndOfInput;
use crate::config::{ComponentId, OutputName};
use crate::event::{Delivery, DeliveryStatus, Event, EventBatch};
use crate::telemetry::events::{
    ComponentError, ErrorType, EventsDiscarded, Stage, WindowsClosedEarly,
};
use crate::telemetry::{ComponentTelemetry, InternalEvent, WindowMetrics};
use crate::topology::ComponentTask;
use crate::topology::channel::Outputs;

/// The state of one window type for many groups.
pub trait WindowEngine: Send + 'static {
    /// One group's state, as checkpointed.
    type Group: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;

    /// Folds one event; windows it closes go to `emitted`.
    fn add(
        &mut self,
        event: &Event,
        now_ms: i64,
        now: Instant,
        emitted: &mut Vec<Event>,
    ) -> Outcome;

    /// Periodic work on the wall clock: idle groups, partial results, absences.
    fn tick(&mut self, now_ms: i64, now: Instant, partial: bool, emitted: &mut Vec<Event>);

    fn open_windows(&self) -> usize;

    /// Approximate bytes of state.
    fn state_bytes(&self) -> usize;

    /// Non-numeric values skipped per aggregate since the last call.
    fn take_invalid_values(&mut self) -> Vec<u64>;

    /// Identifies the window definition; a checkpoint from another definition is ignored
    /// (see [`WindowSpec::definition`]).
    fn definition(&self) -> String;

    /// Removes and returns every group that holds state worth keeping (engines that keep
    /// their groups in a hash map hand this and the next two to [`Groups`]).
    fn export(&mut self) -> Vec<(GroupKey, Self::Group)>;

    /// A copy of every group that holds state worth keeping (periodic checkpoints).
    fn snapshot(&self) -> Vec<(GroupKey, Self::Group)>;

    fn import(&mut self, groups: Vec<(GroupKey, Self::Group)>);

    /// Closes every open window early, emitting its result marked `partial: true`, and
    /// forgets all state (a reload replaced the aggregator with one that cannot take its
    /// windows over).
    fn close_all(&mut self, emitted: &mut Vec<Event>);

    /// The input has ended and no more will come ([`EndOfInput::CloseWindows`]): time
    /// moves on, so every open window closes as it does when its group goes idle (a
    /// complete result, not a partial one). `input_end` is the latest event time of the
    /// whole input, every shard's. By default, a tick far past every idle timeout.
    fn finish(&mut self, _input_end: Option<i64>, emitted: &mut Vec<Event>) {
        const LATER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let now = Instant::now();
        let later = now
            .checked_add(LATER)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(now);
        self.tick(i64::MAX, later, false, emitted);
    }
}

/// What a shard hands back when its input ends.
struct ShardState<G> {
    definition: String,
    /// Its open groups (none if it closed them early)...
    groups: Vec<(GroupKey, G)>,
    /// ...and what closing them early would emit, for a start under another definition.
    closing: Vec<Closed>,
    /// The deliveries of events folded since its last checkpoint (released once the final
    /// checkpoint is written).
    held: Vec<Arc<Delivery>>,
    /// How many windows it closed early (a reload with another definition).
    closed_early: usize,
}

/// How an engine is run.
pub struct Runner {
    /// Reads the group key of events, to route them to their shard.
    spec: WindowSpec,
    shards: usize,
    tick: Duration,
    emit_every: Option<Duration>,
    hold: bool,
    checkpoint_every: Duration,
}

impl Runner {
    /// `shards` engines (default: one per core), ticking often enough for the spec's idle
    /// timeout and early emission.
    pub fn new(spec: WindowSpec, shards: Option<usize>) -> Self {
        let shards =
            shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let emit_every = spec.emit_every;
        let tick = (spec
            .idle_timeout
            .min(emit_every.unwrap_or(Duration::MAX))
            .min(Duration::from_secs(1))
            / 2)
        .max(Duration::from_millis(10));
        Self {
            hold: spec.hold_deliveries,
            checkpoint_every: spec.checkpoint_every,
            spec,
            shards,
            tick,
            emit_every,
        }
    }
}

/// Starts `shards` engines made by `make`. The task first waits for the instance it
/// replaces (if a reload made it) to finish, then restores the checkpoint: the windows a
/// predecessor with the same definition hands over, or what the last run left.
pub fn spawn<E: WindowEngine>(
    cx: AggregatorContext,
    runner: Runner,
    make: impl Fn() -> E,
) -> anyhow::Result<ComponentTask> {
    let shards = runner.shards.max(1);
    let mut engines: Vec<E> = (0..shards).map(|_| make()).collect();
    let spares: Vec<E> = (0..shards).map(|_| make()).collect();
    let definition = engines[0].definition();
    let checkpoint = super::checkpoint_path(&cx.data_dir, &cx.id);
    let handover = cx
        .services
        .get_or_insert_with(|| Arc::new(Handover::default()));
    let arrival = handover.arrive(&cx.id, definition);
    let metrics = cx.telemetry.window_metrics(&runner.spec.names);
    Ok(Box::pin(async move {
        wait_for_predecessors(&arrival.predecessors, &cx.id).await;
        let superseded = restore(&mut engines, &checkpoint, &cx.telemetry)?;
        if !superseded.closed.is_empty() {
            cx.out.send(EventBatch::new(superseded.closed)).await;
        }
        // Only now: until the results are on their way, the files are all that holds them.
        for file in superseded.files {
            std::fs::remove_file(&file)?;
        }
        let close = Arc::new(AtomicBool::new(false));
        let input_end = Arc::new(AtomicI64::new(i64::MIN));
        let mut senders = Vec::with_capacity(shards);
        let mut handles = Vec::with_capacity(shards);
        for (n, (engine, spare)) in engines.into_iter().zip(spares).enumerate() {
            let (tx, rx) = mpsc::channel::<EventBatch>(4);
            senders.push(tx);
            let shard = Shard {
                checkpoint: Some(shard_path(&checkpoint, n)),
                checkpoint_every: runner.checkpoint_every,
                hold: runner.hold,
                held: Vec::new(),
                close: Arc::clone(&close),
                engine,
                spare,
                input: rx,
                out: cx.out.clone(),
                id: cx.id.clone(),
                telemetry: cx.telemetry.clone(),
                metrics: metrics.clone(),
                reported_open: 0,
                tick: runner.tick,
                emit_every: runner.emit_every,
                end_of_input: cx.end_of_input,
                input_end: Arc::clone(&input_end),
            };
            handles.push(tokio::spawn(shard.run()));
        }
        let retirement = Retirement {
            handover,
            arrival,
            close,
            input_end,
        };
        route(cx, checkpoint, runner.spec, senders, handles, retirement).await
    }))
}

/// What the router needs to decide, when its input ends, how the instance retires.
struct Retirement {
    handover: Arc<Handover>,
    /// Dropped last: the successor restores only after this instance has finished.
    arrival: Arrival,
    /// Set before the shards' inputs close: close every window early and emit it.
    close: Arc<AtomicBool>,
    /// The latest event time routed, kept only with [`EndOfInput::CloseWindows`] (the
    /// shards' [`WindowEngine::finish`] reads it); `i64::MIN` before any.
    input_end: Arc<AtomicI64>,
}

/// Waits for the instances this one replaces; after a while, starts anyway (a stuck old
/// instance must not stop the new one from reading its input).
async fn wait_for_predecessors(predecessors: &[CancellationToken], id: &ComponentId) {
    const PATIENCE: Duration = Duration::from_secs(30);
    for predecessor in predecessors {
        if tokio::time::timeout(PATIENCE, predecessor.cancelled())
            .await
            .is_err()
        {
            tracing::warn!(component_id = %id, "the instance this one replaces did not finish within {PATIENCE:?}; starting without its open windows");
        }
    }
}

/// Reads the input, splits each batch by shard, and writes the checkpoint at the end.
async fn route<G: Serialize + Send + 'static>(
    mut cx: AggregatorContext,
    checkpoint: PathBuf,
    spec: WindowSpec,
    senders: Vec<mpsc::Sender<EventBatch>>,
    handles: Vec<tokio::task::JoinHandle<ShardState<G>>>,
    retirement: Retirement,
) -> anyhow::Result<()> {
    let shards = senders.len();
    let mut parts: Vec<Vec<Event>> = (0..shards).map(|_| Vec::new()).collect();
    let track_end = cx.end_of_input == EndOfInput::CloseWindows;
    while let Some(batch) = cx.input.recv().await {
        if track_end {
            let latest = batch
                .events
                .iter()
                .filter_map(|e| spec.time_of(e).ok())
                .max();
            if let Some(latest) = latest {
                retirement
                    .input_end
                    .fetch_max(latest, std::sync::atomic::Ordering::AcqRel);
            }
        }
        if shards == 1 {
            hand_to(&senders[0], batch, &cx.telemetry).await;
            continue;
        }
        for event in batch {
            parts[shard_of(&spec.key_of(&event), shards)].push(event);
        }
        for (sender, part) in senders.iter().zip(parts.iter_mut()) {
            if !part.is_empty() {
                hand_to(sender, EventBatch::new(std::mem::take(part)), &cx.telemetry).await;
            }
        }
    }
    // Replaced by a reload: a successor with the same definition takes the windows over
    // through the checkpoint; otherwise they close now, early, rather than vanish.
    let replaced = cx.retired.load(std::sync::atomic::Ordering::Acquire);
    let carried_over = replaced
        && retirement
            .handover
            .carried_over(&cx.id, &retirement.arrival);
    let closing = replaced && !carried_over;
    retirement
        .close
        .store(closing, std::sync::atomic::Ordering::Release);
    drop(senders);
    let mut definition = String::new();
    let mut groups = Vec::new();
    let mut closed = Vec::new();
    let mut held = Vec::new();
    let mut closed_early = 0;
    for handle in handles {
        let shard = handle
            .await
            .map_err(|err| anyhow::anyhow!("window shard failed: {err}"))?;
        definition = shard.definition;
        groups.extend(shard.groups);
        closed.extend(shard.closing);
        held.extend(shard.held);
        closed_early += shard.closed_early;
    }
    if closing {
        for shard in 0..shards {
            let _ = tokio::fs::remove_file(shard_path(&checkpoint, shard)).await;
        }
        if closed_early > 0 {
            WindowsClosedEarly {
                count: closed_early,
                why: "replaced by a reload with another window definition",
            }
            .emit(&cx.telemetry);
        }
    } else {
        let path = &checkpoint;
        let open = groups.len();
        let checkpoint = Checkpoint {
            definition,
            groups,
            closing: closed,
        };
        write_checkpoint(path, &checkpoint).await?;
        // The one file now holds everything the periodic shard files held.
        for shard in 0..shards {
            let _ = tokio::fs::remove_file(shard_path(path, shard)).await;
        }
        tracing::info!(component_id = %cx.id, groups = open, path = %path.display(), "checkpointed open windows");
    }
    // The state holding these events is on disk, or was emitted: their sources may
    // acknowledge them. Then the successor may restore.
    drop(held);
    drop(retirement);
    Ok(())
}

/// Hands `batch` to a shard. A shard that has stopped has failed (its task's error is
/// reported when the router joins it) and cannot fold the batch: its events are lost, so
/// their sources hear so instead of hearing "committed".
async fn hand_to(
    shard: &mpsc::Sender<EventBatch>,
    batch: EventBatch,
    telemetry: &ComponentTelemetry,
) {
    if let Err(refused) = shard.send(batch).await {
        let lost = refused.0;
        lost.fail_deliveries();
        EventsDiscarded {
            count: lost.len(),
            intentional: false,
        }
        .emit(telemetry);
    }
}

/// What closing `groups` early would emit, worked out on `spare`, an empty engine of their
/// definition (the shard's own engine keeps running).
fn closing<E: WindowEngine>(spare: &mut E, groups: &[(GroupKey, E::Group)]) -> Vec<Closed> {
    if groups.is_empty() {
        return Vec::new();
    }
    let mut results = Vec::new();
    spare.import(groups.to_vec());
    spare.close_all(&mut results);
    results.iter().map(Closed::of).collect()
}

/// Makes the deliveries `held` wait for `results`, windows closed early: the results carry
/// one new delivery, and once the sinks have committed them all (or lost one) the held
/// deliveries are let go (or failed). So a source hears "committed" for events whose state
/// was never checkpointed only once the results holding them are.
fn chain(held: Vec<Arc<Delivery>>, results: &mut [Event]) {
    if held.is_empty() || results.is_empty() {
        return;
    }
    let outcome = Delivery::attach_all(results);
    tokio::spawn(async move {
        if outcome.await != Ok(DeliveryStatus::Committed) {
            for delivery in &held {
                delivery.fail();
            }
        }
        drop(held);
    });
}

fn shard_of(key: &GroupKey, shards: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

struct Shard<E> {
    engine: E,
    /// An empty engine of the same definition, to work out what closing the open windows
    /// early would emit without touching `engine`.
    spare: E,
    /// This shard's periodic checkpoint file, when the aggregator checkpoints.
    checkpoint: Option<PathBuf>,
    checkpoint_every: Duration,
    /// Keep folded events' deliveries until the next checkpoint (`ack: on_checkpoint`).
    hold: bool,
    held: Vec<Arc<Delivery>>,
    /// Set by the router when the instance retires without a successor to take its windows.
    close: Arc<AtomicBool>,
    input: mpsc::Receiver<EventBatch>,
    out: Outputs,
    id: ComponentId,
    telemetry: ComponentTelemetry,
    metrics: WindowMetrics,
    /// This shard's share of the open-windows gauge, so shards report by difference.
    reported_open: i64,
    tick: Duration,
    emit_every: Option<Duration>,
    end_of_input: EndOfInput,
    /// The latest event time of the whole input (see [`Retirement::input_end`]).
    input_end: Arc<AtomicI64>,
}

impl<E: WindowEngine> Shard<E> {
    async fn run(mut self) -> ShardState<E::Group> {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_partial = Instant::now();
        let mut emitted = Vec::new();
        let mut checkpoints = tokio::time::interval(self.checkpoint_every);
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = checkpoints.tick(), if self.checkpoint.is_some() => self.checkpoint_now().await,
                batch = self.input.recv() => match batch {
                    Some(batch) => self.fold(batch, &mut emitted).await,
                    None => break,
                },
                _ = ticker.tick() => {
                    let now = Instant::now();
                    let partial = self.emit_every.is_some_and(|every| now.duration_since(last_partial) >= every);
                    if partial {
                        last_partial = now;
                    }
                    self.engine.tick(jiff::Timestamp::now().as_millisecond(), now, partial, &mut emitted);
                    self.emit(&mut emitted).await;
                }
            }
        }
        let mut closed_early = 0;
        if self.close.load(std::sync::atomic::Ordering::Acquire) {
            self.engine.close_all(&mut emitted);
            closed_early = emitted.len();
            chain(std::mem::take(&mut self.held), &mut emitted);
            self.emit(&mut emitted).await;
        } else if self.end_of_input == EndOfInput::CloseWindows {
            let end = self.input_end.load(std::sync::atomic::Ordering::Acquire);
            self.engine
                .finish((end != i64::MIN).then_some(end), &mut emitted);
            self.emit(&mut emitted).await;
        }
        self.metrics.open_windows.dec_by(self.reported_open);
        let groups = self.engine.export();
        let closing = closing(&mut self.spare, &groups);
        ShardState {
            definition: self.engine.definition(),
            groups,
            closing,
            held: self.held,
            closed_early,
        }
    }

    /// Writes this shard's open windows, then lets go of the deliveries they hold.
    async fn checkpoint_now(&mut self) {
        let Some(path) = &self.checkpoint else { return };
        if self.held.is_empty() && self.engine.open_windows() == 0 {
            return;
        }
        let groups = self.engine.snapshot();
        let checkpoint = Checkpoint {
            definition: self.engine.definition(),
            closing: closing(&mut self.spare, &groups),
            groups,
        };
        match write_checkpoint(path, &checkpoint).await {
            Ok(()) => self.held.clear(),
            Err(err) => {
                // The deliveries stay held: their sources wait, and the next tick tries again.
                let message = format!(
                    "cannot checkpoint open windows to {}: {err:#}",
                    path.display()
                );
                ComponentError {
                    error_type: ErrorType::Io,
                    stage: Stage::Processing,
                    message: &message,
                    count: 1,
                }
                .emit(&self.telemetry);
            }
        }
    }

    async fn fold(&mut self, batch: EventBatch, emitted: &mut Vec<Event>) {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let now = Instant::now();
        let mut late = Vec::new();
        let mut errors = Vec::new();
        for event in batch {
            let outcome = self.engine.add(&event, now_ms, now, emitted);
            if self.hold
                && matches!(outcome, Outcome::Folded | Outcome::Adjusted(_))
                && let Some(delivery) = event.delivery()
                && !self
                    .held
                    .last()
                    .is_some_and(|last| Arc::ptr_eq(last, delivery))
            {
                self.held.push(Arc::clone(delivery));
            }
            match outcome {
                Outcome::Folded => {}
                Outcome::Dropped(bound) => {
                    self.metrics.out_of_bounds(bound.as_str(), "drop").inc();
                }
                Outcome::Adjusted(bound) => {
                    self.metrics.out_of_bounds(bound.as_str(), "adjust").inc();
                }
                Outcome::Routed(bound) => {
                    self.metrics
                        .out_of_bounds(bound.as_str(), "route")
                        .inc_by(1);
                    late.push(event);
                }
                Outcome::BadTime(reason) => errors.push((event, reason)),
                Outcome::Overflow => {
                    self.metrics.overflow.inc();
                    errors.push((
                        event,
                        "max_open_windows reached: the window this event needs cannot be opened"
                            .to_owned(),
                    ));
                }
            };
        }
        for (counter, count) in self
            .metrics
            .invalid_values
            .iter()
            .zip(self.engine.take_invalid_values())
        {
            if count > 0 {
                counter.inc_by(count);
            }
        }
        self.emit(emitted).await;
        if !late.is_empty() {
            self.out.send_named(LATE, EventBatch::new(late)).await;
        }
        if !errors.is_empty() {
            let component = self.id.as_arc();
            let dead: Vec<Event> = errors
                .into_iter()
                .map(|(event, reason)| {
                    ComponentError {
                        error_type: ErrorType::Decode,
                        stage: Stage::Processing,
                        message: &reason,
                        count: 1,
                    }
                    .emit(&self.telemetry);
                    event.with_error(&component, reason)
                })
                .collect();
            self.out
                .send_named(OutputName::ERRORS, EventBatch::new(dead))
                .await;
        }
    }

    async fn emit(&mut self, emitted: &mut Vec<Event>) {
        let open = self.engine.open_windows() as i64;
        self.metrics.open_windows.inc_by(open - self.reported_open);
        self.reported_open = open;
        if !emitted.is_empty() {
            self.out
                .send(EventBatch::new(std::mem::take(emitted)))
                .await;
            self.metrics
                .state_bytes
                .set(self.engine.state_bytes() as i64);
        }
    }
}
