//! `weir devices …`: the registry's command line, a client of the admin API.
//!
//! Every command prints the API's JSON answer (pretty) on stdout; errors go to stderr with a
//! non-zero exit. `import` reads CSV or NDJSON, sends it in chunks (one transaction each),
//! shows a progress bar on a terminal, reports each failed row and goes on; a re-run after
//! an interruption skips the devices that exist and adds the rest.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::{keys, sas};
use crate::api_client::{ApiArgs, ApiClient};

#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: DevicesCommand,
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// Register a device (keys are generated unless given).
    Add {
        id: String,
        /// A tag, `key=value` (numbers and booleans are kept as such); repeatable.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        #[arg(long)]
        primary_key: Option<String>,
        #[arg(long)]
        secondary_key: Option<String>,
        #[arg(long)]
        x509_thumbprint: Option<String>,
        /// Register it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Show a device, with its keys.
    Get { id: String },
    /// List devices (without keys), in id order.
    List {
        /// Only devices with this tag, `key=value`; repeatable.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Devices per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Remove a device.
    Rm {
        id: String,
        /// Only if its etag is still this one.
        #[arg(long)]
        if_match: Option<String>,
    },
    /// Let a device send again.
    Enable { id: String },
    /// Refuse a device at every source.
    Disable { id: String },
    /// The secondary key becomes the primary; a new secondary is generated.
    RotateKey { id: String },
    /// Print a SAS token (an `Authorization` header value) for a device.
    Token {
        id: String,
        /// How long the token is valid, e.g. `1h`.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Which key signs it.
        #[arg(long, value_enum, default_value = "primary")]
        key: KeyChoice,
        /// Sign with this Base64 key here instead of asking the API to sign (e.g. a
        /// group-derived key).
        #[arg(long, conflicts_with = "key")]
        with_key: Option<String>,
    },
    /// Import devices from CSV (header `id,status,primary_key,secondary_key,tag.<name>...`)
    /// or NDJSON (one device object per line).
    Import {
        file: PathBuf,
        /// Default: from the file name (`.csv`, else NDJSON).
        #[arg(long, value_enum)]
        format: Option<ImportFormat>,
        /// Rows per request (each one transaction).
        #[arg(long, default_value_t = 2000)]
        chunk: usize,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KeyChoice {
    Primary,
    Secondary,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ImportFormat {
    Csv,
    Ndjson,
}

/// Runs `weir devices …`.
pub fn main(args: DevicesArgs) -> ExitCode {
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
    let client = match ApiClient::new(&args.api) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&client, args.command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn print(value: &Value) {
    if !value.is_null() {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    }
}

async fn run(client: &ApiClient, command: DevicesCommand) -> Result<ExitCode, String> {
    use reqwest::Method;
    let device = |id: &str| format!("/v1/devices/{}", segment(id));
    let answer = match command {
        DevicesCommand::Add {
            id,
            tags,
            primary_key,
            secondary_key,
            x509_thumbprint,
            disabled,
        } => {
            let mut body = json!({ "id": id, "tags": parse_tags(&tags)? });
            let fields = [
                ("primary_key", primary_key),
                ("secondary_key", secondary_key),
                ("x509_thumbprint", x509_thumbprint),
                ("status", disabled.then(|| "disabled".to_owned())),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    body[name] = Value::String(value);
                }
            }
            client
                .call(Method::POST, "/v1/devices", Some(&body))
                .await?
        }
        DevicesCommand::Get { id } => client.call(Method::GET, &device(&id), None).await?,
        DevicesCommand::List { tags, limit, after } => {
            let mut query = format!("?limit={limit}");
            for tag in tags {
                query.push_str(&format!("&tag={}", segment(&tag)));
            }
            if let Some(after) = after {
                query.push_str(&format!("&after={}", segment(&after)));
            }
            client
                .call(Method::GET, &format!("/v1/devices{query}"), None)
                .await?
        }
        DevicesCommand::Rm { id, if_match } => {
            let mut request = client.request(Method::DELETE, &device(&id));
            if let Some(etag) = if_match {
                request = request.header("If-Match", etag);
            }
            client.send(request).await?
        }
        DevicesCommand::Enable { id } => {
            let path = format!("{}/enable", device(&id));
            client.call(Method::POST, &path, None).await?
        }
        DevicesCommand::Disable { id } => {
            let path = format!("{}/disable", device(&id));
            client.call(Method::POST, &path, None).await?
        }
        DevicesCommand::RotateKey { id } => {
            let path = format!("{}/rotate-key", device(&id));
            client.call(Method::POST, &path, None).await?
        }
        DevicesCommand::Token {
            id,
            ttl,
            key,
            with_key,
        } => {
            let ttl: crate::config::Duration = ttl.parse()?;
            let token = match with_key {
                Some(key) => {
                    let key = keys::decode(&key).ok_or("the key is not Base64")?;
                    let expiry =
                        jiff::Timestamp::now().as_second().max(0) as u64 + ttl.get().as_secs();
                    sas::sign(&sas::device_resource(&id), &key, expiry)
                }
                // The API signs it: an operator may issue tokens without reading keys.
                None => {
                    let key = match key {
                        KeyChoice::Primary => "primary",
                        KeyChoice::Secondary => "secondary",
                    };
                    let body = json!({ "ttl": ttl.to_string(), "key": key });
                    let path = format!("{}/sas-token", device(&id));
                    let answer = client.call(Method::POST, &path, Some(&body)).await?;
                    answer["token"]
                        .as_str()
                        .ok_or("the API answered without a token")?
                        .to_owned()
                }
            };
            println!("{token}");
            return Ok(ExitCode::SUCCESS);
        }
        DevicesCommand::Import {
            file,
            format,
            chunk,
        } => return import(client, &file, format, chunk.clamp(1, 50_000)).await,
    };
    print(&answer);
    Ok(ExitCode::SUCCESS)
}

/// `key=value` pairs into tags; values that read as JSON numbers or booleans stay typed.
fn parse_tags(tags: &[String]) -> Result<Map<String, Value>, String> {
    tags.iter()
        .map(|tag| {
            let (key, value) = tag
                .split_once('=')
                .ok_or_else(|| format!("tag `{tag}` is not key=value"))?;
            Ok((key.trim().to_owned(), typed(value)))
        })
        .collect()
}

fn typed(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ (Value::Number(_) | Value::Bool(_))) => value,
        _ => Value::String(text.to_owned()),
    }
}

/// One row of an import file: its line and the device object (or why it is unusable).
type Row = (usize, Result<Value, String>);

fn read_rows(file: &PathBuf, format: ImportFormat) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    match format {
        ImportFormat::Ndjson => Ok(text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                let row = match serde_json::from_str::<Value>(line) {
                    Ok(value @ Value::Object(_)) => Ok(value),
                    Ok(_) => Err("expected a JSON object".to_owned()),
                    Err(e) => Err(format!("not JSON: {e}")),
                };
                (n + 1, row)
            })
            .collect()),
        ImportFormat::Csv => csv_rows(&text),
    }
}

