//! `weir top`: a terminal dashboard of a running weir, read from its `/metrics` every
//! `--interval`: per component events in and out per second, errors, discarded events,
//! input buffer fill and the latency of traced readings; connected devices and active
//! alarms. Keys: `1`-`9` sort by a column (again: reverse), `/` filters, `q` quits.
//!
//! The metrics are fetched on a runtime thread; the screen and the keys are handled on the
//! main thread, so a slow API never freezes the keys.

mod stats;
mod view;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use self::stats::{Row, Sample};
use self::view::{Status, View};
use crate::api_client::{ApiArgs, ApiClient};

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// How often `/metrics` is read.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<crate::config::Duration>()
        .map(crate::config::Duration::get)
        .and_then(|d| match d.is_zero() {
            true => Err("must be longer than 0".into()),
            false => Ok(d),
        })
}

/// What the fetching side hands the screen.
#[derive(Default)]
struct Shared {
    rows: Vec<Row>,
    devices: f64,
    alarms: f64,
    error: Option<String>,
    loaded: bool,
}

pub fn main(args: TopArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &TopArgs) -> Result<(), String> {
    let client = ApiClient::new(&args.api)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let fetching = runtime.spawn(fetch(client, args.interval, Arc::clone(&shared)));
    let shown = show(&args.api.api, &shared);
    fetching.abort();
    shown
}

/// Reads `/metrics` every `interval` into `shared`, forever.
async fn fetch(client: ApiClient, interval: Duration, shared: Arc<Mutex<Shared>>) {
    let mut previous: Option<(Sample, Instant)> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let read = read_metrics(&client).await;
        let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Ok(sample) => {
                let now = Instant::now();
                let seconds = previous
                    .as_ref()
                    .map_or(0.0, |(_, at)| now.duration_since(*at).as_secs_f64());
                state.rows = stats::rows(previous.as_ref().map(|(s, _)| s), &sample, seconds);
                state.devices = sample.connected_devices;
                state.alarms = sample.active_alarms;
                state.error = None;
                state.loaded = true;
                previous = Some((sample, now));
            }
            Err(err) => state.error = Some(err),
        }
    }
}

async fn read_metrics(client: &ApiClient) -> Result<Sample, String> {
    let response = client
        .request(reqwest::Method::GET, "/metrics")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{} ({e})", client.base()))?;
    let status = response.status();
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => " (pass a viewer token with --token or WEIR_TOKEN)",
            _ => "",
        };
        return Err(format!("{} answered {status}{hint}", client.base()));
    }
    let text = response.text().await.map_err(|e| e.to_string())?;
    Ok(Sample::parse(&text))
}

/// Draws and handles keys until `q`.
fn show(api: &str, shared: &Mutex<Shared>) -> Result<(), String> {
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot use the terminal: {e}"))?;
    let mut view = View::default();
    let outcome = loop {
        let drawn = terminal.draw(|frame| {
            let state = shared.lock().unwrap_or_else(|p| p.into_inner());
            let status = Status {
                api,
                devices: state.devices,
                alarms: state.alarms,
                error: state.error.as_deref(),
                loaded: state.loaded,
            };
            view::draw(frame, &view, &state.rows, &status);
        });
        if let Err(err) = drawn {
            break Err(format!("cannot draw: {err}"));
        }
        match event::poll(Duration::from_millis(200)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(err) => break Err(format!("cannot read the keyboard: {err}")),
        }
        let Ok(Event::Key(key)) = event::read() else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        if handle_key(&mut view, key.code, key.modifiers) {
            break Ok(());
        }
    };
    ratatui::restore();
    outcome
}

/// Applies one key to `view`; `true` to quit.
fn handle_key(view: &mut View, code: KeyCode, modifiers: KeyModifiers) -> bool {
    if code == KeyCode::Char('c') && modifiers.contains(KeyModifiers::CONTROL) {
        return true;
    }
    if view.editing {
        match code {
            KeyCode::Enter => view.editing = false,
            KeyCode::Esc => {
                view.editing = false;
                view.filter.clear();
            }
            KeyCode::Backspace => {
                view.filter.pop();
            }
            KeyCode::Char(c) => view.filter.push(c),
            _ => {}
        }
        return false;
    }
    match code {
        KeyCode::Char('q') | KeyCode::Esc => return true,
        KeyCode::Char('/') => view.editing = true,
        KeyCode::Char(c @ '1'..='9') => view.sort_by(c as usize - '1' as usize),
        KeyCode::Right => view.sort_by((view.sort + 1) % view::COLUMNS.len()),
        KeyCode::Left => view.sort_by((view.sort + view::COLUMNS.len() - 1) % view::COLUMNS.len()),
        _ => {}
    }
    false
}
