//! Broker credentials against a Mosquitto of the test's own that refuses anonymous
//! clients: the `mqtt` source (MQTT 5 and 3.1.1) and `mqtt_publish` connect with the right
//! user name and password (from `${VAR}` and from a `password_file`) and deliver end to
//! end; a wrong password fails the component's connection with the reason, counted,
//! without taking weir down; no password reaches weir's log.

use std::path::Path;
use std::time::Duration;

use crate::support::mosquitto::PrivateMosquitto;
use crate::support::{Weir, eventually, free_port, lines, metric_in};

const USER: &str = "weir-device";

/// Publishes `count` readings to `topic` on `port` as `USER`, QoS 1, and waits for every
/// PUBACK.
async fn publish(port: u16, password: &str, topic: &str, count: usize) {
    use rumqttc_v5::{AsyncClient, Event, Incoming, MqttOptions, PublishOptions};
    let mut options = MqttOptions::new("auth-test-publisher", ("127.0.0.1", port));
    options
        .set_keep_alive(30)
        .set_credentials(USER, password.to_owned());
    let (client, mut eventloop) = AsyncClient::builder(options).capacity(64).build();
    for seq in 0..count {
        client
            .publish(
                topic,
                format!(r#"{{"device_id": "d1", "seq": {seq}}}"#),
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < count {
        if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.unwrap() {
            acked += 1;
        }
    }
    let _ = client.disconnect().await;
}

/// Subscribes to `filter` as `USER` and collects the payloads it receives.
async fn subscribe(
    port: u16,
    password: &str,
    filter: &str,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use rumqttc_v5::{AsyncClient, Event, Incoming, MqttOptions, QoS};
    let mut options = MqttOptions::new("auth-test-subscriber", ("127.0.0.1", port));
    options
        .set_keep_alive(30)
        .set_credentials(USER, password.to_owned());
    let (client, mut eventloop) = AsyncClient::builder(options).capacity(64).build();
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&received);
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Incoming::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Incoming::Publish(p)) => sink
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&p.payload).into_owned()),
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("the SUBACK within 10 s")
        .unwrap();
    received
}

fn write_pipeline(
    dir: &Path,
    api: u16,
    url: &str,
    password_file: &Path,
    wrong: &Path,
) -> std::path::PathBuf {
    let path = dir.join("pipeline.yaml");
    let (pw, bad) = (password_file.display(), wrong.display());
    std::fs::write(
        &path,
        format!(
            "data_dir: '{d}'
api: {{ listen: '127.0.0.1:{api}' }}
sources:
  in5: {{ type: mqtt, url: '{url}', client_id: auth-in5, topics: ['auth/5'], username: {USER}, password: '${{MQTT_PASSWORD}}' }}
  in4: {{ type: mqtt, url: '{url}', client_id: auth-in4, protocol: '3.1.1', topics: ['auth/4'], username: {USER}, password_file: '{pw}' }}
  wrong5: {{ type: mqtt, url: '{url}', client_id: auth-wrong5, topics: ['auth/5'], username: {USER}, password: '${{WRONG_PASSWORD}}' }}
  wrong4: {{ type: mqtt, url: '{url}', client_id: auth-wrong4, protocol: '3.1.1', topics: ['auth/4'], username: {USER}, password_file: '{bad}' }}
sinks:
  out: {{ type: file, inputs: [in5, in4], path: '{d}/out.ndjson' }}
actions:
  command:
    type: mqtt_publish
    inputs: [in5]
    url: '{url}'
    client_id: auth-command
    topic: 'auth/commands/{{{{ device_id }}}}'
    payload: '{{{{ seq }}}}'
    username: {USER}
    password_file: '{pw}'
  refused:
    type: mqtt_publish
    inputs: [in5]
    url: '{url}'
    client_id: auth-refused
    topic: 'auth/refused'
    username: {USER}
    password: '${{WRONG_PASSWORD}}'
    timeout: 1s
",
            d = dir.display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_credentials_deliver_and_a_wrong_password_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let password = format!("pw-{}-s3cret", std::process::id());
    let wrong = format!("wrong-{}-guess", std::process::id());
    let broker = PrivateMosquitto::start(dir.path(), Some((USER, &password))).await;
    // A file as an editor leaves it: with a trailing newline.
    let password_file = dir.path().join("mqtt.password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let wrong_file = dir.path().join("wrong.password");
    std::fs::write(&wrong_file, format!("{wrong}\n")).unwrap();
    let api = free_port();
    let pipeline = write_pipeline(dir.path(), api, &broker.url(), &password_file, &wrong_file);
    let commands = subscribe(broker.port, &password, "auth/commands/#").await;

    let log = dir.path().join("weir.log");
    let weir = Weir::start_logged(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
        &[
            ("MQTT_PASSWORD", &password),
            ("WRONG_PASSWORD", &wrong),
            // Every level weir and its clients log at.
            ("RUST_LOG", "trace"),
        ],
        &log,
    )
    .await;
    let metrics = || async { weir.metrics().await };
    let connected = |text: &str, id: &str| {
        metric_in(
            text,
            "source_connected",
            &[&format!(r#"component_id="{id}""#)],
        )
    };
    let mut subscribed = false;
    for _ in 0..200 {
        let text = metrics().await;
        if connected(&text, "in5") == 1.0 && connected(&text, "in4") == 1.0 {
            subscribed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        subscribed,
        "both sources connect with their credentials and subscribe"
    );

    publish(broker.port, &password, "auth/5", 20).await;
    publish(broker.port, &password, "auth/4", 20).await;
    let out = dir.path().join("out.ndjson");
    assert!(
        eventually(Duration::from_secs(20), || lines(&out).len() >= 40).await,
        "every reading arrives over both protocol versions: {} of 40",
        lines(&out).len()
    );
    assert!(
        eventually(Duration::from_secs(20), || commands.lock().unwrap().len()
            >= 20)
        .await,
        "mqtt_publish delivers its commands: {} of 20",
        commands.lock().unwrap().len()
    );

    // The wrong password: refused as not authorized, counted, retried, nothing crashed.
    let unauthorized = |text: &str, id: &str| {
        metric_in(
            text,
            "component_errors_total",
            &[
                &format!(r#"component_id="{id}""#),
                r#"error_type="unauthorized""#,
            ],
        )
    };
    let mut counted = false;
    for _ in 0..200 {
        let text = metrics().await;
        if ["wrong5", "wrong4", "refused"]
            .iter()
            .all(|id| unauthorized(&text, id) >= 1.0)
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = metrics().await;
    assert!(
        counted,
        "each component with the wrong password counts an unauthorized error:\n{}",
        text.lines()
            .filter(|l| l.starts_with("component_errors_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(connected(&text, "wrong5"), 0.0);
    assert_eq!(connected(&text, "wrong4"), 0.0);
    let health = reqwest::get(format!("http://127.0.0.1:{api}/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "weir keeps running");

    drop(weir);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("not authorized: check `username` and `password`"),
        "the log says why the broker refused: {}",
        &logged[logged.len().saturating_sub(3000)..]
    );
    assert!(
        !logged.contains(&password),
        "the password is not in weir's log"
    );
    assert!(
        !logged.contains(&wrong),
        "the wrong password is not in weir's log"
    );
}
