//! The `http` source's IoT hub path (`iothub_transport: true`) driven by Microsoft's
//! Node.js device SDK over its HTTPS transport (`azure-iot-device-http`, from npm):
//! messages sent one by one and as a batch reach a file sink with their properties (as
//! `meta.headers`, named as the device gateway names them) and a JSON body decoded by
//! their content type; a wrong key is refused by the same SAS check as the source's own
//! path.

use crate::support::{Weir, free_port, lines, node_sdk, pki};
use std::net::Ipv4Addr;

/// `device.js CONNECTION_STRING CA_FILE COUNT`: sends COUNT messages one at a time, then
/// two as one batch, each with properties; prints `sent <message id>` after each send
/// returned, or `refused: <error name>` when the first is refused.
const SCRIPT: &str = r#"
const fs = require('fs');
const { Client, Message } = require('azure-iot-device');
const { Http } = require('azure-iot-device-http');

function message(seq) {
  const m = new Message(JSON.stringify({ seq: seq, temperature: 20 + seq }));
  m.messageId = 'node-' + seq;
  m.correlationId = 'corr-' + seq;
  m.contentType = 'application/json';
  m.contentEncoding = 'utf-8';
  m.properties.add('seq', String(seq));
  m.properties.add('kind', 'node & http');
  return m;
}

async function main() {
  const [conn, caFile, count] = process.argv.slice(2);
  const client = Client.fromConnectionString(conn, Http);
  // The HTTPS transport answers `setOptions` only when a receive policy is among the
  // options (it applies the rest regardless).
  await client.setOptions({
    ca: fs.readFileSync(caFile, 'utf8'),
    http: { receivePolicy: { interval: 60 } },
  });
  for (let seq = 0; seq < Number(count); seq++) {
    try {
      await client.sendEvent(message(seq));
    } catch (e) {
      console.log('refused: ' + e.constructor.name);
      process.exit(0);
    }
    console.log('sent node-' + seq);
  }
  const batch = [message(100), message(101)];
  await client.sendEventBatch(batch);
  console.log('sent batch');
  // Over HTTPS there is no connection to close, and the transport's SAS renewal timer
  // would hold the process open.
  process.exit(0);
}

main().catch((e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdks_https_transport_reaches_a_file_sink_with_its_properties() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host: Ipv4Addr = node_sdk::address();
    let certs = pki::generate_for(d, &[&host.to_string()]);
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "api: {{ listen: '{api}' }}
data_dir: '{d}'
registry: {{}}
sources:
  devices:
    type: http
    listen: '{host}:443'
    auth: sas
    iothub_transport: true
    tls: {{ cert_file: '{cert}', key_file: '{key}' }}
sinks:
  out: {{ type: file, inputs: [devices], path: '{d}/out.ndjson' }}
",
        d = d.display(),
        cert = certs.server_cert.display(),
        key = certs.server_key.display(),
    );
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, text).unwrap();
    let weir = Weir::start(d, &pipeline, api).await;
    let made: serde_json::Value = weir
        .request(reqwest::Method::POST, "/v1/devices")
        .json(&serde_json::json!({ "id": "node-pump" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["primary_key"].as_str().unwrap().to_owned();
    let ca = certs.ca.display().to_string();
    let run = |key: String| {
        let (dir, ca) = (d.to_path_buf(), ca.clone());
        let conn = format!("HostName={host};DeviceId=node-pump;SharedAccessKey={key}");
        tokio::task::spawn_blocking(move || node_sdk::run(&dir, SCRIPT, &[&conn, &ca, "3"]))
    };

    let said = run(key.clone()).await.unwrap();
    assert!(
        said.contains("sent node-2") && said.contains("sent batch"),
        "{said}"
    );
    // Acknowledged on commit: everything is in the file once the sends returned.
    let out = lines(&d.join("out.ndjson"));
    assert_eq!(out.len(), 5, "{out:?}");
    for line in &out {
        let seq = line["seq"]
            .as_u64()
            .expect("a JSON body, decoded by its content type");
        let headers = &line["meta"]["headers"];
        assert_eq!(line["device_id"], "node-pump");
        assert_eq!(headers["seq"], seq.to_string(), "{line}");
        assert_eq!(headers["kind"], "node & http", "{line}");
        assert_eq!(headers["iothub-connection-device-id"], "node-pump");
        assert!(headers["iothub-enqueuedtime"].is_string(), "{line}");
        if seq < 100 {
            // Sent alone: the system properties travel as headers too.
            assert_eq!(headers["$.mid"], format!("node-{seq}"), "{line}");
            assert_eq!(headers["$.cid"], format!("corr-{seq}"), "{line}");
            assert_eq!(headers["$.ct"], "application/json", "{line}");
            assert_eq!(headers["$.ce"], "utf-8", "{line}");
        }
    }
    let seqs: Vec<u64> = out.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 1, 2, 100, 101]);

    // Another key: refused by the SAS check, nothing more in the file.
    let other = weir::registry::keys::generate();
    let said = run(other).await.unwrap();
    assert!(said.starts_with("refused: Unauthorized"), "{said}");
    assert_eq!(lines(&d.join("out.ndjson")).len(), 5);
    assert!(weir.terminate().success());
}
