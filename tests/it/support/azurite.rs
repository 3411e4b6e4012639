//! Azurite, Microsoft's Azure Storage emulator (the npm package `azurite`), serving the
//! `az://` tables of tests: each test starts its own blob service on a port of its own
//! with a data location of its own, so tests never share a container.
//!
//! Azurite is installed on first use with `npm install --prefix $HOME/.cache/weir-test-tools`
//! (npm itself with apt-get if missing), as [`super::tools`] installs every test tool.
//! Version 3.35.0 is pinned: the newest (3.37) asks for Node 22, Debian ships Node 20.
//!
//! Azurite is started with `--disableTelemetry` (it would otherwise try to reach Microsoft
//! from the test machine) and stopped with SIGTERM, after which it has saved its metadata;
//! after a SIGKILL it loses the last seconds of its own metadata (a LokiJS autosave), which
//! would be the emulator's loss, not weir's.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};

use super::free_port;

/// The emulator's well-known account and key (public: Azurite documents them).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const PACKAGE: &str = "azurite@3.35.0";

/// A running (or stopped) Azurite blob service.
pub struct Azurite {
    pub port: u16,
    location: PathBuf,
    child: Option<Child>,
}

impl Azurite {
    /// Installs Azurite if needed and starts it on a free port, keeping its data in
    /// `location`.
    pub fn start(location: &Path) -> Azurite {
        let mut azurite = Azurite {
            port: free_port(),
            location: location.to_path_buf(),
            child: None,
        };
        azurite.run();
        azurite
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "Azurite is still running");
        self.run();
    }

    /// Stops it (SIGTERM) and waits until it has exited and its port is closed.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
        assert!(!listening(self.port), "Azurite's port is still open");
    }

    fn run(&mut self) {
        let bin = installed();
        std::fs::create_dir_all(&self.location).expect("Azurite's location");
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(&self.location)
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !listening(self.port) {
            assert!(
                Instant::now() < deadline,
                "Azurite did not listen on 127.0.0.1:{} within 60 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The blob endpoint, path style (`http://127.0.0.1:port/devstoreaccount1`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// What a `delta_lake` sink needs to reach it: object_store's emulator mode (the
    /// well-known account and key, plain HTTP), with its URL in the environment variable
    /// [`Azurite::url_variable`] of the weir process.
    ///
    /// Not an explicit endpoint: object_store then lists the Delta log with List Blobs'
    /// `startFrom`, which Azurite 3.35 ignores (Azurite learned it in 2026, in a version that
    /// needs Node 22), so it answers with the whole log; deltalake's incremental update
    /// after a failed commit then fails for good ("Invalid table version: 1"). In emulator
    /// mode object_store filters the listing itself.
    pub fn emulator_options() -> HashMap<String, String> {
        HashMap::from([("azure_storage_use_emulator".into(), "true".into())])
    }

    /// The environment variable that points object_store's emulator mode at this instance.
    pub fn url_variable(&self) -> (&'static str, String) {
        (
            "AZURITE_BLOB_STORAGE_URL",
            format!("http://127.0.0.1:{}", self.port),
        )
    }

    /// What this test process's deltalake needs to read a table back without touching its
    /// own environment: the account, its key, the endpoint, plain HTTP. Good for opening a
    /// table afresh (which lists the whole log anyway), not for a long-lived writer.
    pub fn storage_options(&self) -> HashMap<String, String> {
        HashMap::from([
            ("azure_storage_account_name".into(), ACCOUNT.into()),
            ("azure_storage_account_key".into(), KEY.into()),
            ("azure_storage_endpoint".into(), self.endpoint()),
            ("azure_allow_http".into(), "true".into()),
        ])
    }

    /// Creates a blob container (deltalake creates tables, not containers).
    pub async fn create_container(&self, name: &str) {
        let date = jiff::Timestamp::now()
            .strftime("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        // Shared Key: the twelve standard headers (all empty here), then the x-ms ones,
        // then the resource, path style: /account/account/container.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .expect("the key is base64");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let response = reqwest::Client::new()
            .put(format!("{}/{name}?restype=container", self.endpoint()))
            .header("x-ms-date", date)
            .header("x-ms-version", version)
            .header("content-length", "0")
            .header("authorization", format!("SharedKey {ACCOUNT}:{signature}"))
            .send()
            .await
            .expect("PUT container");
        let status = response.status();
        assert!(
            status.is_success(),
            "Azurite refused to create container {name}: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The `azurite-blob` executable, installed first if absent.
fn installed() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| super::tools::installed("node_modules/.bin/azurite-blob", install))
}

fn install(prefix: &Path) {
    let has_npm = Command::new("npm")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_npm {
        let status = Command::new("sh")
            .arg("-c")
            .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm")
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "npm is missing and apt-get could not install it (needed for Azurite)"
        );
    }
    let output = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(prefix)
        .arg(PACKAGE)
        .output()
        .expect("run npm");
    assert!(
        output.status.success(),
        "`npm install --prefix {} {PACKAGE}` failed: {}",
        prefix.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}
