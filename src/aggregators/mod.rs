//! Aggregators: event-time windows.
//!
//! `tumbling` and `hopping` windows run on one engine ([`fixed`]): epoch-aligned,
//! half-open, per-group watermarks, allowed lateness, idle timeouts, early emission and
//! checkpoints in `data_dir` across restarts. Aggregates are in [`aggregate`]; the options
//! every window type shares are in [`window`].

pub mod aggregate;
pub mod fixed;
mod hopping;
mod tumbling;
pub mod window;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use hopping::HoppingConfig;
pub use tumbling::TumblingConfig;

use crate::config::component::component_types;
use crate::config::{ComponentId, FieldProblem, OutputName};
use crate::event::{Event, EventBatch};
use crate::telemetry::events::{ComponentError, ErrorType, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent, WindowMetrics};
use crate::topology::ComponentTask;
use crate::topology::channel::{InputReceiver, Outputs};
use fixed::{Assigner, Bound, FixedWindows, Outcome};
use window::{LatePolicy, WindowCommon, WindowSpec};

component_types! {
    /// Every aggregator type.
    pub enum AggregatorConfig: AggregatorComponent {
        "tumbling" => Tumbling(TumblingConfig),
        "hopping" => Hopping(HoppingConfig),
    }
}

/// What every aggregator type provides.
pub trait AggregatorComponent: Send + Sync {
    /// Named outputs besides the default one and `errors`.
    fn named_outputs(&self) -> Vec<OutputName> {
        Vec::new()
    }

    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    fn build(&self, cx: AggregatorContext) -> anyhow::Result<ComponentTask>;
}

impl AggregatorConfig {
    /// Every named output, including `errors` (events without a readable event time).
    pub fn outputs(&self) -> Vec<OutputName> {
        let mut outputs = self.component().named_outputs();
        outputs.push(OutputName::errors());
        outputs
    }
}

/// The output for late and future events, when they are routed.
pub const LATE: &str = "late";

fn late_outputs(policy: LatePolicy) -> Vec<OutputName> {
    match policy {
        LatePolicy::Route => vec![OutputName(LATE.into())],
        LatePolicy::Drop | LatePolicy::Adjust => Vec::new(),
    }
}

/// What an aggregator is given when it is built.
pub struct AggregatorContext {
    pub id: ComponentId,
    pub input: InputReceiver,
    pub out: Outputs,
    pub telemetry: ComponentTelemetry,
    /// Where open windows are checkpointed on shutdown (`<data_dir>/aggregators/<id>.json`).
    pub checkpoint: Option<PathBuf>,
}

/// Runs a [`FixedWindows`] engine: folds input batches, ticks for idle groups and early
/// emission, checkpoints open windows when the input ends.
struct FixedWindowsTask {
    engine: FixedWindows,
    cx: AggregatorContext,
    metrics: WindowMetrics,
    tick: Duration,
    emit_every: Option<Duration>,
}

impl FixedWindowsTask {
    fn build(
        cx: AggregatorContext,
        common: &WindowCommon,
        assigner: Assigner,
        size: Duration,
    ) -> anyhow::Result<ComponentTask> {
        let spec = WindowSpec::new(cx.id.as_arc(), common, size);
        let tick = spec
            .idle_timeout
            .min(spec.emit_every.unwrap_or(Duration::MAX))
            .min(Duration::from_secs(1))
            / 2;
        let emit_every = spec.emit_every;
        let mut engine = FixedWindows::new(spec, assigner);
        if let Some(path) = &cx.checkpoint {
            restore(&mut engine, path, &cx.id)?;
        }
        let metrics = cx
            .telemetry
            .window_metrics(&common.aggregates.keys().cloned().collect::<Vec<_>>());
        let task = Self {
            engine,
            cx,
            metrics,
            tick: tick.max(Duration::from_millis(10)),
            emit_every,
        };
        Ok(Box::pin(task.run()))
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_partial = Instant::now();
        let mut emitted = Vec::new();
        loop {
            tokio::select! {
                batch = self.cx.input.recv() => match batch {
                    Some(batch) => self.fold(batch, &mut emitted).await,
                    None => break,
                },
                _ = ticker.tick() => {
                    let now = Instant::now();
                    let partial = self.emit_every.is_some_and(|every| now.duration_since(last_partial) >= every);
                    if partial {
                        last_partial = now;
                    }
                    self.engine.tick(now, partial, &mut emitted);
                    self.send(&mut emitted).await;
                }
            }
        }
        if let Some(path) = &self.cx.checkpoint {
            checkpoint(&self.engine, path).await?;
            tracing::info!(component_id = %self.cx.id, open_windows = self.engine.open_windows(), path = %path.display(), "checkpointed open windows");
        }
        Ok(())
    }