/// CSV with a header: `id`, `status`, `primary_key`, `secondary_key`, `x509_thumbprint`,
/// `tags` (a JSON object) and `tag.<name>` columns; empty cells are left out.
fn csv_rows(text: &str) -> Result<Vec<Row>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("line 1: {e}"))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if !header.iter().any(|h| h == "id") {
        return Err("line 1: the CSV header has no `id` column".into());
    }
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let line = n + 2;
        let row = record.map_err(|e| e.to_string()).and_then(|record| {
            if record.len() != header.len() {
                return Err(format!(
                    "{} cells, the header has {}",
                    record.len(),
                    header.len()
                ));
            }
            let mut device = Map::new();
            let mut tags = Map::new();
            for (name, cell) in header.iter().zip(record.iter()) {
                if cell.is_empty() {
                    continue;
                }
                match name.strip_prefix("tag.") {
                    Some(tag) => {
                        tags.insert(tag.to_owned(), typed(cell));
                    }
                    None if name == "tags" => {
                        let parsed: Map<String, Value> = serde_json::from_str(cell)
                            .map_err(|e| format!("`tags` is not a JSON object: {e}"))?;
                        tags.extend(parsed);
                    }
                    None => {
                        device.insert(name.clone(), Value::String(cell.to_owned()));
                    }
                }
            }
            if !tags.is_empty() {
                device.insert("tags".into(), Value::Object(tags));
            }
            Ok(Value::Object(device))
        });
        rows.push((line, row));
    }
    Ok(rows)
}

async fn import(
    client: &ApiClient,
    file: &PathBuf,
    format: Option<ImportFormat>,
    chunk: usize,
) -> Result<ExitCode, String> {
    let format = format.unwrap_or(match file.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("csv") => ImportFormat::Csv,
        _ => ImportFormat::Ndjson,
    });
    let rows = read_rows(file, format)?;
    let progress = indicatif::ProgressBar::new(rows.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} devices ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut created, mut existed, mut failed) = (0usize, 0usize, 0usize);
    let mut report = |line: usize, error: &str| {
        failed += 1;
        progress.suspend(|| eprintln!("{}:{line}: {error}", file.display()));
    };
    for part in rows.chunks(chunk) {
        let mut lines = Vec::with_capacity(part.len());
        let mut body = Vec::with_capacity(part.len());
        for (line, row) in part {
            match row {
                Ok(device) => {
                    lines.push(*line);
                    body.push(device.clone());
                }
                Err(error) => report(*line, error),
            }
        }
        if !body.is_empty() {
            let answer = client
                .call(reqwest::Method::POST, "/v1/devices/import", Some(&Value::Array(body)))
                .await
                .map_err(|e| {
                    format!(
                        "import interrupted after {} of {} rows ({e}); run it again to add the rest (existing devices are skipped)",
                        progress.position(),
                        rows.len()
                    )
                })?;
            let results = answer["results"].as_array().cloned().unwrap_or_default();
            for (line, result) in lines.iter().zip(results.iter()) {
                match result["outcome"].as_str() {
                    Some("created") => created += 1,
                    Some("exists") => existed += 1,
                    _ => report(*line, result["error"].as_str().unwrap_or("failed")),
                }
            }
        }
        progress.inc(part.len() as u64);
    }
    progress.finish_and_clear();
    let summary =
        json!({ "rows": rows.len(), "created": created, "existed": existed, "failed": failed });
    print(&summary);
    Ok(match failed {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(2),
    })
}
