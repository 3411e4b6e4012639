//! Two device gateways in one topology, through the real `weir` binary: the API queues a
//! cloud-to-device message in the gateway `?gateway=` names (400 naming the gateways
//! when it is missing or names none), each gateway keeps its own queue file, and
//! Microsoft's Python SDK connected to each gateway receives that gateway's message.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::azure_sdk::{self, connection_string, gateway_address};
use crate::support::{Weir, free_port};

async fn queue(weir: &Weir, query: &str, payload: &str) -> (u16, Value) {
    let response = weir
        .request(
            Method::POST,
            &format!("/v1/devices/sev-lamp/messages/devicebound{query}"),
        )
        .json(&json!({ "payload": payload }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn receive(dir: &Path, host: Ipv4Addr, key: &str) -> Vec<String> {
    let (dir, ca) = (dir.to_path_buf(), dir.join("ca.pem"));
    let conn = connection_string(host, "sev-lamp", key);
    let said = tokio::task::spawn_blocking(move || azure_sdk::run(&dir, "receive", &conn, &ca, 1))
        .await
        .unwrap();
    said.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["data"].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_picks_a_gateway_by_id_and_each_keeps_its_own_queue() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (north, south) = (gateway_address(), gateway_address());
    let (north_dir, south_dir) = (d.join("north"), d.join("south"));
    std::fs::create_dir_all(&north_dir).unwrap();
    std::fs::create_dir_all(&south_dir).unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "data_dir: '{d}'
api: {{ listen: '{api}' }}
registry: {{}}
sources:
  north: {n}
  south: {s}
sinks:
  out: {{ type: file, inputs: [north, south], path: '{d}/out.ndjson' }}
",
        d = d.display(),
        n = azure_sdk::gateway_source(&north_dir, north),
        s = azure_sdk::gateway_source(&south_dir, south),
    );
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, text).unwrap();
    let weir = Weir::start(d, &pipeline, api).await;
    let made: Value = weir
        .request(Method::POST, "/v1/devices")
        .json(&json!({ "id": "sev-lamp" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = made["primary_key"].as_str().unwrap().to_owned();

    for query in ["", "?gateway=west"] {
        let (status, refused) = queue(&weir, query, "x").await;
        assert_eq!(status, 400, "{query}: {refused}");
        let error = refused["error"].as_str().unwrap();
        assert!(
            error.contains("north") && error.contains("south"),
            "{error}"
        );
    }
    let (status, for_south) = queue(&weir, "?gateway=south", "for south").await;
    assert_eq!(status, 202, "{for_south}");
    let (status, for_north) = queue(&weir, "?gateway=north", "for north").await;
    assert_eq!(status, 202, "{for_north}");
    let file = |gateway: &str| {
        std::fs::read_to_string(d.join(format!("devicebound/{gateway}.json"))).unwrap()
    };
    let south_id = for_south["message_id"].as_str().unwrap();
    let north_id = for_north["message_id"].as_str().unwrap();
    assert!(file("south").contains(south_id) && !file("south").contains(north_id));
    assert!(file("north").contains(north_id) && !file("north").contains(south_id));

    assert_eq!(receive(&south_dir, south, &key).await, ["\"for south\""]);
    assert_eq!(receive(&north_dir, north, &key).await, ["\"for north\""]);
    assert!(weir.terminate().success());
}
