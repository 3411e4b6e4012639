//! Microsoft's Node.js device SDK (`azure-iot-device` with its HTTPS transport,
//! `azure-iot-device-http`) as a test client of the `http` source's IoT hub path.
//!
//! Installed from npm once per machine under `$HOME/.cache/weir-node-sdk`. The SDK's
//! HTTPS transport dials port 443 of the connection string's `HostName`, so each test
//! binds its `http` source to a loopback address of its own ([`address`]) with a
//! certificate for that IP, and hands the SDK the test CA (`client.setOptions({ca})`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// The SDK releases the tests were written against.
const PACKAGES: &[&str] = &["azure-iot-device@1.18", "azure-iot-device-http@1.14"];

/// A loopback address for an `http` source on port 443 that no other test of this
/// process uses: 127.0.19.x is this module's range.
pub fn address() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(
        n < 255,
        "out of loopback addresses for the Node SDK's tests"
    );
    Ipv4Addr::new(127, 0, 19, n)
}

/// The directory holding `node_modules` with the SDK; installs it on first use.
pub fn install() -> PathBuf {
    static READY: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = &*ready {
        return dir.clone();
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let dir = Path::new(&home).join(".cache/weir-node-sdk");
    let installed = |dir: &Path| {
        Command::new("node")
            .args([
                "-e",
                "require('azure-iot-device'); require('azure-iot-device-http')",
            ])
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !installed(&dir) {
        std::fs::create_dir_all(&dir).expect("create the SDK's directory");
        let npm = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .args(PACKAGES)
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(npm.success(), "npm install {PACKAGES:?}");
        assert!(installed(&dir), "the SDK loads after installing it");
    }
    *ready = Some(dir.clone());
    dir
}

/// Runs `script` (JavaScript) with `node`, where the SDK resolves, with `args`; its
/// standard output, or a panic with its error output.
pub fn run(script_dir: &Path, script: &str, args: &[&str]) -> String {
    let modules = install().join("node_modules");
    let file = script_dir.join("device.js");
    std::fs::write(&file, script).expect("write the script");
    let output = Command::new("node")
        .arg(&file)
        .args(args)
        .env("NODE_PATH", &modules)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "device.js failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
