//! `kill -9` of weir while Microsoft's Python SDK sends 10,000 telemetry messages at QoS 1
//! (20 in flight) through the device gateway into a file sink: after the restart (the SDK
//! reconnects by itself), every `send_message` that returned — before the kill and after —
//! is in the sink. Each message carries `$.mid`; the gateway drops the ones it committed
//! already (`dedupe`), and the duplicates left in the file are counted and printed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::azure_sdk::{self, connection_string, gateway_address};
use crate::support::{Weir, free_port, lines, metric_in};

const MESSAGES: usize = 10_000;
/// Sends the SDK has returned when weir is killed: well into the run.
const KILL_AFTER: usize = 3_000;

/// `sender.py CONNECTION_STRING CA_FILE COUNT INFLIGHT [FIRST_RUN_OUTPUT]`: sends COUNT messages
/// (`{"seq": n}`, `$.mid` = `m-n`), INFLIGHT at a time; prints `ok n` as each
/// `send_message` returns (flushed), then `done`. A send that fails (the connection
/// dropped) is sent again with the same id, as a device does.
const SCRIPT: &str = r#"
import asyncio, json, sys
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.device import Message

async def main():
    conn, ca, count, inflight = sys.argv[1], open(sys.argv[2]).read(), int(sys.argv[3]), int(sys.argv[4])
    client = IoTHubDeviceClient.create_from_connection_string(
        conn, server_verification_cert=ca, connection_retry_interval=1)
    await client.connect()
    # A second run is given the first run's output: it sends only what did not return.
    skip = set()
    if len(sys.argv) > 5:
        for line in open(sys.argv[5]):
            parts = line.split()
            if len(parts) == 2 and parts[0] == "ok" and parts[1].isdigit():
                skip.add(int(parts[1]))
    queue = asyncio.Queue()
    for seq in range(count):
        if seq not in skip:
            queue.put_nowait(seq)

    async def worker():
        while not queue.empty():
            seq = queue.get_nowait()
            while True:
                m = Message(json.dumps({"seq": seq}))
                m.message_id = "m-%d" % seq
                m.content_type = "application/json"
                m.content_encoding = "utf-8"
                try:
                    await client.send_message(m)
                    break
                except Exception as e:
                    print("retry %d %s" % (seq, type(e).__name__), file=sys.stderr, flush=True)
                    await asyncio.sleep(0.5)
            print("ok %d" % seq, flush=True)

    await asyncio.gather(*(worker() for _ in range(inflight)))
    print("done", flush=True)
    await client.shutdown()

asyncio.run(main())
"#;

