//! `weir run`: the API, the topology, and everything that stops or reloads it.
//!
//! One loop owns the running topology and reacts to four things: SIGTERM/SIGINT (drain and
//! exit), SIGHUP, `POST /v1/reload` (on the API, or on the control socket that `weir
//! reload` uses) and — with `--watch` or `watch: true` — a change to a
//! pipeline file (reload), and the end of every source (exit). A reload reads and validates
//! the files first; an invalid file changes nothing and says why.
//!
//! Under systemd (`NOTIFY_SOCKET` set) the loop also tells the service manager where it is
//! (see [`crate::systemd`]): ready, reloading, stopping, a status line, and the watchdog.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::reload::{ReloadOutcome, ReloadRequest};
use crate::api::{self, ApiState};
use crate::config::{self, TopologyConfig};
use crate::systemd;
use crate::telemetry::ComponentLabels;
use crate::telemetry::Telemetry;
use crate::telemetry::events::{ReloadApplied, ReloadFailed};
use crate::tokens::TokenStore;
use crate::topology::RunningTopology;
use crate::topology::leftovers::{self, Discard};

/// How long a file change waits for more changes before the reload (editors write twice).
const DEBOUNCE: Duration = Duration::from_millis(300);

pub struct Options {
    pub paths: Vec<PathBuf>,
    pub drain_timeout: Duration,
    pub watch: bool,
    /// Disk buffers to delete, with their events, before the start (`--discard-buffer`).
    pub discard_buffers: Discard,
}

