//! `weir tap`: prints live samples of the events passing a running weir's components, read
//! from `GET /v1/tap` (NDJSON), until interrupted.
//!
//! Events go to stdout in the chosen format; notices (what the tap watches, events skipped
//! by `--limit` or lost by a slow reader) go to stderr, so stdout stays machine-readable.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::format::{TapFormat, render};
use crate::api_client::{ApiArgs, ApiClient};

#[derive(Debug, Args)]
pub struct TapArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Sample the outputs of these components (globs; `id.name` for a named output such
    /// as `decode.errors`). Repeatable. Without it and `--inputs-of`: every output.
    #[arg(long = "outputs-of", value_name = "GLOB")]
    outputs_of: Vec<String>,
    /// Sample what these components take from their input (globs). Repeatable.
    #[arg(long = "inputs-of", value_name = "GLOB")]
    inputs_of: Vec<String>,
    /// The most events shown per interval; the rest are skipped (and counted on stderr).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// The interval `--limit` counts over.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    interval: Duration,
    /// How events are printed.
    #[arg(long, value_enum, default_value = "json")]
    format: TapFormat,
    /// Print each event with where it was seen (component, output or input) and its
    /// metadata (source, times, trace id, headers).
    #[arg(long)]
    meta: bool,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<crate::config::Duration>()
        .map(crate::config::Duration::get)
}

pub fn main(args: TapArgs) -> ExitCode {
    let done = super::runtime().and_then(|runtime| runtime.block_on(run(&args)));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &TapArgs) -> Result<(), String> {
    let client = ApiClient::new(&args.api)?;
    let mut query: Vec<(&str, String)> = vec![
        ("limit", args.limit.to_string()),
        ("interval_ms", args.interval.as_millis().to_string()),
    ];
    if !args.outputs_of.is_empty() {
        query.push(("outputs_of", args.outputs_of.join(",")));
    }
    if !args.inputs_of.is_empty() {
        query.push(("inputs_of", args.inputs_of.join(",")));
    }
    let response = client
        .request(reqwest::Method::GET, "/v1/tap")
        .query(&query)
        .send()
        .await
        .map_err(|e| format!("cannot reach the weir API at {}: {e}", client.base()))?;
    if !response.status().is_success() {
        // The API's error, as every other client command shows it.
        let refused = client.send_response(response).await;
        return Err(refused.err().unwrap_or_else(|| "unexpected answer".into()));
    }
    let mut response = response;
    let mut pending = Vec::new();
    let mut shown = 0u64;
    let stdout = std::io::stdout();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the tap ended: {e}"))?
    {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(record) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if record.get("notice").is_some() {
                notice(&record);
                continue;
            }
            let text = render(&shown_record(record, args.meta), args.format);
            let mut out = stdout.lock();
            // A closed stdout (`| head`) ends the tap.
            if out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return Ok(());
            }
            shown += 1;
            if args.count.is_some_and(|count| shown >= count) {
                return Ok(());
            }
        }
    }
    Err("the weir API closed the tap (weir stopped?)".into())
}

/// What is printed of a tapped record: the event alone, or with `--meta` the record (where
/// it was seen) with the event's metadata.
fn shown_record(mut record: Value, meta: bool) -> Value {
    match meta {
        true => record,
        false => {
            let mut event = record["event"].take();
            if let Some(map) = event.as_object_mut() {
                map.remove("meta");
            }
            event
        }
    }
}

fn notice(record: &Value) {
    match record["notice"].as_str() {
        Some("attached") => match record["matched"].as_array() {
            Some(points) if !points.is_empty() => {
                let points: Vec<&str> = points.iter().filter_map(Value::as_str).collect();
                eprintln!("[tap] watching {}", points.join(", "));
            }
            _ => eprintln!("[tap] no component matches yet; waiting for one (a reload may add it)"),
        },
        Some("limited") => eprintln!(
            "[tap] skipped {} events over --limit in the last interval",
            record["skipped"]
        ),
        Some("dropped") => eprintln!(
            "[tap] lost {} events: this tap reads too slowly",
            record["dropped"]
        ),
        _ => eprintln!("[tap] {record}"),
    }
}
