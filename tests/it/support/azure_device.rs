//! A long-running device on Microsoft's `azure-iot-device` Python SDK, for tests that
//! talk to a device while it stays connected (direct methods, twins): the script answers
//! direct methods and prints desired patches as they come, and takes commands (`get`,
//! `report <json>`, `send <json>`, `quit`) on its standard input, one per line.
//!
//! Uses the virtualenv of [`super::azure_sdk`]; the script's error output goes to
//! `<dir>/<device>.stderr` (shown when an expectation fails).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

/// `device_session.py CONNECTION_STRING CA_FILE [--methods=STATUS|silent] [--desired]`:
/// prints `listening` once its handlers are set (the SDK has subscribed by then), one
/// JSON line per method request (`method`, `payload`) and desired patch
/// (`desired_patch`), and one per command's result (`twin`, `reported`, `sent`).
/// `--methods=200` answers every method with that status and payload `{"echo":
/// <request payload>, "method": <name>}`; `--methods=silent` subscribes but never answers.
const SCRIPT: &str = r#"
import asyncio, json, sys, threading
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.device import Message, MethodResponse

lock = threading.Lock()
def say(obj):
    with lock:
        sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
        sys.stdout.flush()

async def main():
    conn, ca, flags = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3:]
    client = IoTHubDeviceClient.create_from_connection_string(
        conn, server_verification_cert=ca, connection_retry=False)
    await client.connect()
    answer = next((f.split("=", 1)[1] for f in flags if f.startswith("--methods=")), None)
    if answer is not None:
        async def on_method(request):
            say({"method": request.name, "payload": request.payload})
            if answer != "silent":
                response = MethodResponse.create_from_method_request(
                    request, int(answer), {"echo": request.payload, "method": request.name})
                await client.send_method_response(response)
        client.on_method_request_received = on_method
    if "--desired" in flags:
        client.on_twin_desired_properties_patch_received = lambda patch: say({"desired_patch": patch})
    say("listening")
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        command, _, argument = line.partition(" ")
        if command == "get":
            say({"twin": await client.get_twin()})
        elif command == "report":
            await client.patch_twin_reported_properties(json.loads(argument))
            say({"reported": True})
        elif command == "send":
            message = Message(argument, content_encoding="utf-8", content_type="application/json")
            await client.send_message(message)
            say({"sent": True})
    await client.shutdown()

asyncio.run(main())
"#;

/// A running SDK device.
pub struct SdkDevice {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: PathBuf,
}

impl SdkDevice {
    /// Connects device `name` (`connection_string`, trusting `ca`) with `flags`, and
    /// waits (up to 60 s) until it listens.
    pub async fn start(
        dir: &Path,
        name: &str,
        connection_string: &str,
        ca: &Path,
        flags: &[&str],
    ) -> Self {
        let script = dir.join("device_session.py");
        std::fs::write(&script, SCRIPT).expect("write the device script");
        let python = tokio::task::spawn_blocking(super::azure_sdk::python)
            .await
            .expect("the SDK installs");
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = Command::new(python)
            .arg(&script)
            .arg(connection_string)
            .arg(ca)
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create the stderr file"))
            .spawn()
            .expect("the device script runs");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut device = Self {
            child,
            stdin,
            lines,
            stderr,
        };
        let first = device.next_line(Duration::from_secs(60)).await;
        assert_eq!(first, "listening", "{}", device.errors());
        device
    }

    /// The script's error output so far.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn next_line(&mut self, within: Duration) -> String {
        match tokio::time::timeout(within, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the device script ended: {}", self.errors()),
            Err(_) => panic!(
                "the device script said nothing for {within:?}: {}",
                self.errors()
            ),
        }
    }

    /// The next JSON line the script prints, within `within`.
    pub async fn next_json(&mut self, within: Duration) -> Value {
        let line = self.next_line(within).await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("`{line}` is not JSON: {e}"))
    }

    /// Whether the script prints nothing within `within`.
    pub async fn is_quiet_for(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.lines.recv())
            .await
            .is_err()
    }

    /// Sends one command line (`get`, `report {...}`, `send {...}`).
    pub fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("the device script reads commands");
        self.stdin.flush().expect("flush the command");
    }

    /// Disconnects and waits (up to 30 s) for the script to end well.
    pub async fn stop(mut self) {
        self.command("quit");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("the script's status") {
                assert!(status.success(), "{status}: {}", self.errors());
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the script did not end: {}",
                self.errors()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SdkDevice {
    fn drop(&mut self) {
        // A failed test must not leave the script running.
        let _ = self.child.kill();
    }
}
