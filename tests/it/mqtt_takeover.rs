//! Two clients with one MQTT client id kick each other off the broker in a loop. weir's
//! `mqtt` source counts the take-overs and, at 5 within a minute, fails loudly: the reason
//! in its error log, `component_errors_total{error_type="session_taken_over"}`, `/ready`
//! 503 naming the component. A broker may say "Session taken over" to an MQTT 5 client
//! (the unit tests of `sources::mqtt::takeover` count that); Mosquitto 2.0.11, the one
//! here, just closes the connection right after accepting it, under 5 as under 3.1.1.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::support::mosquitto::PrivateMosquitto;
use crate::support::{Weir, free_port, metric_in};

/// Connects as `client_id` again and again (holding each connection a moment), as a
/// second weir with the same id would, until `stop`.
fn intruder(port: u16, client_id: &'static str, stop: CancellationToken) {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let mut options = rumqttc::MqttOptions::new(client_id, ("127.0.0.1", port));
            options.set_keep_alive(30);
            let (client, mut eventloop) =
                rumqttc::AsyncClient::builder(options).capacity(8).build();
            let connected = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_))) => break,
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
            .await;
            if connected.is_ok() {
                // Long enough for weir to come back and take the session over in turn.
                let _ = tokio::time::timeout(Duration::from_millis(400), async {
                    while eventloop.poll().await.is_ok() {}
                })
                .await;
            }
            let _ = client.try_disconnect();
            drop(eventloop);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_take_over_loop_fails_the_source_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = PrivateMosquitto::start(dir.path(), None).await;
    let api = free_port();
    let url = broker.url();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "data_dir: '{d}'
api: {{ listen: '127.0.0.1:{api}' }}
sources:
  plant5: {{ type: mqtt, url: '{url}', client_id: takeover-5, topics: ['t/5'] }}
  plant4: {{ type: mqtt, url: '{url}', client_id: takeover-4, protocol: '3.1.1', topics: ['t/4'] }}
  fleet: {{ type: simulator, devices: 1, rate: 1 }}
sinks:
  out: {{ type: blackhole, inputs: [plant5, plant4, fleet] }}
",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("weir.log");
    let weir = Weir::start_logged(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
        &[("RUST_LOG", "info,weir::sources=debug")],
        &log,
    )
    .await;
    let ready = || async {
        let response = reqwest::get(format!("http://127.0.0.1:{api}/ready"))
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };
    let series = |text: &str, name: &str, id: &str, more: &[&str]| {
        let label = format!(r#"component_id="{id}""#);
        let mut labels = vec![label.as_str()];
        labels.extend_from_slice(more);
        metric_in(text, name, &labels)
    };
    // Both connected and subscribed: nothing counts as a take-over yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = weir.metrics().await;
        if series(&text, "source_connected", "plant5", &[]) == 1.0
            && series(&text, "source_connected", "plant4", &[]) == 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "both sources connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready().await.0, 200);

    let stop = CancellationToken::new();
    intruder(broker.port, "takeover-5", stop.clone());
    intruder(broker.port, "takeover-4", stop.clone());
    let started = Instant::now();
    let taken_over = [r#"error_type="session_taken_over""#];
    loop {
        let text = weir.metrics().await;
        if series(&text, "component_errors_total", "plant5", &taken_over) == 1.0
            && series(&text, "component_errors_total", "plant4", &taken_over) == 1.0
            && metric_in(&text, "topology_failed_components", &[]) == 2.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "both sources give up within 60 s:\n{}\n{}",
            text.lines()
                .filter(|l| l.contains("plant") && l.contains("errors_total"))
                .collect::<Vec<_>>()
                .join("\n"),
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("MQTT"))
                .take(60)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    // Once each: a failed source stays stopped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let text = weir.metrics().await;
    assert_eq!(
        series(&text, "component_errors_total", "plant5", &taken_over),
        1.0
    );
    assert_eq!(series(&text, "source_connected", "plant5", &[]), 0.0);
    assert_eq!(series(&text, "source_connected", "plant4", &[]), 0.0);
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["failed_components"],
        serde_json::json!(["plant4", "plant5"]),
        "{body}"
    );
    // The rest of the pipeline keeps running.
    let health = reqwest::get(format!("http://127.0.0.1:{api}/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    drop(weir);
    let logged = std::fs::read_to_string(&log).unwrap();
    for id in ["takeover-5", "takeover-4"] {
        let line = logged
            .lines()
            .find(|l| {
                l.contains("ERROR")
                    && l.contains(&format!("client id `{id}` keeps taking over the session"))
            })
            .unwrap_or_else(|| panic!("an error line names {id}:\n{logged}"));
        assert!(
            line.contains("closed each connection right after accepting it"),
            "{line}"
        );
    }
    eprintln!("both sources failed {elapsed:?} after the take-overs began");
}
