//! Bulk import of 100,000 devices through the real API and CLI, as an operator runs it:
//! `weir devices import fleet.csv` against a `weir run` with a `registry:`.
//!
//! `cargo bench --bench registry_import` builds weir in release mode, writes a CSV of
//! `WEIR_IMPORT_DEVICES` (default 100,000) devices with two tags each, starts weir on a
//! pipeline with only a registry in a temp dir, times the CLI from start to exit, checks
//! that every device is in (`registry_devices` gauge), and prints devices/s against the
//! target (≤ 10 s for 100,000). A miss is reported, not failed; a broken harness fails.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const TARGET_SECONDS: f64 = 10.0;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry_import: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let devices: usize = std::env::var("WEIR_IMPORT_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let api: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?;
    let csv = dir.path().join("fleet.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&csv).map_err(|e| e.to_string())?);
    writeln!(out, "id,tag.site,tag.max_temp").map_err(|e| e.to_string())?;
    for n in 0..devices {
        writeln!(out, "dev-{n:07},plant-{},{}", n % 7, 80 + n % 20).map_err(|e| e.to_string())?;
    }
    drop(out);
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "data_dir: '{}'\napi: {{ listen: '{api}', auth: {{ public_metrics: true }} }}\nregistry: {{ path: registry.redb }}\nsources:\n  lifecycle: {{ type: device_registry, events: [deleted] }}\nsinks:\n  none: {{ type: blackhole, inputs: [lifecycle] }}\n",
            dir.path().display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut weir = Command::new(WEIR)
        .arg("run")
        .arg(&pipeline)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start weir: {e}"))?;
    let result = (|| {
        wait_ready(api)?;
        let started = Instant::now();
        let output = Command::new(WEIR)
            .args(["devices", "--api", &format!("http://{api}"), "import"])
            .env("WEIR_TOKEN", admin_token(dir.path())?)
            .arg(&csv)
            .output()
            .map_err(|e| format!("cannot run the CLI: {e}"))?;
        let elapsed = started.elapsed().as_secs_f64();
        if !output.status.success() {
            return Err(format!(
                "the import failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let in_registry = registered(api)?;
        if in_registry != devices {
            return Err(format!(
                "{in_registry} of {devices} devices are in the registry"
            ));
        }
        let scaled = elapsed * 100_000.0 / devices as f64;
        println!(
            "import: {devices} devices in {elapsed:.2} s = {:.0} devices/s ({:.2} s per 100,000; target ≤ {TARGET_SECONDS} s: {})",
            devices as f64 / elapsed,
            scaled,
            if scaled <= TARGET_SECONDS {
                "PASS"
            } else {
                "MISS"
            }
        );
        let size = std::fs::metadata(dir.path().join("registry.redb")).map_or(0, |m| m.len());
        println!("registry file: {:.1} MiB", size as f64 / 1_048_576.0);
        Ok(())
    })();
    let _ = weir.kill();
    let _ = weir.wait();
    result
}

fn get(api: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(api).map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// The admin token weir wrote on its first start in `data_dir`.
fn admin_token(data_dir: &std::path::Path) -> Result<String, String> {
    let path = data_dir.join("initial-admin-token");
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn wait_ready(api: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if get(api, "/ready").is_ok_and(|t| t.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("weir was not ready within 30 s".into())
}

/// The `registry_devices` gauge, both statuses.
fn registered(api: SocketAddr) -> Result<usize, String> {
    let text = get(api, "/metrics")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("registry_devices{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as usize)
}
