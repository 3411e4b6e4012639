//! Running `weir-load` (the load generator, `src/bin/weir-load.rs`) from a bench: its
//! summary and the CPU time it used, read from `/proc` just before it exits.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cpu_seconds;

/// What one `weir-load` run reported.
pub struct LoadRun {
    /// Its line for people.
    pub human: String,
    pub requests: u64,
    pub readings_accepted: u64,
    /// Requests that got no 2xx.
    pub errors: u64,
    pub elapsed_s: f64,
    pub readings_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU time the generator used (user + system).
    pub cpu_s: f64,
}

/// Runs `binary` with `args` to the end; `Err` with its output when it failed or printed no
/// summary.
pub fn run(binary: &str, args: &[String]) -> Result<LoadRun, String> {
    let mut load = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {binary}: {e}"))?;
    // Poll rather than block, to read the generator's CPU time just before it exits.
    let mut cpu_s = 0.0;
    let status = loop {
        if let Some(cpu) = cpu_seconds(load.id()) {
            cpu_s = cpu;
        }
        match load.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("cannot wait for weir-load: {e}")),
        }
    };
    let mut stdout = String::new();
    if let Some(mut out) = load.stdout.take() {
        out.read_to_string(&mut stdout)
            .map_err(|e| format!("cannot read weir-load's output: {e}"))?;
    }
    if !status.success() {
        return Err(format!("weir-load failed ({status}):\n{stdout}"));
    }
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .and_then(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| format!("weir-load printed no JSON summary:\n{stdout}"))?;
    let number = |key: &str| summary[key].as_f64().unwrap_or(0.0);
    let count = |key: &str| summary[key].as_u64().unwrap_or(0);
    Ok(LoadRun {
        human: stdout.lines().next().unwrap_or_default().to_owned(),
        requests: count("requests"),
        readings_accepted: count("readings_accepted"),
        errors: count("errors"),
        elapsed_s: number("elapsed_s"),
        readings_per_s: number("readings_per_s"),
        p50_ms: number("p50_ms"),
        p99_ms: number("p99_ms"),
        cpu_s,
    })
}
