//! Helpers shared by the integration tests.
//!
//! # Side by side in one process
//!
//! Every integration test runs in this one process, two at a time by default, next to
//! tests of any other module. What they could trip each other over:
//!
//! - **The brokers** (Redis, RabbitMQ, Mosquitto): a test holds a lease on each broker it
//!   uses, shared, or exclusive to stop or restart it; see [`services`].
//! - **Names on the brokers** (queues, topics, client ids, Redis keys): each test builds
//!   them from a prefix of its own and the process id, which all of them share: a
//!   prefix must not be used by another test, in any module. A broker disconnects a client
//!   when another connects with its id; [`receivers::MqttSubscriber`] numbers its ids.
//! - **Ports**: [`free_port`] never hands out a port twice in the process; helpers that
//!   listen take their port there too, and a port a test derives from one (the Redis
//!   Cluster bus) is claimed with [`claim_port`].
//! - **Files**: each test writes in a temporary directory of its own; no test changes the
//!   current directory.
//! - **Process-wide state**: no test sets environment variables (`std::env::set_var`
//!   would change them for every test): a `weir` child gets its own with
//!   [`Weir::start_with_env`]. No test installs a tracing subscriber. weir installs the
//!   rustls default crypto provider wherever it needs one and ignores "already installed".
//! - **Time**: a test shares the cores with another one. What a test asserts about
//!   elapsed time is a lower bound (a slow sink slows its source), or a latency or an
//!   amount of load with a wide margin; where the load a test makes would depend on the
//!   machine's speed, it waits for that load instead of for a fixed time.

pub mod azure_device;
pub mod azure_sdk;
pub mod azurite;
pub mod delta;
pub mod forward;
pub mod gateway;
pub mod load;
pub mod mosquitto;
pub mod moto;
pub mod mounts;
pub mod mqtt;
pub mod node_sdk;
pub mod pki;
pub mod pydelta;
pub mod receivers;
pub mod services;
pub mod tools;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::config::TopologyConfig;
use weir::telemetry::Telemetry;

/// A port nobody listens on right now, and not handed out before in this process (to any
/// test of any module).
///
/// The kernel may give the same free port to two `bind(0)` calls in a row once the first
/// listener is closed, and a test that asks for several ports (a source, the API, a
/// destination nobody serves) then starts weir with two components on one port. Helpers
/// that listen themselves take their port here too, rather than binding port 0, so that
/// they cannot be given a port another test was handed but has not bound yet.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if claim_port(port) {
            return port;
        }
    }
}

/// Counts `port` as handed out, as [`free_port`] does; false if it already was.
pub fn claim_port(port: u16) -> bool {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    HANDED_OUT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(port)
}

/// Loads a pipeline from text; panics with the diagnostics if it is invalid.
pub fn pipeline(text: &str) -> TopologyConfig {
    match weir::config::load_str(&weir::CATALOGUE, "test.yaml", text, &|name| {
        std::env::var(name).ok()
    }) {
        Ok((config, _)) => config,
        Err(errors) => panic!("invalid test pipeline:\n{errors}\n---\n{text}"),
    }
}

/// The sum of every series of `name` whose labels contain all of `labels`
/// (e.g. `component_id="out"`).
pub fn metric(telemetry: &Arc<Telemetry>, name: &str, labels: &[&str]) -> f64 {
    metric_in(&telemetry.encode(), name, labels)
}

