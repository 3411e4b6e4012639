//! The device gateway under a bench: a test CA and server certificate, the simulated
//! fleet registered through `weir devices import`, and `weir-devices` (the load
//! generator, `src/bin/weir-devices/`) run as a separate process whose phases the bench
//! follows line by line.

use std::io::{BufRead as _, BufReader, Lines};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::cpu_seconds;

pub const WEIR_DEVICES: &str = env!("CARGO_BIN_EXE_weir-devices");

/// The key every simulated device's key is derived from (32 bytes, Base64).
pub const FLEET_KEY: &str = "d2Vpci1iZW5jaC1mbGVldC1rZXktMzItYnl0ZXMhISE=";

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 and localhost
/// (`server.pem`, `server.key`) in `dir`.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Result<Self, String> {
        let err = |e: rcgen::Error| format!("cannot make the test certificates: {e}");
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "weir bench CA");
        let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(err)?;
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .map_err(err)?;
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem)
                .map(|()| path.clone())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        Ok(Self {
            ca: write("ca.pem", ca_cert.pem())?,
            cert: write("server.pem", cert.pem())?,
            key: write("server.key", key.serialize_pem())?,
        })
    }

    /// The `device_gateway` source listening on `listen`, as one line of YAML (without
    /// the sizes a bench may add).
    pub fn gateway_yaml(&self, listen: SocketAddr) -> String {
        format!(
            "{{ type: device_gateway, listen: '{listen}', tls: {{ cert_file: '{}', key_file: '{}' }} }}",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// Registers devices `{prefix}0000000` … through the running weir's API: `weir-devices
/// fleet` writes the CSV, `weir devices import` sends it (with the admin token weir wrote
/// into `data_dir`).
pub fn import_fleet(
    weir: &str,
    api: SocketAddr,
    data_dir: &Path,
    prefix: &str,
    devices: u32,
) -> Result<(), String> {
    let csv = data_dir.join(format!("fleet-{prefix}.csv"));
    let made = Command::new(WEIR_DEVICES)
        .args([
            "fleet",
            "--devices",
            &devices.to_string(),
            "--prefix",
            prefix,
        ])
        .args(["--fleet-key", FLEET_KEY, "--out"])
        .arg(&csv)
        .output()
        .map_err(|e| format!("cannot run weir-devices fleet: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "weir-devices fleet failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let token_path = data_dir.join("initial-admin-token");
    let token = std::fs::read_to_string(&token_path)
        .map_err(|e| format!("cannot read {}: {e}", token_path.display()))?;
    let imported = Command::new(weir)
        .args(["devices", "--api", &format!("http://{api}"), "import"])
        .arg(&csv)
        .env("WEIR_TOKEN", token.trim())
        .output()
        .map_err(|e| format!("cannot run weir devices import: {e}"))?;
    if !imported.status.success() {
        return Err(format!(
            "weir devices import failed: {}",
            String::from_utf8_lossy(&imported.stderr)
        ));
    }
    Ok(())
}

/// A running `weir-devices run`, its stdout read a line at a time.
pub struct Generator {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Closing it ends an `idle` run without `--hold`.
    stdin: Option<ChildStdin>,
    /// The lines for people it printed so far.
    pub human: Vec<String>,
}

impl Generator {
    /// Starts `weir-devices run` against `gateway` with the fleet's key and `args` (the
    /// fleet size, rates, then the mode and its options).
    pub fn start(gateway: SocketAddr, ca: &Path, args: &[String]) -> Result<Self, String> {
        let mut child = Command::new(WEIR_DEVICES)
            .arg("run")
            .args(["--address", &gateway.to_string(), "--fleet-key", FLEET_KEY])
            .arg("--ca")
            .arg(ca)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {WEIR_DEVICES}: {e}"))?;
        let stdout = child.stdout.take().ok_or("weir-devices has no stdout")?;
        Ok(Self {
            stdin: child.stdin.take(),
            lines: BufReader::new(stdout).lines(),
            child,
            human: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.child.id())
    }

    /// Reads lines until the JSON line of `phase` (`connected`, `publishing`, `done`).
    pub fn wait_phase(&mut self, phase: &str) -> Result<serde_json::Value, String> {
        for line in self.lines.by_ref() {
            let line = line.map_err(|e| format!("cannot read weir-devices' output: {e}"))?;
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(value) if value["phase"] == phase => return Ok(value),
                Ok(_) => {}
                Err(_) => {
                    println!("  {line}");
                    self.human.push(line);
                }
            }
        }
        let status = self.child.wait().map_err(|e| e.to_string())?;
        Err(format!(
            "weir-devices ended ({status}) before its `{phase}` line"
        ))
    }

    /// Closes its standard input (ends an `idle` run).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for it to exit; whether it succeeded.
    pub fn wait(&mut self) -> Result<(), String> {
        let status = self.child.wait().map_err(|e| e.to_string())?;
        match status.success() {
            true => Ok(()),
            false => Err(format!("weir-devices failed ({status})")),
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
