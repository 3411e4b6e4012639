//! Actions against real receivers: a local HTTP server, Mosquitto, RabbitMQ and a local
//! SMTP server. Readings enter through the `http` source, whose answer waits until every
//! action on their path has taken what they caused for good: appended to its disk buffer
//! (the default), or, with a memory buffer, sent or dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::receivers::{AmqpQueue, HttpReceiver, MqttSubscriber, SmtpServer, wait_for};
use crate::support::services::{Broker, Lease};
use crate::support::{self, free_port, lines, metric, pipeline};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, in ms

struct Harness {
    port: u16,
    dir: tempfile::TempDir,
    telemetry: Arc<Telemetry>,
    topology: RunningTopology,
}

impl Harness {
    /// Runs an `http` source → `alarm` (raise above 100, clear below 90) → `actions`.
    fn start(dir: tempfile::TempDir, alarm_extra: &str, actions: &str) -> Harness {
        let port = free_port();
        let text = format!(
            "data_dir: '{d}'
api: {{ enabled: false }}
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}', event_time: ts }}
transforms:
  hot:
    type: alarm
    inputs: [devices]
    raise: 'temperature > 100'
    clear: 'temperature < 90'
{alarm_extra}
actions:
{actions}
",
            d = dir.path().display()
        );
        let config = pipeline(&text);
        let telemetry = Telemetry::new();
        let topology = RunningTopology::start(&config, &telemetry).unwrap();
        Harness {
            port,
            dir,
            telemetry,
            topology,
        }
    }

    /// Posts readings `(seconds after T0, temperature)` of `device`; returns the status.
    async fn post(&self, device: &str, readings: &[(i64, f64)]) -> u16 {
        let body: Vec<Value> = readings
            .iter()
            .map(|(s, t)| json!({ "ts": T0 + s * 1000, "temperature": t }))
            .collect();
        reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/v1/devices/{device}/messages",
                self.port
            ))
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric(&self.telemetry, name, labels)
    }

    /// Waits until each `(action, outcome, count)` of `action_notifications_total` is
    /// reached: a disk-buffered action sends after the source was answered.
    async fn settled(&self, expected: &[(&str, &str, f64)]) {
        let reached = support::eventually(Duration::from_secs(30), || {
            expected.iter().all(|(action, outcome, count)| {
                self.metric(
                    "action_notifications_total",
                    &[
                        &format!("component_id=\"{action}\""),
                        &format!("outcome=\"{outcome}\""),
                    ],
                ) >= *count
            })
        })
        .await;
        assert!(reached, "{expected:?}\n{}", self.telemetry.encode());
    }

    async fn stop(self) -> tempfile::TempDir {
        let failures = self.topology.stop(Duration::from_secs(20)).await;
        assert!(failures.is_empty(), "{failures:?}");
        self.dir
    }
}

/// Five minutes of a value oscillating around the raise threshold (one reading a second;
/// two above, one below, so `count: 2` is met),
/// then a drop below the clear threshold and a minute oscillating around that one.
fn flapping() -> Vec<(i64, f64)> {
    let mut readings: Vec<(i64, f64)> = (0..10).map(|s| (s, 80.0)).collect();
    readings.extend((10..310).map(|s| (s, if s % 3 == 0 { 98.0 } else { 102.0 })));
    readings.extend((310..320).map(|s| (s, 85.0)));
    readings.extend((320..380).map(|s| (s, if s % 2 == 0 { 91.0 } else { 89.0 })));
    readings
}

