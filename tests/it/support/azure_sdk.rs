//! Microsoft's `azure-iot-device` Python SDK as a test client of the device gateway.
//!
//! The SDK is installed from PyPI once per machine into a virtualenv under
//! `$HOME/.cache` (it pins paho-mqtt < 2), and driven by a small script of ours, one
//! process per device. The SDK always dials port 8883 of the connection string's
//! `HostName`, so each gateway of a test listens on a loopback address of its own
//! ([`gateway_address`]) with a certificate carrying that IP address.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// The SDK release the tests were written against.
const SDK: &str = "azure-iot-device==2.14.*";

/// A loopback address no other gateway of this process listens on (port 8883 of it is
/// the gateway's); all of 127/8 is loopback. 127.0.17.x is this module's range.
pub fn gateway_address() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 255, "out of loopback addresses for device gateways");
    Ipv4Addr::new(127, 0, 17, n)
}

/// A `device_gateway` source's settings as one line of pipeline YAML: listening on
/// `host:8883` with a certificate for that address, made in `dir` beside its CA
/// (`dir/ca.pem`, which SDK clients are given).
pub fn gateway_source(dir: &Path, host: Ipv4Addr) -> String {
    let pki = super::pki::generate_for(dir, &[&host.to_string()]);
    format!(
        "{{ type: device_gateway, listen: '{host}:8883', tls: {{ cert_file: '{}', key_file: '{}' }} }}",
        pki.server_cert.display(),
        pki.server_key.display(),
    )
}

/// The virtualenv's Python with the SDK installed; installs it on first use.
pub fn python() -> PathBuf {
    static READY: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(python) = &*ready {
        return python.clone();
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let venv = Path::new(&home).join(".cache/weir-azure-iot-venv");
    let python = venv.join("bin/python");
    let installed = |python: &Path| {
        Command::new(python)
            .args(["-c", "import azure.iot.device"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !installed(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs");
        assert!(made.success(), "python3 -m venv {}", venv.display());
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", SDK])
            .status()
            .expect("pip runs");
        assert!(pip.success(), "pip install {SDK}");
        assert!(installed(&python), "the SDK imports after installing it");
    }
    *ready = Some(python.clone());
    python
}

/// The driver script: `device.py MODE CONNECTION_STRING CA_FILE [COUNT]`.
///
/// - `send`: connects and sends COUNT messages (JSON, `$.ct` set) with custom
///   properties `seq` and `kind`, 20 at a time; prints `sent COUNT` once every send
///   returned (each returns on the gateway's PUBACK).
/// - `connect`: connects once without retrying; prints `connected` or `refused: <error>`.
/// - `receive`: connects, prints `listening` once its `on_message_received` handler is
///   set, then one JSON line per cloud-to-device message (`data`, `message_id`,
///   `custom_properties`) until COUNT arrived (or 60 s passed).
const SCRIPT: &str = r#"
import asyncio, json, sys
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.device import Message

async def main():
    mode, conn, ca = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
    client = IoTHubDeviceClient.create_from_connection_string(
        conn, server_verification_cert=ca, connection_retry=False)
    try:
        await client.connect()
    except Exception as e:
        print("refused: %s" % type(e).__name__, flush=True)
        return
    if mode == "connect":
        print("connected", flush=True)
    elif mode == "send":
        count = int(sys.argv[4])
        async def send(seq):
            m = Message(json.dumps({"seq": seq, "temperature": 20 + seq % 10}))
            m.content_type = "application/json"
            m.content_encoding = "utf-8"
            m.custom_properties["seq"] = str(seq)
            m.custom_properties["kind"] = "reading & more"
            await client.send_message(m)
        for start in range(0, count, 20):
            await asyncio.gather(*(send(s) for s in range(start, min(start + 20, count))))
        print("sent %d" % count, flush=True)
    elif mode == "receive":
        count, received = int(sys.argv[4]), asyncio.Queue()
        loop = asyncio.get_running_loop()
        client.on_message_received = lambda m: loop.call_soon_threadsafe(received.put_nowait, m)
        print("listening", flush=True)
        for _ in range(count):
            m = await asyncio.wait_for(received.get(), 60)
            print(json.dumps({"data": m.data.decode(), "message_id": m.message_id,
                              "custom_properties": m.custom_properties}), flush=True)
    await client.shutdown()

asyncio.run(main())
"#;

/// Runs the driver script in `dir` as device `device_id` of the gateway at `host`;
/// its standard output (the script's verdict), or a panic with its error output.
pub fn run(dir: &Path, mode: &str, connection_string: &str, ca: &Path, count: usize) -> String {
    let script = dir.join("device.py");
    std::fs::write(&script, SCRIPT).expect("write the driver script");
    let output = Command::new(python())
        .arg(&script)
        .args([mode, connection_string])
        .arg(ca)
        .arg(count.to_string())
        .output()
        .expect("the driver script runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "device.py {mode} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A device connection string for the gateway at `host`.
pub fn connection_string(host: Ipv4Addr, device_id: &str, key: &str) -> String {
    format!("HostName={host};DeviceId={device_id};SharedAccessKey={key}")
}
