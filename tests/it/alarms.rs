//! The `alarm` transform in a running weir: `/v1/alarms`, acknowledgement, and restarts
//! (a crash and a graceful one) that neither raise an active alarm again nor forget it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::receivers::{HttpReceiver, wait_for};
use crate::support::{self, Weir, free_port};
use weir::alarms::AlarmBoard;

const T0: i64 = 1_767_225_600_000;

async fn post(port: u16, readings: &[(i64, f64)]) -> u16 {
    let body: Vec<Value> = readings
        .iter()
        .map(|(s, t)| json!({ "ts": T0 + s * 1000, "temperature": t }))
        .collect();
    reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/v1/devices/engine-1/messages"
        ))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// What the webhook accepted, once it is at least `n` notifications: the action's disk
/// buffer answers the source before the send.
async fn accepted(webhook: &HttpReceiver, n: usize) -> Vec<Value> {
    wait_for(Duration::from_secs(20), || {
        let sent = webhook.accepted();
        (sent.len() >= n).then_some(sent)
    })
    .await
    .unwrap_or_else(|| panic!("expected {n} notifications: {:?}", webhook.accepted()))
}

async fn alarms(weir: &Weir) -> Vec<Value> {
    let body: Value = reqwest::get(format!("http://{}/v1/alarms", weir.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["alarms"].as_array().unwrap().clone()
}

async fn acknowledge(weir: &Weir, id: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/alarms/{id}/ack", weir.api))
        .json(&json!({ "by": "ops" }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_alarm_survives_restarts_is_not_sent_again_and_can_be_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = HttpReceiver::start(vec![]).await;
    let (port, api) = (free_port(), free_port());
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "data_dir: '{d}/data'
api: {{ listen: '127.0.0.1:{api}' }}
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}', event_time: ts }}
transforms:
  hot:
    type: alarm
    inputs: [devices]
    raise: {{ critical: 'temperature > 120', major: 'temperature > 100' }}
    clear: 'temperature < 90'
actions:
  page: {{ type: webhook, inputs: [hot], url: '{url}', retry: {{ initial_backoff: 20ms }} }}
",
            d = dir.path().display(),
            url = webhook.url()
        ),
    )
    .unwrap();
    let api = format!("127.0.0.1:{api}").parse().unwrap();
    let weir = Weir::start(dir.path(), &pipeline, api).await;

    assert_eq!(post(port, &[(0, 105.0), (1, 106.0)]).await, 200);
    let sent = accepted(&webhook, 1).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["state"], "raised");
    let id = sent[0]["alarm_id"].as_str().unwrap().to_owned();
    let listed = alarms(&weir).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["severity"], "major");
    assert_eq!(listed[0]["device_id"], "engine-1");
    assert_eq!(listed[0]["acknowledged"], false);

    // Counted once the action recorded the send (a crash before that may repeat it, with
    // the same idempotency key; this test is about the alarm not raising again).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while support::metric_in(
        &weir.metrics().await,
        "action_notifications_total",
        &["component_id=\"page\"", "outcome=\"sent\""],
    ) < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the send was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A crash: the state written at the raise is what the next start reads.
    let weir = weir
        .crash_and_restart(1, Duration::ZERO, dir.path(), &pipeline)
        .await;
    let listed = alarms(&weir).await;
    assert_eq!(listed.len(), 1, "the alarm is still active after a crash");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(post(port, &[(2, 107.0), (3, 104.0)]).await, 200);
    assert_eq!(
        webhook.accepted().len(),
        1,
        "an active alarm is not raised again"
    );

    // Acknowledge through the API: the transition reaches the action.
    let (status, body) = acknowledge(&weir, &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["acknowledged"], true);
    assert_eq!(body["acknowledged_by"], "ops");
    let sent = accepted(&webhook, 2).await;
    assert_eq!(sent[1]["state"], "acknowledged");
    assert_eq!(sent[1]["alarm_id"], id.as_str());
    assert_eq!(acknowledge(&weir, &id).await.0, 409);
    assert_eq!(acknowledge(&weir, "no-such-alarm").await.0, 404);

    // A graceful restart keeps the acknowledgement too.
    assert!(weir.terminate().success());
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    let listed = alarms(&weir).await;
    assert_eq!(listed[0]["acknowledged"], true);

    // Escalation and the clear still work on the restored alarm, with its id.
    assert_eq!(post(port, &[(4, 125.0), (5, 80.0)]).await, 200);
    let sent = accepted(&webhook, 4).await;
    let states: Vec<&str> = sent.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        ["raised", "acknowledged", "severity_changed", "cleared"]
    );
    assert_eq!(sent[2]["severity"], "critical");
    assert_eq!(sent[3]["alarm_id"], id.as_str());
    assert!(alarms(&weir).await.is_empty());
    let metrics = weir.metrics().await;
    assert_eq!(
        support::metric_in(&metrics, "alarm_active", &["component_id=\"hot\""]),
        0.0
    );
    assert!(weir.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_active_alarms_whether_the_alarm_changed_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = HttpReceiver::start(vec![]).await;
    let port = free_port();
    let config = |clear: u32, timeout: &str| {
        support::pipeline(&format!(
            "data_dir: '{d}'
api: {{ enabled: false }}
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}', event_time: ts }}
transforms:
  hot: {{ type: alarm, inputs: [devices], raise: 'temperature > 100', clear: 'temperature < {clear}' }}
actions:
  page: {{ type: webhook, inputs: [hot], url: '{url}', timeout: {timeout} }}
",
            d = dir.path().display(),
            url = webhook.url()
        ))
    };
    let telemetry = weir::telemetry::Telemetry::new();
    let mut topology =
        weir::topology::RunningTopology::start(&config(90, "5s"), &telemetry).unwrap();
    assert_eq!(post(port, &[(0, 105.0)]).await, 200);
    assert_eq!(accepted(&webhook, 1).await.len(), 1);

    // The action changes, the alarm keeps running with its state.
    topology.reload(config(90, "6s")).await.unwrap();
    assert_eq!(post(port, &[(1, 106.0)]).await, 200);
    assert_eq!(webhook.accepted().len(), 1, "not raised again");

    // The alarm changes: its new instance starts from the state file.
    topology.reload(config(85, "6s")).await.unwrap();
    assert_eq!(
        topology
            .services()
            .get::<AlarmBoard>()
            .unwrap()
            .list()
            .len(),
        1
    );
    assert_eq!(post(port, &[(2, 107.0), (3, 88.0)]).await, 200);
    assert_eq!(
        webhook.accepted().len(),
        1,
        "88 is not below the new clear threshold"
    );
    assert_eq!(post(port, &[(4, 80.0)]).await, 200);
    let sent = accepted(&webhook, 2).await;
    let states: Vec<&str> = sent.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["raised", "cleared"]);
    assert_eq!(sent[0]["alarm_id"], sent[1]["alarm_id"]);
    assert!(topology.stop(Duration::from_secs(10)).await.is_empty());
}
