//! Durable notifications: the action's disk buffer is the outbox, the alarm keeps what it
//! has not handed over, throttle and dedupe outlive a restart, and every notification
//! carries an idempotency key.
//!
//! The crash test kills weir (`WEIR_CRASH_AT`, as abrupt as `kill -9`) at each step between
//! an alarm's transition and the webhook's answer, restarts it, and asserts what the
//! receiver sees: the notification at least once, at most one duplicate, one key.

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::receivers::{HttpReceiver, wait_for};
use crate::support::{Weir, free_port, metric, pipeline};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, in ms

/// Posts readings `(seconds after T0, temperature)` of `engine-1`; the status, if weir
/// answered at all.
async fn post(port: u16, readings: &[(i64, f64)]) -> Option<u16> {
    let body: Vec<Value> = readings
        .iter()
        .map(|(s, t)| json!({ "ts": T0 + s * 1000, "temperature": t }))
        .collect();
    reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/v1/devices/engine-1/messages"
        ))
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// `http → alarm → webhook` with the action's default (disk) buffer.
fn crash_pipeline(dir: &Path, port: u16, api: u16, webhook: &str) -> std::path::PathBuf {
    let path = dir.join("pipeline.yaml");
    std::fs::write(
        &path,
        format!(
            "data_dir: '{d}'
api: {{ listen: '127.0.0.1:{api}' }}
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}', event_time: ts }}
transforms:
  hot:
    type: alarm
    inputs: [devices]
    raise: 'temperature > 100'
    clear: 'temperature < 90'
actions:
  page:
    type: webhook
    inputs: [hot]
    url: '{webhook}'
    retry: {{ initial_backoff: 20ms, max_backoff: 200ms }}
",
            d = dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

/// Waits (up to 30 s) for `weir` to end by itself; its exit status.
async fn exited(weir: &mut Weir) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = weir.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "weir did not die at its crash point"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_notification_survives_a_crash_between_the_transition_and_the_answer() {
    // Where weir dies, and how often the receiver then accepts the notification in all.
    let points = [
        // The alarm wrote its state (the raise is recorded) before anything was sent.
        ("alarm.persisted", 1),
        // The action's disk buffer holds it; the request was not made.
        ("action.before_send", 1),
        // The receiver accepted it, the action had not acknowledged it: the one duplicate.
        ("action.sent", 2),
    ];
    for (point, expected) in points {
        let dir = tempfile::tempdir().unwrap();
        let webhook = HttpReceiver::start(vec![]).await;
        let (port, api) = (free_port(), free_port());
        let config = crash_pipeline(dir.path(), port, api, &webhook.url());
        let api = ([127, 0, 0, 1], api).into();

        let mut weir =
            Weir::start_with_env(dir.path(), &config, api, &[("WEIR_CRASH_AT", point)]).await;
        // weir dies while this request waits: no answer, or not a 2xx.
        let answered = post(port, &[(0, 80.0), (1, 105.0)]).await;
        let status = exited(&mut weir).await;
        assert_eq!(
            status.signal(),
            Some(libc::SIGABRT),
            "{point}: weir aborted at its crash point ({status:?}, answered {answered:?})"
        );
        let before = webhook.accepted_with_keys().len();
        assert_eq!(before, expected - 1, "{point}: sent before the crash");

        let weir = Weir::start(dir.path(), &config, api).await;
        let got = wait_for(Duration::from_secs(20), || {
            let got = webhook.accepted_with_keys();
            (got.len() >= expected).then_some(got)
        })
        .await;
        let got = got.unwrap_or_else(|| {
            panic!(
                "{point}: the notification did not arrive after the restart: {:?}",
                webhook.accepted_with_keys()
            )
        });
        // Anything more would come right away: give it the time to.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got_now = webhook.accepted_with_keys();
        assert_eq!(got_now.len(), expected, "{point}: {got_now:?}");
        let (key, body) = &got[0];
        assert_eq!(body["state"], "raised", "{point}");
        let alarm_id = body["alarm_id"].as_str().expect("an alarm id");
        assert_eq!(
            key.as_deref(),
            Some(format!("{alarm_id}-1").as_str()),
            "{point}: keyed by alarm and sequence"
        );
        assert!(
            got_now
                .iter()
                .all(|(k, b)| k == key && b["alarm_id"] == alarm_id),
            "{point}: a duplicate has the same key: {got_now:?}"
        );
        // Handed over and sent: the alarm's outbox and the buffer are empty again.
        assert!(
            crate::support::eventually(Duration::from_secs(10), || {
                let state = dir.path().join("data/alarms/hot.json");
                !std::fs::read_to_string(state)
                    .unwrap_or_default()
                    .contains("\"pending\"")
            })
            .await,
            "{point}: the transition stayed in the alarm's outbox"
        );
        assert_eq!(weir.terminate().code(), Some(0), "{point}");
    }
}

/// `http → alarm → page` (dedupe) and `limited` (throttle), run in this process.
struct Run {
    port: u16,
    telemetry: Arc<Telemetry>,
    topology: RunningTopology,
}

impl Run {
    fn start(dir: &Path, page: &str, limited: &str) -> Run {
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
actions:
  page:
    type: webhook
    inputs: [hot]
    url: '{page}'
    body: '{{\"device\":\"{{{{ device_id }}}}\",\"state\":\"{{{{ state }}}}\"}}'
    dedupe: {{ window: 1h }}
  limited:
    type: webhook
    inputs: [hot]
    url: '{limited}'
    throttle: {{ key: '{{{{ device_id }}}}', max: 2, period: 1h }}
",
            d = dir.display()
        );
        let telemetry = Telemetry::new();
        let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
        Run {
            port,
            telemetry,
            topology,
        }
    }

    fn outcome(&self, action: &str, outcome: &str) -> f64 {
        metric(
            &self.telemetry,
            "action_notifications_total",
            &[
                &format!("component_id=\"{action}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        )
    }

    /// Waits until the actions handled `(action, outcome, count)` each.
    async fn handled(&self, expected: &[(&str, &str, f64)]) {
        let done = crate::support::eventually(Duration::from_secs(20), || {
            expected
                .iter()
                .all(|(action, outcome, n)| self.outcome(action, outcome) >= *n)
        })
        .await;
        assert!(done, "{expected:?}\n{}", self.telemetry.encode());
    }

    async fn stop(self) {
        let failures = self.topology.stop(Duration::from_secs(20)).await;
        assert!(failures.is_empty(), "{failures:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_repeats_a_deduplicated_notification_nor_loses_a_throttled_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let page = HttpReceiver::start(vec![]).await;
    let limited = HttpReceiver::start(vec![]).await;

    let run = Run::start(dir.path(), &page.url(), &limited.url());
    assert_eq!(post(run.port, &[(0, 105.0)]).await, Some(200));
    run.handled(&[("page", "sent", 1.0), ("limited", "sent", 1.0)])
        .await;
    run.stop().await;

    // After the restart: the alarm clears and is raised again. `page` already sent that
    // body for the first raise (within its dedupe window); `limited` may send two per hour
    // and sent one.
    let run = Run::start(dir.path(), &page.url(), &limited.url());
    assert_eq!(post(run.port, &[(1, 80.0), (2, 105.0)]).await, Some(200));
    run.handled(&[
        ("page", "sent", 1.0),
        ("page", "deduplicated", 1.0),
        ("limited", "sent", 1.0),
        ("limited", "throttled", 1.0),
    ])
    .await;
    let states = |receiver: &HttpReceiver| -> Vec<String> {
        receiver
            .accepted()
            .iter()
            .map(|b| b["state"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    assert_eq!(
        states(&page),
        ["raised", "cleared"],
        "the second raise is a duplicate"
    );
    assert_eq!(
        states(&limited),
        ["raised", "cleared"],
        "the clear is the second of two per hour; the new raise the third"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_a_deprecated_memory_buffer_and_validate_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let page = HttpReceiver::start(vec![]).await;
    let port = free_port();
    let text = format!(
        "data_dir: '{d}'
api: {{ enabled: false }}
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}', event_time: ts }}
transforms:
  hot: {{ type: alarm, inputs: [devices], raise: 'temperature > 100', clear: 'temperature < 90' }}
actions:
  page:
    type: webhook
    inputs: [hot]
    url: '{url}'
    queue: {{ max_events: 5, when_full: drop_newest }}
  journal:
    type: log
    inputs: [hot]
    message: '{{{{ state }}}}'
",
        d = dir.path().display(),
        url = page.url()
    );
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a deprecation is no error: {stderr}");
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");
    assert!(
        stderr.contains("component `page`")
            && stderr.contains("`queue` is deprecated")
            && stderr.contains("buffer: { type: memory, max_events: 5, when_full: drop_newest }"),
        "{stderr}"
    );

    // It runs as a memory buffer: the source waits for the send, and nothing is on disk.
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    assert_eq!(post(port, &[(0, 105.0)]).await, Some(200));
    assert_eq!(page.accepted().len(), 1, "sent before the source answered");
    let buffers = dir.path().join("buffers");
    assert!(!buffers.join("page").exists(), "`queue` is a memory buffer");
    assert!(
        buffers.join("journal").is_dir(),
        "an action without `buffer` or `queue` has a disk buffer"
    );
    let failures = topology.stop(Duration::from_secs(20)).await;
    assert!(failures.is_empty(), "{failures:?}");
}
