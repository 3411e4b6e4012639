//! `weir devices …`: the registry's command line, a client of the admin API.
//!
//! Every command prints the API's JSON answer (pretty) on stdout; errors go to stderr with a
//! non-zero exit. `import` reads CSV or NDJSON, sends it in chunks (one transaction each),
//! shows a progress bar on a terminal, reports each failed row and goes on; a re-run after
//! an interruption skips the devices that exist and adds the rest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::rows::{self, Format};
use super::{export, keys, sas};
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
    /// Import devices from CSV (header `id,status,primary_key,secondary_key,tag.<name>...`;
    /// `tags`, `desired`, `reported` cells hold JSON objects) or NDJSON (one device object
    /// per line).
    Import {
        file: PathBuf,
        /// Default: from the file name (`.csv`, else NDJSON).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Rows per request (each one transaction).
        #[arg(long, default_value_t = 2000)]
        chunk: usize,
    },
    /// Write the devices (without keys unless asked) to a file that `import` reads and a
    /// batch run loads as `registry: { snapshot: FILE }`, paging through the API while
    /// weir runs.
    Export(export::ExportArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KeyChoice {
    Primary,
    Secondary,
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

pub(super) fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(super) fn print(value: &Value) {
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
        DevicesCommand::Export(options) => return export::run(client, options).await,
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
            Ok((key.trim().to_owned(), rows::typed(value)))
        })
        .collect()
}

async fn import(
    client: &ApiClient,
    file: &Path,
    format: Option<Format>,
    chunk: usize,
) -> Result<ExitCode, String> {
    let format = format.unwrap_or_else(|| Format::of(file));
    let rows = rows::read(file, format)?;
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