fn states(values: &[Value], field: &str) -> Vec<String> {
    values
        .iter()
        .map(|v| v[field].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_input_reaches_every_action_exactly_once_per_transition() {
    let _brokers = Lease::shared(&[Broker::RabbitMq, Broker::Mosquitto]).await;
    let dir = tempfile::tempdir().unwrap();
    let run = format!("t{}", std::process::id());
    let webhook = HttpReceiver::start(vec![]).await;
    let smtp = SmtpServer::start(dir.path());
    let mqtt = MqttSubscriber::start(&format!("weir-test/{run}/devices/+/commands")).await;
    let amqp = AmqpQueue::bind(&format!("weir-test.{run}.#")).await;
    let actions = r#"
  page:
    type: webhook
    inputs: [hot]
    url: 'WEBHOOK'
    headers: { X-Alarm: '{{ alarm_id }}' }
    body: '{"device":"{{ device_id }}","state":"{{ state }}","severity":"{{ severity }}","alarm_id":"{{ alarm_id }}","temperature":{{ temperature }}}'
  command:
    type: mqtt_publish
    inputs: [hot]
    url: 'mqtt://127.0.0.1:1883'
    topic: 'weir-test/RUN/devices/{{ device_id }}/commands'
    payload: >-
      {"command":"{{ 'reduce_load' if state == 'raised' else 'resume' }}","state":"{{ state }}"}
  broadcast:
    type: amqp_publish
    inputs: [hot]
    url: 'amqp://guest:guest@127.0.0.1:5672/%2f'
    exchange: amq.topic
    routing_key: 'weir-test.RUN.{{ state }}.{{ device_id }}'
  mail:
    type: email
    inputs: [hot]
    host: 127.0.0.1
    port: SMTP_PORT
    security: none
    from: 'weir <weir@example.com>'
    to: ['ops@example.com']
    subject: '[{{ severity }}] {{ alarm }} {{ state }} on {{ device_id }}'
    body: 'temperature {{ temperature }} at {{ started_at }}'
  journal:
    type: log
    inputs: [hot]
    message: '{{ alarm }} {{ state }} on {{ device_id }}'
"#
    .replace("WEBHOOK", &webhook.url())
    .replace("RUN", &run)
    .replace("SMTP_PORT", &smtp.port.to_string());
    let h = Harness::start(dir, "    count: 2", &actions);

    assert_eq!(h.post("engine-1", &flapping()).await, 200);
    // A second device that stays cool raises nothing.
    let cool: Vec<(i64, f64)> = (0..300).map(|s| (s, 70.0)).collect();
    assert_eq!(h.post("engine-2", &cool).await, 200);

    let actions = ["page", "command", "broadcast", "mail", "journal"];
    let sent: Vec<_> = actions.iter().map(|a| (*a, "sent", 2.0)).collect();
    h.settled(&sent).await;
    let hooks = webhook.accepted();
    assert_eq!(
        states(&hooks, "state"),
        ["raised", "cleared"],
        "{hooks:?}\n{}",
        h.telemetry.encode()
    );
    assert_eq!(hooks[0]["device"], "engine-1");
    assert_eq!(hooks[0]["alarm_id"], hooks[1]["alarm_id"]);
    assert_eq!(hooks[0]["temperature"], 102.0);
    assert_eq!(webhook.attempts(), 2);

    let mails = smtp.received();
    assert_eq!(mails.len(), 2, "{mails:?}");
    let subject = |m: &Value| m["data"].as_str().unwrap().to_owned();
    assert!(
        subject(&mails[0]).contains("[major] hot raised on engine-1"),
        "{mails:?}"
    );
    assert!(
        subject(&mails[1]).contains("hot cleared on engine-1"),
        "{mails:?}"
    );
    assert_eq!(mails[0]["to"], json!(["ops@example.com"]));

    let published = amqp.drain().await;
    let keys: Vec<&str> = published.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("weir-test.{run}.raised.engine-1"),
            format!("weir-test.{run}.cleared.engine-1")
        ]
    );
    assert_eq!(published[0].1["state"], "raised");

    // MQTT delivery to the subscriber is asynchronous to the broker's PUBACK.
    let commands = wait_for(Duration::from_secs(10), || {
        let got = mqtt.payloads();
        (got.len() >= 2).then_some(got)
    })
    .await
    .expect("two commands on MQTT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let commands = if mqtt.payloads().len() > commands.len() {
        mqtt.payloads()
    } else {
        commands
    };
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert_eq!(
        commands[0].0,
        format!("weir-test/{run}/devices/engine-1/commands")
    );
    assert_eq!(commands[0].1["command"], "reduce_load");
    assert_eq!(commands[1].1["command"], "resume");

    for action in actions {
        let sent = h.metric(
            "action_notifications_total",
            &[&format!("component_id=\"{action}\""), "outcome=\"sent\""],
        );
        assert_eq!(sent, 2.0, "{action}");
    }
    assert_eq!(
        h.metric(
            "alarm_transitions_total",
            &["component_id=\"hot\"", "state=\"raised\""]
        ),
        1.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_caps_repeats_per_key_and_dedupe_drops_identical_payloads() {
    let webhook = HttpReceiver::start(vec![]).await;
    let deduped = HttpReceiver::start(vec![]).await;
    let actions = r#"
  page:
    type: webhook
    inputs: [hot]
    url: 'WEBHOOK'
    throttle: { key: '{{ device_id }}', max: 2, period: 1h }
  same:
    type: webhook
    inputs: [hot]
    url: 'DEDUPED'
    body: '{"device":"{{ device_id }}"}'
    dedupe: { window: 1h }
"#
    .replace("WEBHOOK", &webhook.url())
    .replace("DEDUPED", &deduped.url());
    let h = Harness::start(tempfile::tempdir().unwrap(), "", &actions);
    // Five raise/clear cycles of one device: ten transitions.
    let cycles: Vec<(i64, f64)> = (0..10)
        .map(|s| (s, if s % 2 == 0 { 105.0 } else { 80.0 }))
        .collect();
    assert_eq!(h.post("engine-1", &cycles).await, 200);
    assert_eq!(h.post("engine-2", &[(0, 105.0)]).await, 200);
    h.settled(&[
        ("page", "sent", 3.0),
        ("page", "throttled", 8.0),
        ("same", "sent", 2.0),
        ("same", "deduplicated", 9.0),
    ])
    .await;

    let states = states(&webhook.accepted(), "state");
    assert_eq!(
        states,
        ["raised", "cleared", "raised"],
        "two per device, then throttled"
    );
    let throttled = h.metric(
        "action_notifications_total",
        &["component_id=\"page\"", "outcome=\"throttled\""],
    );
    assert_eq!(throttled, 8.0);

    // Same body for every transition of a device: one per device gets through.
    let bodies = deduped.accepted();
    assert_eq!(
        bodies,
        [json!({"device":"engine-1"}), json!({"device":"engine-2"})]
    );
    let duplicates = h.metric(
        "action_notifications_total",
        &["component_id=\"same\"", "outcome=\"deduplicated\""],
    );
    assert_eq!(duplicates, 9.0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_three_times_then_200_gets_the_notification_once() {
    let webhook = HttpReceiver::start(vec![500, 503, 500]).await;
    let actions = r#"
  page:
    type: webhook
    inputs: [hot]
    url: 'WEBHOOK'
    retry: { attempts: 5, initial_backoff: 20ms, max_backoff: 200ms }
"#
    .replace("WEBHOOK", &webhook.url());
    let h = Harness::start(tempfile::tempdir().unwrap(), "", &actions);
    assert_eq!(h.post("engine-1", &[(0, 105.0)]).await, 200);
    h.settled(&[("page", "sent", 1.0)]).await;
    assert_eq!(webhook.attempts(), 4);
    let accepted = webhook.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["state"], "raised");
    assert_eq!(accepted[0]["device_id"], "engine-1");
    let labels = ["component_id=\"page\""];
    assert_eq!(h.metric("action_retries_total", &labels), 3.0);
    assert_eq!(
        h.metric(
            "action_notifications_total",
            &[labels[0], "outcome=\"sent\""]
        ),
        1.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_400_sends_the_notification_to_the_dead_letter_output() {
    let webhook = HttpReceiver::start(vec![400]).await;
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.ndjson");
    let actions = r#"
  page:
    type: webhook
    inputs: [hot]
    url: 'WEBHOOK'
    retry: { initial_backoff: 20ms }
sinks:
  dead_letters: { type: file, inputs: [page.errors], path: 'DEAD' }
"#
    // The token in the URL is a secret: the dead letter names the URL without it.
    .replace(
        "WEBHOOK",
        &format!("{}?site=plant-3&token=s3cr3t-t0ken", webhook.url()),
    )
    .replace("DEAD", &dead.display().to_string());
    let h = Harness::start(dir, "", &actions);
    assert_eq!(h.post("engine-1", &[(0, 105.0)]).await, 200);
    h.settled(&[("page", "failed", 1.0)]).await;
    wait_for(Duration::from_secs(10), || {
        (!lines(&dead).is_empty()).then_some(())
    })
    .await
    .expect("a dead letter");
    assert_eq!(webhook.attempts(), 1, "a 4xx is not retried");
    let written = std::fs::read_to_string(&dead).unwrap();
    assert!(!written.contains("s3cr3t-t0ken"), "{written}");
    assert!(written.contains("token=***"), "{written}");
    assert!(webhook.accepted().is_empty());
    let letters = lines(&dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["state"], "raised");
    let error = letters[0]["meta"]["error"]["message"].as_str().unwrap();
    assert!(error.contains("400"), "{error}");
    assert_eq!(letters[0]["meta"]["error"]["component"], "page");
    assert_eq!(
        h.metric(
            "action_notifications_total",
            &["component_id=\"page\"", "outcome=\"failed\""]
        ),
        1.0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_over_mutual_tls_and_email_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::pki::generate(dir.path());
    let webhook = HttpReceiver::start(vec![]).await;
    let https = support::pki::tls_proxy(&pki, true, webhook.addr.port()).await;
    let smtp = SmtpServer::start_starttls(dir.path(), &pki.server_cert, &pki.server_key);
    let actions = r#"
  page:
    type: webhook
    inputs: [hot]
    url: 'https://localhost:HTTPS/hook'
    tls: { ca_file: 'CA', cert_file: 'CLIENT_CERT', key_file: 'CLIENT_KEY' }
  mail:
    type: email
    inputs: [hot]
    host: localhost
    port: SMTP_PORT
    security: starttls
    ca_file: 'CA'
    from: 'weir@example.com'
    to: ['ops@example.com', '{{ device_id }}@devices.example.com']
    subject: '{{ device_id }} {{ state }}'
    body: 'avg {{ temperature }}'
"#
    .replace("HTTPS", &https.to_string())
    .replace("SMTP_PORT", &smtp.port.to_string())
    .replace("CLIENT_CERT", &pki.client_cert.display().to_string())
    .replace("CLIENT_KEY", &pki.client_key.display().to_string())
    .replace("CA", &pki.ca.display().to_string());
    let h = Harness::start(dir, "", &actions);
    assert_eq!(h.post("engine-1", &[(0, 105.0)]).await, 200);
    h.settled(&[("page", "sent", 1.0), ("mail", "sent", 1.0)])
        .await;
    assert_eq!(states(&webhook.accepted(), "state"), ["raised"]);
    let mails = smtp.received();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(
        mails[0]["to"],
        json!(["ops@example.com", "engine-1@devices.example.com"])
    );
    assert!(
        mails[0]["data"]
            .as_str()
            .unwrap()
            .contains("engine-1 raised")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_buffer_with_drop_newest_counts_what_it_refuses() {
    // The receiver keeps failing, so the first notification stays in its retries.
    let webhook = HttpReceiver::start(vec![500; 1000]).await;
    let actions = r#"
  page:
    type: webhook
    inputs: [hot]
    url: 'WEBHOOK'
    buffer: { type: memory, max_events: 1, when_full: drop_newest }
    retry: { attempts: 1000, initial_backoff: 50ms, max_backoff: 50ms }
"#
    .replace("WEBHOOK", &webhook.url());
    let h = Harness::start(tempfile::tempdir().unwrap(), "", &actions);
    // Four transitions in one batch: the buffer holds one, the newest three are refused.
    let readings = [(0, 105.0), (1, 80.0), (2, 105.0), (3, 80.0)];
    let port = h.port;
    let posting = tokio::spawn(async move {
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
    });
    let discarded = || h.metric("buffer_discarded_events_total", &["component_id=\"page\""]);
    assert!(
        support::eventually(Duration::from_secs(10), || discarded() >= 3.0).await,
        "{}",
        h.telemetry.encode()
    );
    wait_for(Duration::from_secs(10), || {
        (webhook.attempts() >= 1).then_some(())
    })
    .await
    .expect("the first notification is being sent");
    assert_eq!(discarded(), 3.0);
    assert!(webhook.accepted().is_empty());
    // The request still waits for the notification in flight.
    assert!(!posting.is_finished());
    posting.abort();
    let _ = h.topology.stop(Duration::from_millis(500)).await;
}
