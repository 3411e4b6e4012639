//! Running a window engine: sharding by group key, ticks, late and error outputs,
//! checkpoints.
//!
//! Every window type is a [`WindowEngine`]: state for many groups that folds events and
//! emits results. [`spawn`] runs `shards` engines, one task each; a router task hashes
//! each event's group key to pick its shard, so a group's events always meet the same
//! state and the groups spread over the cores. When the input ends (a drain), every shard
//! hands back its open groups and the router writes them to one checkpoint file, which the
//! next start reads back and spreads over its shards again.

mod groups;
#[cfg(test)]
mod tests;

pub use groups::{GroupState, Groups};

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handover::{Arrival, Handover};
use super::window::{GroupKey, Outcome, WindowSpec};
use super::{AggregatorContext, LATE};
use crate::config::{ComponentId, OutputName};
use crate::event::{Delivery, Event, EventBatch};
use crate::telemetry::events::{
    ComponentError, ErrorType, EventsDiscarded, Stage, StateFileCorrupt,
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
}

/// What a shard hands back when its input ends: its definition, its open groups, and the
/// deliveries of events folded since its last checkpoint (released once the final
/// checkpoint is written).
type ShardState<G> = (String, Vec<(GroupKey, G)>, Vec<Arc<Delivery>>);

#[derive(Serialize, serde::Deserialize)]
#[serde(bound(serialize = "G: Serialize", deserialize = "G: DeserializeOwned"))]
struct Checkpoint<G> {
    definition: String,
    groups: Vec<(GroupKey, G)>,
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
    let definition = engines[0].definition();
    let checkpoint = super::checkpoint_path(&cx.data_dir, &cx.id);
    let handover = cx
        .services
        .get_or_insert_with(|| Arc::new(Handover::default()));
    let arrival = handover.arrive(&cx.id, definition);
    let metrics = cx.telemetry.window_metrics(&runner.spec.names);
    Ok(Box::pin(async move {
        wait_for_predecessors(&arrival.predecessors, &cx.id).await;
        restore(&mut engines, &checkpoint, &cx.telemetry)?;
        let close = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::with_capacity(shards);
        let mut handles = Vec::with_capacity(shards);
        for (n, engine) in engines.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<EventBatch>(4);
            senders.push(tx);
            let shard = Shard {
                checkpoint: Some(shard_path(&checkpoint, n)),
                checkpoint_every: runner.checkpoint_every,
                hold: runner.hold,
                held: Vec::new(),
                close: Arc::clone(&close),
                engine,
                input: rx,
                out: cx.out.clone(),
                id: cx.id.clone(),
                telemetry: cx.telemetry.clone(),
                metrics: metrics.clone(),
                reported_open: 0,
                tick: runner.tick,
                emit_every: runner.emit_every,
            };
            handles.push(tokio::spawn(shard.run()));
        }
        let retirement = Retirement {
            handover,
            arrival,
            close,
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
    while let Some(batch) = cx.input.recv().await {
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
    let mut held = Vec::new();
    for handle in handles {
        let (def, shard_groups, shard_held) = handle
            .await
            .map_err(|err| anyhow::anyhow!("window shard failed: {err}"))?;
        definition = def;
        groups.extend(shard_groups);
        held.extend(shard_held);
    }
    if closing {
        for shard in 0..shards {
            let _ = tokio::fs::remove_file(shard_path(&checkpoint, shard)).await;
        }
        tracing::info!(component_id = %cx.id, "replaced by a reload with another window definition: its open windows were closed early and emitted with `partial: true`");
    } else {
        let path = &checkpoint;
        let open = groups.len();
        write_checkpoint(path, &Checkpoint { definition, groups }).await?;
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

/// The periodic checkpoint file of shard `n`: `<id>.json.shard-<n>`.
fn shard_path(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".shard-{n}"));
    PathBuf::from(name)
}

fn shard_of(key: &GroupKey, shards: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

struct Shard<E> {
    engine: E,
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
        if self.close.load(std::sync::atomic::Ordering::Acquire) {
            self.engine.close_all(&mut emitted);
            self.emit(&mut emitted).await;
        }
        self.metrics.open_windows.dec_by(self.reported_open);
        (self.engine.definition(), self.engine.export(), self.held)
    }

    /// Writes this shard's open windows, then lets go of the deliveries they hold.
    async fn checkpoint_now(&mut self) {
        let Some(path) = &self.checkpoint else { return };
        if self.held.is_empty() && self.engine.open_windows() == 0 {
            return;
        }
        let checkpoint = Checkpoint {
            definition: self.engine.definition(),
            groups: self.engine.snapshot(),
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

/// Writes a checkpoint atomically: a temp file, fsync, rename.
async fn write_checkpoint<G: Serialize>(
    path: &Path,
    checkpoint: &Checkpoint<G>,
) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(checkpoint)?;
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    // Next to the target, with a name of its own (shards write their files concurrently).
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    tokio::fs::write(&temp, &bytes).await?;
    tokio::fs::File::open(&temp).await?.sync_all().await?;
    tokio::fs::rename(&temp, path).await?;
    Ok(())
}

/// Spreads the checkpointed groups over the shards, then removes the files so a crash
/// later cannot replay them twice. After a graceful stop there is one file; after a crash,
/// the periodic files of each shard.
fn restore<E: WindowEngine>(
    engines: &mut [E],
    path: &Path,
    telemetry: &ComponentTelemetry,
) -> anyhow::Result<()> {
    let id = telemetry.component_id();
    let mut files = vec![path.to_path_buf()];
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        let prefix = format!("{name}.shard-");
        if let Ok(entries) = std::fs::read_dir(dir) {
            files.extend(
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&prefix) && !n.ends_with(".tmp"))
                    }),
            );
        }
    }
    let shards = engines.len();
    let mut parts: Vec<Vec<(GroupKey, E::Group)>> = (0..shards).map(|_| Vec::new()).collect();
    let mut restored = 0;
    for file in files {
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => anyhow::bail!("cannot read checkpoint {}: {err}", file.display()),
        };
        match serde_json::from_slice::<Checkpoint<E::Group>>(&bytes) {
            Ok(checkpoint) if checkpoint.definition == engines[0].definition() => {
                restored += checkpoint.groups.len();
                for (key, group) in checkpoint.groups {
                    parts[shard_of(&key, shards)].push((key, group));
                }
            }
            Ok(_) => {
                tracing::warn!(component_id = %id, file = %file.display(), "the window definition changed since the checkpoint; starting without its open windows")
            }
            Err(err) => {
                // Kept for whoever wants to look, and out of the next start's way.
                let mut aside = file.as_os_str().to_owned();
                aside.push(".corrupt");
                let aside = PathBuf::from(aside);
                std::fs::rename(&file, &aside)?;
                StateFileCorrupt {
                    file: &file,
                    moved_to: &aside,
                    error: &err.to_string(),
                    consequence: "starting without its open windows",
                }
                .emit(telemetry);
                continue;
            }
        }
        std::fs::remove_file(&file)?;
    }
    for (engine, part) in engines.iter_mut().zip(parts) {
        engine.import(part);
    }
    if restored > 0 {
        tracing::info!(component_id = %id, groups = restored, "resumed open windows from the checkpoint");
    }
    Ok(())
}