/// Devices the registry refused for `reason` (`registry_auth_failures_total`).
pub fn auth_failures(telemetry: &Arc<Telemetry>, reason: &str) -> f64 {
    metric(
        telemetry,
        "registry_auth_failures_total",
        &[&format!(r#"reason="{reason}""#)],
    )
}

pub fn metric_in(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric_name == name && labels.iter().all(|l| rest.contains(l)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The complete JSON lines of a file (none if it does not exist). A last line without its
/// newline is being written right now: it is left for the next look.
pub fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A `weir run` process.
pub struct Weir {
    pub child: Child,
    pub api: SocketAddr,
    /// The admin token weir wrote to `data_dir/initial-admin-token` on its first start
    /// (empty when the data_dir had tokens before).
    pub token: String,
    /// Its `data_dir` (where `weir reload` finds the control socket).
    pub data_dir: PathBuf,
}

/// The `data_dir` of the pipeline `pipeline` run in `dir`.
pub fn data_dir_of(dir: &Path, pipeline: &Path) -> PathBuf {
    let text = std::fs::read_to_string(pipeline)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", pipeline.display()));
    // The `${VAR}`s a test hands weir alone (a password) only need to be set here.
    let name = pipeline.to_string_lossy();
    let (config, _) = weir::config::load_str(&weir::CATALOGUE, &name, &text, &|name| {
        Some(std::env::var(name).unwrap_or_else(|_| "set-in-weir-only".into()))
    })
    .unwrap_or_else(|e| panic!("invalid pipeline {}: {e}", pipeline.display()));
    dir.join(config.globals.data_dir)
}

/// Writes `dir/pipeline.yaml`: a registry and a simulated device into a blackhole, with
/// the API on `api` and `api_settings` (more keys of `api:`, e.g. `allowed_hosts: [x]`).
pub fn registry_pipeline(dir: &Path, api: SocketAddr, api_settings: &str) -> PathBuf {
    let pipeline = dir.join("pipeline.yaml");
    let text = format!(
        "data_dir: '{d}'
api: {{ listen: '{api}', {api_settings} }}
registry: {{ path: registry.redb }}
sources:
  fleet: {{ type: simulator, devices: 1, rate: 1 }}
sinks:
  out: {{ type: blackhole, inputs: [fleet] }}
",
        d = dir.display()
    );
    std::fs::write(&pipeline, text).expect("write the pipeline");
    pipeline
}

/// The first admin token of a weir that ran with `data_dir`.
pub fn initial_admin_token(data_dir: &Path) -> String {
    let path = data_dir.join("initial-admin-token");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no admin token at {}: {e}", path.display()))
        .trim()
        .to_owned()
}

impl Weir {
    /// Starts `weir run <pipeline>` in `dir` and waits until `/ready` answers 200.
    pub async fn start(dir: &Path, pipeline: &Path, api: SocketAddr) -> Weir {
        Self::start_with_env(dir, pipeline, api, &[]).await
    }

    /// Like [`Weir::start`], with extra environment variables (e.g. `WEIR_CRASH_AT`).
    pub async fn start_with_env(
        dir: &Path,
        pipeline: &Path,
        api: SocketAddr,
        env: &[(&str, &str)],
    ) -> Weir {
        Self::start_with(dir, pipeline, api, &[], env).await
    }

    /// Like [`Weir::start`], with extra arguments to `weir run` and environment variables.
    pub async fn start_with(
        dir: &Path,
        pipeline: &Path,
        api: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Weir {
        Self::spawn(dir, pipeline, api, args, env, Stdio::inherit()).await
    }

    /// Like [`Weir::start_with_env`], with its log (stderr) written to `log`.
    pub async fn start_logged(
        dir: &Path,
        pipeline: &Path,
        api: SocketAddr,
        env: &[(&str, &str)],
        log: &Path,
    ) -> Weir {
        let file = std::fs::File::create(log).expect("create the log file");
        Self::spawn(dir, pipeline, api, &[], env, file.into()).await
    }

    async fn spawn(
        dir: &Path,
        pipeline: &Path,
        api: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Weir {
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("run")
            .arg(pipeline)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start weir");
        let data_dir = data_dir_of(dir, pipeline);
        let mut weir = Weir {
            child,
            api,
            token: String::new(),
            data_dir,
        };
        let client = reqwest::Client::new();
        let ready = format!("http://{api}/ready");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = client.get(&ready).send().await
                && response.status().is_success()
            {
                // Written before the API listens; absent when tokens were made before.
                let file = weir.data_dir.join("initial-admin-token");
                if file.exists() {
                    weir.token = initial_admin_token(&weir.data_dir);
                }
                return weir;
            }
            assert!(Instant::now() < deadline, "weir did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A request to this weir's API at `path`, with the admin token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.api))
            .bearer_auth(&self.token)
    }

    /// `GET path` with the admin token: the JSON answer.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    /// A new API token named `name` with `role` (a role's name), made with the admin token.
    pub async fn make_token(&self, name: &str, role: &str) -> String {
        let made = self
            .request(reqwest::Method::POST, "/v1/tokens")
            .json(&serde_json::json!({ "name": name, "role": role }))
            .send()
            .await
            .expect("POST /v1/tokens");
        assert_eq!(made.status(), 201, "POST /v1/tokens");
        let made: serde_json::Value = made.json().await.expect("a JSON answer");
        made["token"].as_str().expect("a token").to_owned()
    }

    pub async fn metrics(&self) -> String {
        self.request(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "weir did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Weir {
    /// Waits for weir to die at the crash point `WEIR_CRASH_AT` named (see `fault.rs`).
    pub async fn wait_for_crash(mut self) {
        let status = tokio::task::spawn_blocking(move || self.child.wait().expect("wait"))
            .await
            .expect("the waiting task");
        assert!(!status.success(), "weir died at the crash point: {status}");
    }

    /// Kills weir with SIGKILL `times` times, `every` apart, starting it again after each.
    pub async fn crash_and_restart(
        mut self,
        times: usize,
        every: Duration,
        dir: &Path,
        pipeline: &Path,
    ) -> Weir {
        for _ in 0..times {
            tokio::time::sleep(every).await;
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
            self = Weir::start(dir, pipeline, self.api).await;
        }
        self
    }
}

/// How often each value of the numeric `field` occurs in the file's complete lines, polled
/// until `expected` distinct values are there or `timeout` has passed.
pub async fn occurrences(
    path: &Path,
    field: &str,
    expected: usize,
    timeout: Duration,
) -> std::collections::BTreeMap<u64, usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut seen = std::collections::BTreeMap::new();
        for event in lines(path) {
            *seen
                .entry(event[field].as_u64().expect("a numeric id"))
                .or_default() += 1;
        }
        if seen.len() >= expected || Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