/// Runs until SIGTERM/SIGINT or until every source has finished.
pub async fn run(config: TopologyConfig, options: Options) -> anyhow::Result<()> {
    let telemetry = Telemetry::new();
    // Spans of traced readings (`telemetry.otlp`); stopped after the topology, so the
    // last hops are sent.
    let spans_shutdown = CancellationToken::new();
    let spans_task = match &config.globals.telemetry.otlp {
        Some(otlp) => {
            let (queue, task) = crate::telemetry::otlp::start(otlp, spans_shutdown.clone())?;
            telemetry.export_spans(queue);
            Some(task)
        }
        None => None,
    };
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(8);
    let data_dir = &config.globals.data_dir;
    let tokens = match config.globals.api.enabled {
        true => Some(open_tokens(data_dir).await?),
        false => None,
    };
    let auth =
        api::Auth::new(tokens.clone(), &config.globals.api.auth).map_err(anyhow::Error::msg)?;
    let audit = Arc::new(crate::audit::AuditLog::new(data_dir));
    let api_state = ApiState::new(telemetry.clone(), Some(reload_tx), auth, Some(audit));
    let api_shutdown = CancellationToken::new();
    let api_task = match config.globals.api.enabled {
        true => {
            Some(api::serve(&config.globals.api, api_state.clone(), api_shutdown.clone()).await?)
        }
        false => None,
    };
    let control_task =
        api::control::serve(data_dir, api_state.clone(), api_shutdown.clone()).await?;

    // Before the topology starts, so a signal sent while it starts is ours, not the
    // default action's.
    let (mut term, mut int, mut hup) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
        signal(SignalKind::hangup())?,
    );
    let watch = options.watch || config.globals.watch;
    leftovers::check_start(&config, &options.discard_buffers).await?;
    let mut daemon = Daemon {
        topology: RunningTopology::start(&config, &telemetry)?,
        telemetry,
        paths: options.paths,
        generation: 1,
        events_per_second: 0.0,
    };
    daemon.telemetry.metrics().config_generation.set(1);
    api_state.set_services(Arc::clone(daemon.topology.services()));
    let (changes_tx, mut changes) = mpsc::channel::<()>(1);
    let _watcher = match watch {
        true => Some(watch_files(&daemon.paths, changes_tx)?),
        false => None,
    };
    // Ready means armed: the signals are handled and the files watched, so a reload or a
    // stop asked for as soon as `/ready` answers is not missed.
    api_state.set_ready(true);
    tracing::info!(components = config.components.len(), "topology running");
    let mut rate = systemd::Rate::new();
    rate.update(daemon.events_in(), Instant::now());
    systemd::ready(&daemon.status_line());

    // STATUS= every 10 s; WATCHDOG=1 at half of WatchdogSec= when the unit sets one.
    let watchdog = systemd::watchdog_interval();
    let tick_every = watchdog.map_or(systemd::STATUS_EVERY, |w| w.min(systemd::STATUS_EVERY));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + tick_every, tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = Instant::now();

    let finished_by_itself = loop {
        tokio::select! {
            _ = term.recv() => break false,
            _ = int.recv() => break false,
            _ = hup.recv() => {
                daemon.notified_reload("SIGHUP", &Discard::new()).await;
            }
            Some(request) = reload_rx.recv() => {
                let outcome = daemon.notified_reload("POST /v1/reload", &request.discard).await;
                let _ = request.respond.send(outcome);
            }
            Some(()) = changes.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while changes.try_recv().is_ok() {}
                daemon.notified_reload("file change", &Discard::new()).await;
            }
            _ = tick.tick() => {
                if watchdog.is_some() {
                    match systemd::Probe::alive(daemon.topology.running_tasks()).await {
                        Ok(()) => systemd::watchdog(),
                        Err(why) => tracing::error!("watchdog: the topology is not alive ({why}); not feeding the watchdog"),
                    }
                }
                if last_status.elapsed() >= systemd::STATUS_EVERY {
                    last_status = Instant::now();
                    daemon.events_per_second = rate.update(daemon.events_in(), Instant::now());
                    systemd::status(&daemon.status_line());
                }
            }
            _ = daemon.topology.wait() => break true,
        }
    };

    systemd::stopping();
    api_state.set_ready(false);
    if finished_by_itself {
        tracing::info!("every source has finished and the topology is drained");
    } else {
        tracing::info!(drain_timeout = ?options.drain_timeout, "stopping: draining the topology");
    }
    // Drains what is left (nothing, when every source finished), then stops the services.
    let failures = daemon.topology.stop(options.drain_timeout).await.len();
    spans_shutdown.cancel();
    if let Some(task) = spans_task {
        let _ = task.await;
    }
    api_shutdown.cancel();
    if let Some(task) = api_task {
        let _ = task.await;
    }
    let _ = control_task.await;
    if let Some(tokens) = tokens {
        // The last uses not yet written down.
        let saved = tokio::task::spawn_blocking(move || tokens.save()).await;
        if let Ok(Err(err)) = saved {
            tracing::warn!("cannot write the API tokens down: {err}");
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} component(s) failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The API tokens of `data_dir`, held while weir runs; on a start with none, the first
/// admin token is written to a file, logged by its path.
async fn open_tokens(data_dir: &Path) -> anyhow::Result<Arc<TokenStore>> {
    let dir = data_dir.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        let store = TokenStore::open(&dir)?;
        let initial = store.ensure_initial_admin()?;
        Ok::<_, crate::tokens::TokenError>((store, initial))
    })
    .await?;
    let (store, initial) =
        opened.map_err(|e| anyhow::anyhow!("API tokens in {}: {e}", data_dir.display()))?;
    if let Some(path) = initial {
        tracing::info!(
            path = %path.display(),
            "no API tokens yet: wrote the first admin token to this file (mode 0600); make your own with `weir tokens create`, then delete it and `weir tokens revoke initial-admin`"
        );
    }
    Ok(Arc::new(store))
}

struct Daemon {
    topology: RunningTopology,
    telemetry: Arc<Telemetry>,
    paths: Vec<PathBuf>,
    generation: u64,
    /// Events per second the sources took in, as of the last `STATUS=` tick.
    events_per_second: f64,
}

impl Daemon {
    /// [`Daemon::reload`] between `RELOADING=1` and `READY=1`: systemd's reload job ends
    /// with the second, whether the reload was applied or refused.
    async fn notified_reload(&mut self, trigger: &str, discard: &Discard) -> ReloadOutcome {
        systemd::reloading();
        let outcome = self.reload(trigger, discard).await;
        systemd::ready(&self.status_line());
        outcome
    }