    async fn fold(&mut self, batch: EventBatch, emitted: &mut Vec<Event>) {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let mut late = Vec::new();
        let mut errors = Vec::new();
        let metrics = &self.metrics;
        self.engine.add_batch(
            batch,
            now_ms,
            Instant::now(),
            emitted,
            |event, outcome| match outcome {
                Outcome::Folded => {}
                Outcome::Dropped(bound) => {
                    metrics.out_of_bounds(bound_name(bound), "drop").inc();
                }
                Outcome::Routed(bound) => {
                    metrics.out_of_bounds(bound_name(bound), "route").inc();
                    late.push(event);
                }
                Outcome::Adjusted(bound) => {
                    metrics.out_of_bounds(bound_name(bound), "adjust").inc();
                }
                Outcome::BadTime(reason) => errors.push((event, reason)),
                Outcome::Overflow => {
                    metrics.overflow.inc();
                    errors.push((
                        event,
                        "max_open_windows reached: the window this event needs cannot be opened"
                            .to_owned(),
                    ));
                }
            },
        );
        for (i, count) in self.engine.invalid_values.iter_mut().enumerate() {
            if *count > 0 {
                self.metrics.invalid_values[i].inc_by(*count);
                *count = 0;
            }
        }
        self.send(emitted).await;
        if !late.is_empty() {
            self.cx.out.send_named(LATE, EventBatch::new(late)).await;
        }
        if !errors.is_empty() {
            let component = self.cx.id.as_arc();
            let dead: Vec<Event> = errors
                .into_iter()
                .map(|(event, reason)| {
                    ComponentError {
                        error_type: ErrorType::Decode,
                        stage: Stage::Processing,
                        message: &reason,
                        count: 1,
                    }
                    .emit(&self.cx.telemetry);
                    event.with_error(&component, reason)
                })
                .collect();
            self.cx
                .out
                .send_named(OutputName::ERRORS, EventBatch::new(dead))
                .await;
        }
    }

    async fn send(&mut self, emitted: &mut Vec<Event>) {
        self.metrics
            .open_windows
            .set(self.engine.open_windows() as i64);
        if !emitted.is_empty() {
            self.cx
                .out
                .send(EventBatch::new(std::mem::take(emitted)))
                .await;
            self.metrics
                .state_bytes
                .set(self.engine.state_bytes() as i64);
        }
    }
}

fn bound_name(bound: Bound) -> &'static str {
    match bound {
        Bound::Late => "late",
        Bound::Future => "future",
    }
}

/// Writes the open windows atomically (temp file, fsync, rename).
async fn checkpoint(engine: &FixedWindows, path: &PathBuf) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(&engine.snapshot())?;
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let temp = path.with_extension("json.tmp");
    tokio::fs::write(&temp, &bytes).await?;
    tokio::fs::File::open(&temp).await?.sync_all().await?;
    tokio::fs::rename(&temp, path).await?;
    Ok(())
}

/// Loads a checkpoint, then removes it so a crash later cannot replay it twice.
fn restore(engine: &mut FixedWindows, path: &PathBuf, id: &ComponentId) -> anyhow::Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => anyhow::bail!("cannot read checkpoint {}: {err}", path.display()),
    };
    match serde_json::from_slice(&bytes).map(|snapshot| engine.restore(snapshot)) {
        Ok(true) => {
            tracing::info!(component_id = %id, open_windows = engine.open_windows(), "resumed open windows from checkpoint");
        }
        Ok(false) => {
            tracing::warn!(component_id = %id, "window definition changed since the checkpoint; starting with no open windows")
        }
        Err(err) => {
            tracing::warn!(component_id = %id, "checkpoint {} is unreadable ({err}); starting with no open windows", path.display())
        }
    }
    std::fs::remove_file(path)?;
    Ok(())
}

/// The checkpoint file of aggregator `id` under `data_dir`.
pub fn checkpoint_path(data_dir: &std::path::Path, id: &ComponentId) -> PathBuf {
    data_dir.join("aggregators").join(format!("{id}.json"))
}
