//! The `weir` command line: `run`, `validate`, `schema`, `graph`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Diagnostics, LogFormatName, TopologyConfig};
use crate::daemon;
use crate::telemetry::logging::{self, LogFormat};
use crate::topology::graph;

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
        /// Reload when a pipeline file changes (also `watch: true` in the pipeline).
        #[arg(long)]
        watch: bool,
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
    /// Manage the device registry through the admin API.
    Devices(crate::registry::cli::DevicesArgs),
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
    crate::tls::install_default_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            paths,
            log_format,
            log_level,
            drain_timeout,
            watch,
        } => run(&paths, log_format, log_level, drain_timeout, watch),
        Command::Validate { paths } => validate(&paths),
        Command::Schema { output } => schema(output),
        Command::Devices(args) => crate::registry::cli::main(args),
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
    match config::load(&crate::CATALOGUE, paths) {
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
    let text = config::schema::pipeline_schema_json(&crate::CATALOGUE);
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
    watch: bool,
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
    let options = daemon::Options {
        paths: paths.to_vec(),
        drain_timeout,
        watch,
    };
    match runtime.block_on(daemon::run(config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
