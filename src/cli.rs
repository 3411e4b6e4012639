//! The `weir` command line: `run`, `reload`, `validate`, `test`, `schema`, `graph`, `devices`,
//! `tokens`, `completions`, and the hidden `man` that writes the man pages for packages.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::config::{self, ComponentId, Diagnostics, LogFormatName, TopologyConfig};
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
        /// Delete the disk buffer of this component id, with the events it holds, before
        /// starting (repeatable). A start refuses while a buffer the pipeline no longer has
        /// holds events.
        #[arg(long = "discard-buffer", value_name = "ID")]
        discard_buffers: Vec<String>,
        /// Run once over a finished range and exit (every source must end by itself, e.g.
        /// `delta_lake`): windows close at the end of input, table sinks commit the range
        /// once. Exit status 0 on success. Uses the pipeline's own `data_dir`.
        #[arg(long, conflicts_with_all = ["watch", "discard_buffers"])]
        batch: bool,
        /// With `--batch`: read from this instant (RFC 3339, a UTC date, `today`,
        /// `yesterday`), overriding the sources' `since`.
        #[arg(long, requires = "batch", value_parser = crate::batch::parse_instant)]
        since: Option<jiff::Timestamp>,
        /// With `--batch`: read until this instant (exclusive), overriding `until`.
        #[arg(long, requires = "batch", value_parser = crate::batch::parse_instant)]
        until: Option<jiff::Timestamp>,
    },
    /// Ask the running weir to reload its pipeline files (as SIGHUP does), through its
    /// control socket, `data_dir/control.sock`.
    ///
    /// With `--wait`, prints what the reload changed, or why it was refused, and exits
    /// non-zero unless it was applied (or changed nothing): 78 for invalid pipeline files,
    /// 1 for any other failure. The running topology is untouched by a refused reload.
    /// Needs no token: the socket is open only to the user weir runs as (and root).
    Reload {
        /// Wait for the outcome of the reload and exit with it (what `ExecReload=` needs).
        #[arg(long)]
        wait: bool,
        /// The running weir's `data_dir`, where its control socket is.
        #[arg(long, env = "WEIR_DATA_DIR", default_value = config::component::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// How long `--wait` waits for the outcome.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
        /// Let the reload delete the disk buffer of this component id, which it removes,
        /// with the events it holds (repeatable). Without it such a reload is refused.
        #[arg(long = "discard-buffer", value_name = "ID")]
        discard_buffers: Vec<String>,
    },
    /// Check pipeline files without starting anything (no network I/O).
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the unit tests written beside pipelines (`tests:`, `<name>.test.yaml`) through
    /// their transforms and aggregators; sources and sinks do not run.
    ///
    /// Exits 0 when every test passed, 1 when one failed, 78 for invalid files.
    Test(crate::pipeline_test::TestArgs),
    /// Print the JSON Schema of the pipeline language (or the admin API's OpenAPI document).
    Schema {
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The OpenAPI 3.1 document of the admin API instead
        /// (`schemas/admin-api.openapi.json`).
        #[arg(long)]
        openapi: bool,
    },
    /// Manage the device registry through the admin API.
    Devices(crate::registry::cli::DevicesArgs),
    /// Make, list and revoke API tokens (through the API, or on data_dir while weir is
    /// stopped).
    Tokens(crate::tokens::cli::TokensArgs),
    /// Print live samples of the events passing a running weir's components (through
    /// its API; device keys and `redact` fields masked).
    Tap(crate::ops::tap::TapArgs),
    /// A terminal dashboard of a running weir's components (through its API's /metrics).
    Top(crate::ops::top::TopArgs),
    /// Print the topology as a graph.
    Graph {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
    /// Print a shell completion script (e.g. `weir completions bash > /etc/bash_completion.d/weir`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (weir.1 and one per subcommand) into a directory.
    #[command(hide = true)]
    Man {
        /// The directory to write them to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
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
            discard_buffers,
            batch,
            since,
            until,
        } => run(
            &paths,
            log_format,
            log_level,
            match batch {
                true => Mode::Batch(crate::batch::Options {
                    since,
                    until,
                    drain_timeout,
                }),
                false => Mode::Daemon(daemon::Options {
                    paths: paths.clone(),
                    drain_timeout,
                    watch,
                    discard_buffers: discard_buffers
                        .iter()
                        .map(|id| ComponentId::new(id))
                        .collect(),
                }),
            },
        ),
        Command::Reload {
            wait,
            data_dir,
            timeout,
            discard_buffers,
        } => reload(&data_dir, wait, timeout, &discard_buffers),
        Command::Validate { paths } => validate(&paths),
        Command::Test(args) => crate::pipeline_test::main(args),
        Command::Schema { output, openapi } => schema(output, openapi),
        Command::Devices(args) => crate::registry::cli::main(args),
        Command::Tokens(args) => crate::tokens::cli::main(args),
        Command::Tap(args) => crate::ops::tap::main(args),
        Command::Top(args) => crate::ops::top::main(args),
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
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "weir", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => match clap_mangen::generate_to(Cli::command(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!(
                    "error: cannot write the man pages to {}: {err}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        },
    }
}

/// `weir reload`: `POST /v1/reload` on the control socket (with `?wait=false` unless
/// `wait`).
fn reload(
    data_dir: &std::path::Path,
    wait: bool,
    timeout: Duration,
    discard_buffers: &[String],
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let socket = crate::api::control::socket_path(data_dir);
    let base = socket.display();
    let mut query = vec![("wait", wait.to_string())];
    if !discard_buffers.is_empty() {
        query.push(("discard_buffers", discard_buffers.join(",")));
    }
    let answer = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .unix_socket(socket.as_path())
            .build()
            .map_err(|err| format!("cannot make an HTTP client: {err}"))?;
        let response = client
            .post("http://localhost/v1/reload")
            .query(&query)
            .timeout(timeout)
            .send()
            .await
            .map_err(|err| {
                format!("cannot reach the running weir at {base} (is it running, and is this its data_dir? --data-dir or WEIR_DATA_DIR): {err}")
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|err| format!("no answer from {base}: {err}"))?;
        Ok::<_, String>((status, text))
    });
    let (status, text) = match answer {
        Ok(answer) => answer,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let (code, line) = reload_report(status.as_u16(), &body, &text);
    match code {
        0 => println!("{line}"),
        _ => eprint_with_priority(3, &line),
    }
    ExitCode::from(code)
}

/// The exit code and the message for an answer of `POST /v1/reload`.
fn reload_report(status: u16, body: &Value, text: &str) -> (u8, String) {
    let generation = body["generation"].as_u64().unwrap_or_default();
    match (status, body["status"].as_str()) {
        (202, _) => (0, "reload requested".to_owned()),
        (200, Some("unchanged")) => (
            0,
            format!("reload: nothing changed (config generation {generation})"),
        ),
        (200, Some("applied")) => {
            let count = |key: &str| body["diff"][key].as_array().map_or(0, Vec::len);
            (
                0,
                format!(
                    "reload applied (config generation {generation}): {} added, {} removed, {} changed, {} rewired",
                    count("added"),
                    count("removed"),
                    count("changed"),
                    count("rewired")
                ),
            )
        }
        (_, Some("rejected")) => {
            let reason = body["reason"].as_str().unwrap_or("failed");
            let errors: Vec<&str> = body["errors"]
                .as_array()
                .map(|errors| errors.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let code = if reason == "invalid" { EXIT_CONFIG } else { 1 };
            (
                code,
                format!(
                    "reload refused ({reason}), the running topology goes on:\n{}",
                    errors.join("\n")
                ),
            )
        }
        _ => {
            let reason = body["error"].as_str().unwrap_or(text);
            (1, format!("reload failed: HTTP {status}: {reason}"))
        }
    }
}

/// Loads and validates; prints diagnostics to stderr.
fn load(paths: &[PathBuf]) -> Option<TopologyConfig> {
    match config::load(&crate::CATALOGUE, paths) {
        Ok((config, warnings)) => {
            print_diagnostics(&warnings, 4);
            Some(config)
        }
        Err(errors) => {
            print_diagnostics(&errors, 3);
            None
        }
    }
}

/// Prints diagnostics to stderr: warnings (`priority` 4) or errors (3).
fn print_diagnostics(diagnostics: &Diagnostics, priority: u8) {
    if !diagnostics.0.is_empty() {
        eprint_with_priority(priority, &diagnostics.to_string());
    }
}

/// Writes `text` to stderr; when stderr is journald's stream (`ExecStartPre=`,
/// `ExecReload=`), every line starts with its syslog priority, so `journalctl -p warning`
/// shows why a validation or a reload failed.
fn eprint_with_priority(priority: u8, text: &str) {
    if logging::stderr_is_journal() {
        for line in text.lines() {
            eprintln!("<{priority}>{line}");
        }
    } else {
        eprintln!("{text}");
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

fn schema(output: Option<PathBuf>, openapi: bool) -> ExitCode {
    let text = match openapi {
        true => crate::api::openapi::document_json(),
        false => config::schema::pipeline_schema_json(&crate::CATALOGUE),
    };
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

/// `weir run` as a daemon, or `weir run --batch`.
enum Mode {
    Daemon(daemon::Options),
    Batch(crate::batch::Options),
}

fn run(
    paths: &[PathBuf],
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    mode: Mode,
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
    let outcome = match mode {
        Mode::Daemon(options) => runtime.block_on(daemon::run(config, options)),
        Mode::Batch(options) => runtime.block_on(crate::batch::run(config, options)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn reload_outcomes_map_to_exit_codes() {
        let applied = json!({ "status": "applied", "generation": 3,
            "diff": { "added": ["a"], "removed": [], "changed": ["b", "c"], "rewired": [] } });
        assert_eq!(
            reload_report(200, &applied, ""),
            (
                0,
                "reload applied (config generation 3): 1 added, 0 removed, 2 changed, 0 rewired"
                    .to_owned()
            )
        );
        let unchanged = json!({ "status": "unchanged", "generation": 2 });
        assert_eq!(reload_report(200, &unchanged, "").0, 0);
        let invalid = json!({ "status": "rejected", "reason": "invalid",
            "errors": ["weir.yaml:3:5: unknown field `inptus`"] });
        let (code, line) = reload_report(422, &invalid, "");
        assert_eq!(code, EXIT_CONFIG);
        assert!(line.contains("unknown field `inptus`"), "{line}");
        let failed = json!({ "status": "rejected", "reason": "build_failed", "errors": ["x"] });
        assert_eq!(reload_report(500, &failed, "").0, 1);
        assert_eq!(
            reload_report(503, &json!({ "error": "weir is stopping" }), "").0,
            1
        );
        assert_eq!(reload_report(502, &Value::Null, "bad gateway").0, 1);
        assert_eq!(
            reload_report(202, &json!({ "status": "requested" }), "").0,
            0
        );
    }
}
