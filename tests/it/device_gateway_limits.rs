//! The device gateway's per-device telemetry rate limit and its content encodings,
//! driven by Microsoft's `azure-iot-device` SDK.

use jiff::Timestamp;
use weir::registry::{DevicePatch, DeviceSpec};

use crate::support::azure_sdk::{self, connection_string};
use crate::support::gateway::{TestGateway, json_lines};

fn device(gateway: &TestGateway, id: &str) -> String {
    let device = gateway
        .registry
        .create(DeviceSpec {
            id: id.into(),
            fields: DevicePatch::default(),
        })
        .unwrap();
    device.primary_key.into_exposed()
}

const RATE: u32 = 20;
const BURST: usize = 5;
const SENT: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_rate_is_slowed_to_it_and_loses_nothing() {
    let gateway = TestGateway::start(&format!(
        "rate_limit: {{ messages_per_second: {RATE}, burst: {BURST} }}"
    ));
    let key = device(&gateway, "burst-1");
    let (dir, ca) = (gateway.dir.path().to_path_buf(), gateway.ca.clone());
    let conn = connection_string(gateway.host, "burst-1", &key);
    // The SDK sends 20 at a time, as fast as the gateway acknowledges them.
    let said = tokio::task::spawn_blocking(move || azure_sdk::run(&dir, "send", &conn, &ca, SENT))
        .await
        .unwrap();
    assert_eq!(said.trim(), format!("sent {SENT}"));

    let out = gateway.out();
    let mut seqs: Vec<u64> = out.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..SENT as u64).collect::<Vec<_>>(), "nothing lost");
    // When the gateway took each message in (after the limiter let it through).
    let mut times: Vec<Timestamp> = out
        .iter()
        .map(|l| {
            l["meta"]["headers"]["iothub-enqueuedtime"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    times.sort_unstable();
    // The token bucket lets `BURST` through at once, then one every 1/RATE s: message
    // i (from 0) cannot have been taken in before (i - BURST + 1) / RATE s after the
    // first. A 5 ms slack covers stamping the time just after the limiter's decision.
    for (i, at) in times.iter().enumerate().skip(BURST) {
        let earliest_ms = (i - BURST + 1) as i64 * 1000 / RATE as i64 - 5;
        let after_ms = at.duration_since(times[0]).as_millis() as i64;
        assert!(
            after_ms >= earliest_ms,
            "message {i} was taken in {after_ms} ms after the first, before the rate allows ({earliest_ms} ms)"
        );
    }
    let throttled = gateway.metric("device_gateway_throttled_total", &[]);
    assert!(
        throttled >= 1.0 && throttled <= (SENT - BURST) as f64,
        "throttled {throttled}"
    );
    gateway.stop().await;
}

/// `encoded.py HOST DEVICE KEY CA`: sends three messages — JSON declared `utf-16`,
/// bytes that are not UTF-8 declared `utf-8`, and JSON declared `utf-8` — and prints
/// `{"sent": 3}` once each was acknowledged.
const ENCODED: &str = r#"
import asyncio, json, sys
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.device import Message

async def main():
    host, device, key, ca_file = sys.argv[1:5]
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=host, device_id=device,
        server_verification_cert=open(ca_file).read(), connection_retry=False)
    await client.connect()
    for payload, encoding in [(json.dumps({"n": 1}), "utf-16"), (b"\xff\xfe{}", "utf-8"),
                              (json.dumps({"n": 3}), "utf-8")]:
        m = Message(payload)
        m.content_type = "application/json"
        m.content_encoding = encoding
        await client.send_message(m)
    print(json.dumps({"sent": 3}), flush=True)
    await client.shutdown()

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_encodings_other_than_utf8_go_to_the_errors_output() {
    let gateway = TestGateway::start("");
    let key = device(&gateway, "enc-1");
    let args = vec![
        gateway.host.to_string(),
        "enc-1".into(),
        key,
        gateway.ca.display().to_string(),
    ];
    let said = json_lines(&gateway.python("encoded.py", ENCODED, args).await);
    assert_eq!(said[0]["sent"], 3, "each was acknowledged: {said:?}");
    let out = gateway.out();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["n"], 3);
    let errors = gateway.errors();
    assert_eq!(errors.len(), 2, "{errors:?}");
    let decode_errors = gateway.metric(
        "component_errors_total",
        &[r#"component_id="devices""#, r#"error_type="decode_failed""#],
    );
    assert_eq!(decode_errors, 2.0);
    assert_eq!(
        gateway.metric("device_gateway_connects_total", &[]),
        1.0,
        "the connection stayed up"
    );
    gateway.stop().await;
}
