//! The `weir` command line: `run`, `validate`, `schema`, `graph`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api::{self, ApiState};
use crate::config::{self, Diagnostics, LogFormatName, TopologyConfig};
use crate::telemetry::Telemetry;
use crate::telemetry::logging::{self, LogFormat};
use crate::topology::{RunningTopology, graph};

/// Exit code for an invalid configuration (sysexits `EX_CONFIG`).
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "IoT telemetry pipelines: decode, enrich, window, alarm, act."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a topology until SIGTERM/SIGINT, or until every source has finished.
    Run {
        /// Pipeline files or directories (merged into one topology).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Log line format (default: the pipeline's `log.format`, else text).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// Log level or filter, e.g. `info` or `weir=debug` (`RUST_LOG` wins).
        #[arg(long)]
        log_level: Option<String>,
        /// How long a shutdown may take to drain the graph before it abandons it.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        drain_timeout: Duration,
    },
    /// Check pipeline files without starting anything (no network I/O).
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the pipeline language.
    Schema {
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print the topology as a graph.
    Graph {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<config::Duration>().map(config::Duration::get)
}

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            paths,
            log_format,
            log_level,
            drain_timeout,
        } => run(&paths, log_format, log_level, drain_timeout),
        Command::Validate { paths } => validate(&paths),
        Command::Schema { output } => schema(output),
        Command::Graph { paths, format } => match load(&paths) {
            Some(config) => {
                let text = match format {
                    GraphFormat::Dot => graph::to_dot(&config),
                    GraphFormat::Mermaid => graph::to_mermaid(&config),
                };
                print!("{text}");
                ExitCode::SUCCESS
            }
            None => ExitCode::from(EXIT_CONFIG),
        },
    }
}

/// Loads and validates; prints diagnostics to stderr.
fn load(paths: &[PathBuf]) -> Option<TopologyConfig> {
    match config::load(paths) {
        Ok((config, warnings)) => {
            print_diagnostics(&warnings);
            Some(config)
        }
        Err(errors) => {
            print_diagnostics(&errors);
            None
        }
    }
}

fn print_diagnostics(diagnostics: &Diagnostics) {
    if !diagnostics.0.is_empty() {
        eprintln!("{diagnostics}");
    }
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    let Some(config) = load(paths) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let mut counts = std::collections::BTreeMap::new();
    for component in config.components.values() {
        *counts.entry(component.config.kind().section()).or_insert(0) += 1;
    }
    let summary: Vec<String> = counts
        .iter()
        .map(|(section, n)| format!("{n} {section}"))
        .collect();
    println!(
        "valid: {} components ({})",
        config.components.len(),
        summary.join(", ")
    );
    ExitCode::SUCCESS
}

fn schema(output: Option<PathBuf>) -> ExitCode {
    let text = config::schema::pipeline_schema_json();
    match output {
        Some(path) => match std::fs::write(&path, text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: cannot write {}: {err}", path.display());
                ExitCode::FAILURE
            }
        },
        None => {
            print!("{text}");
            ExitCode::SUCCESS
        }
    }
}

fn run(
    paths: &[PathBuf],
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    drain_timeout: Duration,
) -> ExitCode {
    let Some(config) = load(paths) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let format = log_format.unwrap_or(match config.globals.log.format {
        Some(LogFormatName::Json) => LogFormat::Json,
        _ => LogFormat::Text,
    });
    let level = log_level
        .or_else(|| config.globals.log.level.clone())
        .unwrap_or_else(|| "info".into());
    logging::init(format, &level);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_topology(config, drain_timeout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_topology(config: TopologyConfig, drain_timeout: Duration) -> anyhow::Result<()> {
    let telemetry = Telemetry::new();
    let api_state = ApiState::new(telemetry.clone());
    let api_shutdown = tokio_util::sync::CancellationToken::new();
    let api_task = match config.globals.api.enabled {
        true => Some(
            api::serve(
                config.globals.api.listen,
                api_state.clone(),
                api_shutdown.clone(),
            )
            .await?,
        ),
        false => None,
    };

    let mut topology = RunningTopology::start(&config, &telemetry)?;
    api_state.set_ready(true);
    tracing::info!(components = config.components.len(), "topology running");

    let stop = shutdown_signal();
    tokio::pin!(stop);
    let failures = tokio::select! {
        signal = &mut stop => {
            tracing::info!(signal, ?drain_timeout, "stopping: draining the topology");
            api_state.set_ready(false);
            topology.stop(drain_timeout).await.len()
        }
        failures = topology.wait() => {
            tracing::info!("every source has finished and the topology is drained");
            failures.len()
        }
    };
    api_state.set_ready(false);
    api_shutdown.cancel();
    if let Some(task) = api_task {
        let _ = task.await;
    }
    if failures > 0 {
        anyhow::bail!("{failures} component(s) failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT with the signal's name. SIGHUP is logged and ignored
/// until hot reload lands, instead of killing the process.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop weir with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = hup.recv() => tracing::warn!("SIGHUP received: reloading is not supported by this build yet; ignoring"),
        }
    }
}
