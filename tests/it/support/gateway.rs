//! A device gateway with extra settings (provisioning, client certificates, rate limits)
//! for the tests of those features, and Python driver scripts of their own run with the
//! `azure-iot-device` SDK's interpreter ([`super::azure_sdk::python`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use weir::registry::Registry;
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use super::azure_sdk::{self, gateway_address};
use super::{lines, metric, pipeline};

/// A running gateway `devices` on its own loopback address: telemetry to `out.ndjson`,
/// its `errors` output to `errors.ndjson`.
pub struct TestGateway {
    pub topology: RunningTopology,
    pub telemetry: Arc<Telemetry>,
    pub registry: Arc<Registry>,
    pub host: Ipv4Addr,
    pub ca: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway with `settings` added to its source (flow-style YAML pairs;
    /// `{host}` is its address).
    pub fn start(settings: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let host = gateway_address();
        let base = azure_sdk::gateway_source(dir.path(), host);
        let base = base
            .strip_suffix(" }")
            .expect("gateway_source is a flow mapping");
        let source = match settings {
            "" => format!("{base} }}"),
            _ => format!(
                "{base}, {} }}",
                settings.replace("{host}", &host.to_string())
            ),
        };
        let d = dir.path().display();
        let text = format!(
            "api: {{ enabled: false }}
data_dir: '{d}'
registry: {{}}
sources:
  devices: {source}
sinks:
  out: {{ type: file, inputs: [devices], path: '{d}/out.ndjson' }}
  errors: {{ type: file, inputs: [devices.errors], path: '{d}/errors.ndjson' }}
"
        );
        std::fs::write(dir.path().join("pipeline.yaml"), &text).unwrap();
        let telemetry = Telemetry::new();
        let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
        let registry = topology.services().get::<Registry>().unwrap();
        TestGateway {
            topology,
            telemetry,
            registry,
            host,
            ca: dir.path().join("ca.pem"),
            dir,
        }
    }

    pub fn out(&self) -> Vec<serde_json::Value> {
        lines(&self.dir.path().join("out.ndjson"))
    }

    pub fn errors(&self) -> Vec<serde_json::Value> {
        lines(&self.dir.path().join("errors.ndjson"))
    }

    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric(&self.telemetry, name, labels)
    }

    /// `name{reason="…"}` of this gateway.
    pub fn by_reason(&self, name: &str, reason: &str) -> f64 {
        self.metric(name, &[&format!(r#"reason="{reason}""#)])
    }

    /// Runs `script` (saved as `name` in the test's directory) with `args`; its standard
    /// output, or a panic with its error output.
    pub async fn python(&self, name: &str, script: &str, args: Vec<String>) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, script).unwrap();
        tokio::task::spawn_blocking(move || run_python(&path, &args))
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.topology.stop(Duration::from_secs(10)).await;
    }
}

fn run_python(script: &Path, args: &[String]) -> String {
    let output = Command::new(azure_sdk::python())
        .arg(script)
        .args(args)
        .output()
        .expect("the driver script runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}\n{stdout}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The JSON lines a driver script printed.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("the script prints JSON lines"))
        .collect()
}