    /// The events the running sources have taken in so far.
    fn events_in(&self) -> u64 {
        let metrics = self.telemetry.metrics();
        self.topology
            .config()
            .components
            .iter()
            .filter(|(_, c)| c.config.kind().is_source())
            .map(|(id, c)| {
                let labels = ComponentLabels {
                    component_id: id.to_string(),
                    component_kind: c.config.kind().noun().to_owned(),
                    component_type: c.config.type_name().to_owned(),
                };
                metrics.received_events.get_or_create(&labels).get()
            })
            .sum()
    }

    /// The `STATUS=` line, with the rate measured at the last status tick.
    fn status_line(&self) -> String {
        systemd::status_line(
            self.topology.config().components.len(),
            self.generation,
            self.events_per_second,
        )
    }

    /// Reads, validates and applies the pipeline files; the running topology is untouched
    /// unless all of it works.
    async fn reload(&mut self, trigger: &str, discard: &Discard) -> ReloadOutcome {
        let started = Instant::now();
        let paths = self.paths.clone();
        let loaded =
            tokio::task::spawn_blocking(move || config::load(&crate::CATALOGUE, &paths)).await;
        let config = match loaded {
            Ok(Ok((config, warnings))) => {
                for warning in warnings.warnings() {
                    tracing::warn!("{warning}");
                }
                config
            }
            Ok(Err(diagnostics)) => {
                let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
                tracing::error!(
                    trigger,
                    errors = errors.len(),
                    "reload refused, the running topology goes on:\n{}",
                    errors.join("\n")
                );
                return self.rejected("invalid", errors);
            }
            Err(err) => {
                return self.rejected(
                    "invalid",
                    vec![format!("cannot read the pipeline files: {err}")],
                );
            }
        };
        match self.topology.reload_discarding(config, discard).await {
            Ok(diff) if diff.is_empty() => {
                tracing::info!(trigger, "reload: nothing changed");
                ReloadOutcome::Unchanged {
                    generation: self.generation,
                }
            }
            Ok(diff) => {
                self.generation += 1;
                ReloadApplied {
                    duration: started.elapsed(),
                    generation: self.generation,
                }
                .emit(self.telemetry.metrics());
                tracing::info!(
                    trigger,
                    generation = self.generation,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "reload applied"
                );
                ReloadOutcome::Applied {
                    generation: self.generation,
                    diff,
                }
            }
            Err(err) => {
                tracing::error!(
                    trigger,
                    "reload failed and was rolled back, the running topology goes on: {err}"
                );
                self.rejected(err.reason(), vec![err.to_string()])
            }
        }
    }

    fn rejected(&self, reason: &str, errors: Vec<String>) -> ReloadOutcome {
        ReloadFailed { reason }.emit(self.telemetry.metrics());
        ReloadOutcome::Rejected {
            reason: reason.to_owned(),
            errors,
        }
    }
}

/// Watches the pipeline files (and directories) and signals `changes` on every change to a
/// `.yaml`/`.yml` file among them. Parent directories are watched, not the files, because
/// editors replace a file rather than write it in place.
fn watch_files(
    paths: &[PathBuf],
    changes: mpsc::Sender<()>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let files: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.is_file())
        .map(|p| absolute(p))
        .collect();
    let dirs: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| absolute(p))
        .collect();
    let relevant = move |path: &Path| {
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        files.iter().any(|f| f == path)
            || (yaml && dirs.iter().any(|d| path.parent() == Some(d.as_path())))
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            )
            && event.paths.iter().any(|p| relevant(p))
        {
            let _ = changes.try_send(());
        }
    })?;
    let mut watched = std::collections::BTreeSet::new();
    for path in paths {
        let dir = if path.is_dir() {
            absolute(path)
        } else {
            absolute(path)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        if watched.insert(dir.clone()) {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
    }
    tracing::info!(paths = ?paths, "watching the pipeline files for changes");
    Ok(watcher)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
