//! `weir run --batch`: one bounded run over a finished range of event time — recompute,
//! backfill, replay — then exit.
//!
//! Every source must be bounded (it reads a finished range, or makes up a set number of
//! readings; [`SourceComponent::bounded`]). The topology runs in [`RunMode::Batch`]:
//! windows close at the end of input, and sinks that write tables commit the run as one
//! unit keyed by its range, so a rerun of the same range does not write it twice. The run
//! ends when every source has finished and the graph has drained (disk buffers included);
//! the exit status is 0 only if no component failed.
//!
//! A batch run keeps its state in the `data_dir` of its own pipeline files, which no live
//! weir may share: it takes `data_dir/batch.lock`, refuses a `data_dir` whose control
//! socket answers (a running weir's), and starts from nothing — it reads its whole range
//! again, so disk buffers a failed run left behind are discarded (their events come
//! again from the table). It serves no API and no control socket. A device registry, if
//! the pipeline configures one, is read-only and in memory (`registry/service.rs`): a
//! snapshot of the live fleet (`registry: { snapshot }`, from `weir devices export`), or
//! a store read once at the start; the live daemon's store is locked by it and is
//! refused with the way to a snapshot.
//!
//! [`SourceComponent::bounded`]: crate::config::source::SourceComponent::bounded

use std::fs::File;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::aggregator::EndOfInput;
use crate::config::{BatchRange, ComponentKind, RunMode, SectionOptions, TopologyConfig};
use crate::telemetry::{ComponentLabels, Telemetry};
use crate::topology::RunningTopology;

/// How often progress is reported when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the progress bar is redrawn.
const BAR_EVERY: Duration = Duration::from_millis(200);

pub struct Options {
    /// Overrides of the range the sources read (`--since`, `--until`).
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub drain_timeout: Duration,
}

/// Runs `config` once over its range; `Ok` only if every component finished cleanly.
pub async fn run(mut config: TopologyConfig, options: Options) -> anyhow::Result<()> {
    let range = range_of(&config, &options)?;
    config.globals.run = RunMode::Batch(range.clone());
    // The input is all there will be: open windows close at its end, complete.
    config.globals.end_of_input = EndOfInput::CloseWindows;
    let data_dir = config.globals.data_dir.clone();
    let _lock = claim(&data_dir).await?;
    discard_leftovers(&data_dir)?;
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let telemetry = Telemetry::new();
    let started = Instant::now();
    tracing::info!(range = %range.key(), data_dir = %data_dir.display(), "batch run starting");
    let mut topology = RunningTopology::start(&config, &telemetry)?;
    let mut progress = Progress::new(&config, &telemetry);
    let mut tick = tokio::time::interval(progress.every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let interrupted = loop {
        tokio::select! {
            _ = term.recv() => break true,
            _ = int.recv() => break true,
            _ = tick.tick() => progress.update(),
            _ = topology.wait() => break false,
        }
    };
    if interrupted {
        tracing::warn!("batch run interrupted: draining what is in flight; nothing is committed");
    }
    let failures = topology.stop(options.drain_timeout).await;
    let rows = progress.finish();
    if interrupted {
        anyhow::bail!(
            "the batch run was interrupted by a signal; run it again to cover {}",
            range.key()
        );
    }
    if let Some(first) = failures.first() {
        let err = first
            .result
            .as_ref()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        anyhow::bail!(
            "the batch run failed: {} component(s) failed, first `{}`: {err}",
            failures.len(),
            first.component
        );
    }
    tracing::info!(
        rows,
        elapsed_s = started.elapsed().as_secs_f64(),
        range = %range.key(),
        "batch run finished"
    );
    Ok(())
}

/// The range the run covers: `--since`/`--until` where given, else the widest range the
/// sources read. Fails unless every source is bounded.
fn range_of(config: &TopologyConfig, options: &Options) -> anyhow::Result<BatchRange> {
    let mut ranges = Vec::new();
    for (id, component) in &config.components {
        if let SectionOptions::Source(source) = component.config.options() {
            match source.bounded() {
                Some(range) => ranges.push(range),
                None => anyhow::bail!(
                    "`weir run --batch` needs every source to end by itself; the `{}` source `{id}` runs until stopped (expected e.g. a `delta_lake` source, or a `simulator` with `limit`)",
                    component.config.type_name()
                ),
            }
        }
    }
    if ranges.is_empty() {
        anyhow::bail!("`weir run --batch` needs at least one source");
    }
    // An open end on any source leaves the run's end open.
    let since = ranges.iter().map(|r| r.since).min().flatten();
    let until = match ranges.iter().any(|r| r.until.is_none()) {
        true => None,
        false => ranges.iter().filter_map(|r| r.until).max(),
    };
    let range = BatchRange {
        since: options.since.or(since),
        until: options.until.or(until),
    };
    if let (Some(since), Some(until)) = (range.since, range.until)
        && since >= until
    {
        anyhow::bail!("the batch range is empty: since {since} is not before until {until}");
    }
    Ok(range)
}

/// Holds `data_dir` for this run: no other batch run, and no live weir, may use it.
async fn claim(data_dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data_dir {}: {e}", data_dir.display()))?;
    let socket = crate::api::control::socket_path(data_dir);
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        anyhow::bail!(
            "{} belongs to a running weir (its control socket answers); a batch run needs a data_dir of its own",
            data_dir.display()
        );
    }
    let path = data_dir.join("batch.lock");
    let lock = File::create(&path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another batch run holds {} (a timer that fired twice?); this one does not start",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()))
        }
    }
}

