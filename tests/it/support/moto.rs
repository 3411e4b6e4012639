//! moto's S3 server (`moto_server` from the PyPI package `moto[server]`, pinned), serving
//! the `s3://` tables of tests: each test starts its own on a port of its own, in memory,
//! and makes its own bucket. Installed on first use into a virtual environment under
//! `$HOME/.cache/weir-test-tools` ([`super::tools`]).

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

const PACKAGE: &str = "moto[server]==5.2.5";
const VENV: &str = "moto-5.2.5";

/// A running moto S3 server; stopped when dropped.
pub struct Moto {
    pub port: u16,
    child: Child,
}

impl Moto {
    /// Installs moto if needed and starts its server on a free port.
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(installed())
            .args(["-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto { port, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes a bucket (moto takes unsigned requests).
    pub async fn create_bucket(&self, name: &str) {
        let answer = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint()))
            .send()
            .await
            .expect("PUT bucket");
        assert!(
            answer.status().is_success(),
            "moto refused bucket {name}: {}",
            answer.status()
        );
    }

    /// What weir's and Python's deltalake need to reach it: path-style requests to the
    /// endpoint over plain HTTP with dummy credentials. Commits rely on S3 conditional
    /// writes (`If-None-Match: *`), deltalake's default; never the unsafe rename.
    pub fn storage_options(&self) -> HashMap<String, String> {
        HashMap::from([
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), "weir-test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "weir-test-secret".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST".into(), "false".into()),
        ])
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // `.installed` is written last: a venv whose install failed is made again.
        let marker = super::tools::installed(&format!("{VENV}/.installed"), |prefix| {
            let venv = prefix.join(VENV);
            super::tools::run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            super::tools::run(
                Command::new(venv.join("bin/pip"))
                    .args(["install", "--quiet", "--disable-pip-version-check"])
                    .arg(PACKAGE),
            );
            std::fs::write(venv.join(".installed"), PACKAGE).unwrap();
        });
        marker.with_file_name("bin").join("moto_server")
    })
}