/// The `seq`s the script printed `ok` for, and whether it printed `done`.
fn returned(stdout: &Path) -> (Vec<u64>, bool) {
    let text = std::fs::read_to_string(stdout).unwrap_or_default();
    let mut oks = Vec::new();
    let mut done = false;
    // The last line may be cut short while the script writes it.
    for line in text.lines() {
        if line == "done" {
            done = true;
        } else if let Some(seq) = line.strip_prefix("ok ").and_then(|s| s.parse().ok()) {
            oks.push(seq);
        }
    }
    (oks, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_returned_send_survives_kill_9_of_weir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = gateway_address();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "data_dir: '{d}'
api: {{ listen: '{api}' }}
registry: {{}}
sources:
  devices: {gateway}
sinks:
  out: {{ type: file, inputs: [devices], path: '{d}/out.ndjson' }}
",
            d = d.display(),
            gateway = azure_sdk::gateway_source(d, host),
        ),
    )
    .unwrap();
    let weir = Weir::start(d, &pipeline, api).await;
    let made: Value = weir
        .request(Method::POST, "/v1/devices")
        .json(&json!({ "id": "kill-meter" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["primary_key"].as_str().unwrap();

    let script = d.join("sender.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let stdout = d.join("sender.out");
    let connection = connection_string(host, "kill-meter", key);
    let ca = d.join("ca.pem");
    let spawn = move |out: &Path, err: &Path, first_run: Option<&Path>| {
        Command::new(azure_sdk::python())
            .arg(&script)
            .arg(&connection)
            .arg(&ca)
            .args([MESSAGES.to_string(), "20".into()])
            .args(first_run)
            .stdout(Stdio::from(std::fs::File::create(out).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(err).unwrap()))
            .spawn()
            .unwrap()
    };
    let mut sender = spawn(&stdout, &d.join("sender.err"), None);

    // Kill weir once the SDK is well into the run, with sends in flight.
    let deadline = Instant::now() + Duration::from_secs(300);
    while returned(&stdout).0.len() < KILL_AFTER {
        assert!(Instant::now() < deadline, "the SDK did not get going");
        assert!(
            sender.try_wait().unwrap().is_none(),
            "the SDK stopped early"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = weir.token.clone();
    weir.signal(libc::SIGKILL);
    let (before_kill, done) = returned(&stdout);
    assert!(!done, "the run was over before the kill");
    let mut weir = weir;
    let _ = weir.child.wait();
    drop(weir);
    let mut weir = Weir::start(d, &pipeline, api).await;
    weir.token = token;

    // The SDK reconnects by itself and sends the rest. Not always: paho-mqtt 1.x (which
    // the SDK pins) lets an `SSLEOFError` raised while it writes end its network thread,
    // and then the client never reconnects. A device would be restarted: so is the
    // script, with what returned so far, when it makes no progress for 30 s.
    let (stdout2, stderr2) = (d.join("sender2.out"), d.join("sender2.err"));
    let (first_out, second_out, second_err) = (stdout.clone(), stdout2.clone(), stderr2.clone());
    let (status, restarted) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        let (mut progress, mut progressed_at, mut restarted) = (0, Instant::now(), false);
        loop {
            if let Some(status) = sender.try_wait().unwrap() {
                return (status, restarted);
            }
            let now = returned(&first_out).0.len() + returned(&second_out).0.len();
            if now != progress {
                (progress, progressed_at) = (now, Instant::now());
            } else if !restarted && progressed_at.elapsed() > Duration::from_secs(30) {
                let _ = sender.kill();
                let _ = sender.wait();
                sender = spawn(&second_out, &second_err, Some(&first_out));
                (restarted, progressed_at) = (true, Instant::now());
            }
            if Instant::now() > deadline {
                let _ = sender.kill();
                panic!("the SDK did not finish within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let mut err = std::fs::read_to_string(d.join("sender.err")).unwrap_or_default();
    err += &std::fs::read_to_string(&stderr2).unwrap_or_default();
    assert!(status.success(), "sender.py failed: {err}");
    let (mut all, mut done) = returned(&stdout);
    if restarted {
        let (rest, rest_done) = returned(&stdout2);
        all.extend(rest);
        all.sort_unstable();
        all.dedup();
        done = rest_done;
    }
    assert!(
        done && all.len() == MESSAGES,
        "{} sends returned",
        all.len()
    );

    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for line in lines(&d.join("out.ndjson")) {
        *seen
            .entry(line["seq"].as_u64().expect("a seq"))
            .or_default() += 1;
    }
    let missing_before: Vec<u64> = before_kill
        .iter()
        .copied()
        .filter(|seq| !seen.contains_key(seq))
        .collect();
    assert!(
        missing_before.is_empty(),
        "returned before the kill but not in the sink: {missing_before:?}"
    );
    let missing: Vec<u64> = all
        .iter()
        .copied()
        .filter(|s| !seen.contains_key(s))
        .collect();
    assert!(
        missing.is_empty(),
        "returned but not in the sink: {missing:?}"
    );
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let dropped = metric_in(
        &weir.metrics().await,
        "device_gateway_duplicates_dropped_total",
        &[],
    );
    let retries = err.lines().filter(|l| l.starts_with("retry")).count();
    println!(
        "kill -9 during 10,000 SDK sends: {} returned before the kill, all {} in the sink; \
         {duplicates} duplicates in the file, {dropped} dropped by `$.mid` after the restart, \
         {retries} sends the script retried, script restarted: {restarted}",
        before_kill.len(),
        seen.len(),
    );
    assert!(weir.terminate().success());
}
