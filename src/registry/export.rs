//! `weir devices export`: the registry of a running weir written to a file of devices
//! ([`super::rows`]) — for `weir devices import` into another weir, or for a batch run's
//! `registry: { snapshot: FILE }` — without stopping it.
//!
//! It pages through `GET /v1/devices` (in id order, `after` the last id of the page
//! before), so each device is written as it was when its page was read: a change made
//! while the export runs may show in one device and not in another, a device created
//! behind the cursor is not in it, and none is written twice. The list leaves keys out;
//! `--with-keys` asks for each device's record (`admin` only). A file is replaced only
//! when the export is complete (written beside it, then renamed), so a batch run never
//! loads half an export.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

use super::cli::{print, segment};
use super::rows::{Format, Writer};
use crate::api_client::ApiClient;

/// The most devices the API lists in one page.
const MAX_PAGE: usize = 1000;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Where to write (replaced once the export is complete); default: stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Default: from the output's name (`.csv`, else NDJSON).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Write the devices' keys too (needs an `admin` token, and one request per device).
    /// A batch run's `enrich` needs none.
    #[arg(long)]
    with_keys: bool,
    /// Only devices with this tag, `key=value`; repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Devices per request (1 to 1000).
    #[arg(long, default_value_t = MAX_PAGE)]
    page: usize,
}

/// Runs `weir devices export`.
pub async fn run(client: &ApiClient, args: ExportArgs) -> Result<ExitCode, String> {
    let format = args
        .format
        .or_else(|| args.output.as_deref().map(Format::of))
        .unwrap_or(Format::Ndjson);
    match &args.output {
        None => {
            let stdout = std::io::stdout().lock();
            let (devices, _) =
                write_all(client, &args, Writer::new(stdout, format, args.with_keys)).await?;
            eprintln!("exported {devices} devices");
        }
        Some(file) => {
            let partial = partial_name(file);
            let out = std::fs::File::create(&partial)
                .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
            let out = std::io::BufWriter::new(out);
            let written = write_all(client, &args, Writer::new(out, format, args.with_keys))
                .await
                .and_then(|(devices, out)| {
                    let file = out.into_inner().map_err(|e| e.into_error().to_string())?;
                    file.sync_all().map_err(|e| e.to_string())?;
                    Ok(devices)
                });
            let devices = match written {
                Ok(devices) => devices,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e);
                }
            };
            std::fs::rename(&partial, file).map_err(|e| {
                format!(
                    "cannot rename {} to {}: {e}",
                    partial.display(),
                    file.display()
                )
            })?;
            print(&json!({ "devices": devices, "file": file }));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dir/.name.partial` for `dir/name`: the same directory, so the rename is atomic.
fn partial_name(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "devices".to_owned());
    file.with_file_name(format!(".{name}.partial"))
}

/// Pages through the devices into `writer`; how many were written, and the output.
async fn write_all<W: Write>(
    client: &ApiClient,
    args: &ExportArgs,
    writer: std::io::Result<Writer<W>>,
) -> Result<(usize, W), String> {
    let failed = |e: std::io::Error| format!("cannot write the export: {e}");
    let mut writer = writer.map_err(failed)?;
    let progress = indicatif::ProgressBar::new_spinner();
    let mut query = format!("?limit={}", args.page.clamp(1, MAX_PAGE));
    for tag in &args.tags {
        query.push_str(&format!("&tag={}", segment(tag)));
    }
    let (mut after, mut devices) = (None::<String>, 0usize);
    loop {
        let path = match &after {
            Some(after) => format!("/v1/devices{query}&after={}", segment(after)),
            None => format!("/v1/devices{query}"),
        };
        let page = client
            .call(reqwest::Method::GET, &path, None)
            .await
            .map_err(|e| format!("export stopped after {devices} devices: {e}"))?;
        let records = page["devices"]
            .as_array()
            .ok_or("the API answered a page without `devices`")?;
        for record in records {
            let record = match args.with_keys {
                true => match with_keys(client, record).await? {
                    Some(full) => full,
                    // Deleted since its page was read.
                    None => continue,
                },
                false => record.clone(),
            };
            writer.write(&record).map_err(failed)?;
            devices += 1;
        }
        progress.set_message(format!("{devices} devices"));
        progress.tick();
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    progress.finish_and_clear();
    Ok((devices, writer.finish().map_err(failed)?))
}

/// The record of `listed` with its keys, or `None` if the device is gone.
async fn with_keys(client: &ApiClient, listed: &Value) -> Result<Option<Value>, String> {
    let id = listed["id"]
        .as_str()
        .ok_or("the API listed a device without an id")?;
    let path = format!("/v1/devices/{}", segment(id));
    let response = client
        .request(reqwest::Method::GET, &path)
        .send()
        .await
        .map_err(|e| format!("cannot reach the weir API at {}: {e}", client.base()))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let record = client.send_response(response).await?;
    if record.get("primary_key").is_none() {
        return Err(format!(
            "the API showed device `{id}` without its keys: --with-keys needs an `admin` token"
        ));
    }
    Ok(Some(record))
}