/// Removes the disk buffers and window checkpoints a failed run left (a batch run reads
/// its whole range again, so their events would count twice).
fn discard_leftovers(data_dir: &Path) -> anyhow::Result<()> {
    // `aggregators/`: where window aggregators checkpoint their open windows.
    let checkpoints = data_dir.join("aggregators");
    match std::fs::remove_dir_all(&checkpoints) {
        Ok(()) => {
            tracing::debug!(path = %checkpoints.display(), "removed the window checkpoints of an earlier batch run")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot remove {}: {e}", checkpoints.display()),
    }
    let dirs = crate::buffers::disk_dirs(data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot list the disk buffers of {}: {e}",
            data_dir.display()
        )
    })?;
    for (id, dir) in dirs {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot discard {}: {e}", dir.display()))?;
        tracing::debug!(component_id = %id, path = %dir.display(), "removed the disk buffer of an earlier batch run (this run reads its range again)");
    }
    Ok(())
}

/// Rows read against rows planned: a bar on a terminal, log lines otherwise.
struct Progress {
    telemetry: std::sync::Arc<Telemetry>,
    sources: Vec<ComponentLabels>,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    fn new(config: &TopologyConfig, telemetry: &std::sync::Arc<Telemetry>) -> Self {
        let sources = config
            .components
            .iter()
            .filter(|(_, c)| c.config.kind() == ComponentKind::Source)
            .map(|(id, c)| ComponentLabels {
                component_id: id.to_string(),
                component_kind: c.config.kind().noun().to_owned(),
                component_type: c.config.type_name().to_owned(),
            })
            .collect();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows ({per_sec}, ETA {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            telemetry: std::sync::Arc::clone(telemetry),
            sources,
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    fn every(&self) -> Duration {
        match self.bar {
            Some(_) => BAR_EVERY,
            None => LOG_EVERY,
        }
    }

    /// Rows the sources read so far, and rows they planned.
    fn counts(&self) -> (u64, u64) {
        let metrics = self.telemetry.metrics();
        let read = self
            .sources
            .iter()
            .map(|l| metrics.received_events.get_or_create(l).get())
            .sum();
        let planned = self
            .sources
            .iter()
            .map(|l| u64::try_from(metrics.source_planned_rows.get_or_create(l).get()).unwrap_or(0))
            .sum();
        (read, planned)
    }

    fn update(&mut self) {
        let (read, planned) = self.counts();
        match &self.bar {
            Some(bar) => {
                bar.set_length(planned.max(read));
                bar.set_position(read);
            }
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                let elapsed = self.started.elapsed().as_secs_f64();
                let rate = read as f64 / elapsed.max(1e-3);
                let eta = match planned > read && rate > 0.0 {
                    true => format!("{:.0}s", (planned - read) as f64 / rate),
                    false => "-".to_owned(),
                };
                tracing::info!(rows = read, planned, rows_per_second = rate.round(), eta = %eta, "batch progress");
            }
            None => {}
        }
    }

    /// Ends the bar; returns the rows read.
    fn finish(&mut self) -> u64 {
        let (read, _) = self.counts();
        if let Some(bar) = self.bar.take() {
            bar.set_length(read);
            bar.finish_with_message("done");
        }
        read
    }
}

/// An instant on the command line: RFC 3339 (`2026-12-06T00:00:00Z`), a UTC date
/// (`2026-12-06`, its midnight), `now`, `today`, `yesterday` (UTC midnights), `this-hour`
/// or `last-hour` (the start of the current or the previous hour): what a timer's unit
/// can pass without a shell.
pub fn parse_instant(text: &str) -> Result<Timestamp, String> {
    const DAY: i64 = 86_400;
    let midnight = |days_back: i64| -> Result<Timestamp, String> {
        let today = Timestamp::now().as_second().div_euclid(DAY);
        Timestamp::from_second((today - days_back) * DAY).map_err(|e| e.to_string())
    };
    match text {
        "now" => Ok(Timestamp::now()),
        "today" => midnight(0),
        "yesterday" => midnight(1),
        "this-hour" | "last-hour" => {
            let hours = Timestamp::now().as_second().div_euclid(3600) - i64::from(text == "last-hour");
            Timestamp::from_second(hours * 3600).map_err(|e| e.to_string())
        }
        // A date is its UTC midnight.
        _ => text
            .parse::<Timestamp>()
            .or_else(|_| {
                text.parse::<jiff::civil::Date>()?;
                format!("{text}T00:00:00Z").parse::<Timestamp>()
            })
            .map_err(|_| format!("expected an RFC 3339 instant, a date (2026-12-06), `today`, `yesterday`, `this-hour`, `last-hour` or `now`, found `{text}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_on_the_command_line() {
        assert_eq!(
            parse_instant("2026-12-06").unwrap(),
            "2026-12-06T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_instant("2026-12-06T10:00:00+01:00").unwrap(),
            "2026-12-06T09:00:00Z".parse::<Timestamp>().unwrap()
        );
        let yesterday = parse_instant("yesterday").unwrap();
        let today = parse_instant("today").unwrap();
        assert_eq!(today.as_second() - yesterday.as_second(), 86_400);
        assert_eq!(today.as_second() % 86_400, 0);
        let (last, this) = (
            parse_instant("last-hour").unwrap(),
            parse_instant("this-hour").unwrap(),
        );
        assert_eq!(this.as_second() - last.as_second(), 3600);
        assert_eq!(this.as_second() % 3600, 0);
        assert!(parse_instant("last tuesday").is_err());
    }
}
