//! Broker sources end to end: `cargo bench --bench brokers` (needs the local RabbitMQ and
//! Mosquitto).
//!
//! - AMQP: a queue pre-filled with 200,000 messages is drained by `amqp → blackhole` (every
//!   message acked after the blackhole took it); messages/s from the first to the last.
//! - MQTT: a publisher sends QoS 1 as fast as it can for 10 s into `mqtt → blackhole`;
//!   messages/s weir received.
//! - Latency: 10,000 msg/s for 10 s through `mqtt → file`; each reading carries its publish
//!   time, and the file has when weir received it: p50/p99 of publish → receipt.
//!
//! Targets (issue 3): AMQP >= 100,000 msg/s, MQTT QoS 1 >= 50,000 msg/s, p99 <= 20 ms.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rumqttc::{AsyncClient, MqttOptions, PublishOptions};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Weir(Child, u16);

impl Weir {
    async fn start(dir: &Path, pipeline: &str) -> Weir {
        let api = free_port();
        let file = dir.join("pipeline.yaml");
        std::fs::write(
            &file,
            format!("api: {{ listen: 127.0.0.1:{api} }}\n{pipeline}"),
        )
        .expect("write pipeline");
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("run")
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start weir");
        let weir = Weir(child, api);
        for _ in 0..200 {
            if weir.metrics().await.is_some() {
                return weir;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("weir did not start");
    }

    async fn metrics(&self) -> Option<String> {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.1))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    async fn count(&self, component: &str) -> u64 {
        let text = self.metrics().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.starts_with("component_received_events_total")
                    && l.contains(&format!("component_id=\"{component}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

async fn amqp(dir: &Path) -> f64 {
    const MESSAGES: u64 = 200_000;
    let queue = format!("weir-bench-{}", std::process::id());
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let mut confirms = Vec::new();
    for i in 0..MESSAGES {
        let payload = format!(
            r#"{{"device_id": "d{}", "seq": {i}, "temperature": 21.5}}"#,
            i % 1000
        );
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    payload.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in confirms {
        confirm.await.expect("confirm");
    }
    let weir = Weir::start(dir, &format!("sources:\n  broker: {{ type: amqp, url: '{AMQP}', queue: '{queue}', prefetch: 2000 }}\nsinks:\n  hole: {{ type: blackhole, inputs: [broker] }}\n")).await;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let rate = loop {
        let n = weir.count("hole").await;
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= MESSAGES {
            break MESSAGES as f64 / first.map_or(1.0, |f| f.elapsed().as_secs_f64());
        }
        assert!(
            Instant::now() < deadline,
            "AMQP drain did not finish ({n} of {MESSAGES})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(weir);
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    rate
}

/// Publishes QoS 1 to `topic` at `rate` per second (0: as fast as possible) for `seconds`.
async fn publish(topic: String, rate: u64, seconds: u64) -> u64 {
    let mut options = MqttOptions::new(
        format!("weir-bench-pub-{}", std::process::id()),
        ("127.0.0.1", 1883),
    );
    options.set_keep_alive(30).set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::builder(options).capacity(10_000).build();
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        if rate > 0 && sent >= rate * started.elapsed().as_millis() as u64 / 1000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let now = jiff::Timestamp::now().as_microsecond();
        let payload = format!(
            r#"{{"device_id": "d{}", "seq": {sent}, "sent_us": {now}}}"#,
            sent % 1000
        );
        client
            .publish(
                topic.clone(),
                payload.into_bytes(),
                PublishOptions::at_least_once(),
            )
            .await
            .expect("publish");
        sent += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = client.disconnect().await;
    driver.abort();
    sent
}

async fn mqtt(dir: &Path) -> f64 {
    let topic = format!("weir-bench-{}/t", std::process::id());
    let weir = Weir::start(dir, &format!("sources:\n  plant: {{ type: mqtt, url: 'mqtt://127.0.0.1:1883', topics: ['{topic}'], max_inflight: 1000, clean_session: true }}\nsinks:\n  hole: {{ type: blackhole, inputs: [plant] }}\n")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seconds = 10;
    publish(topic, 0, seconds).await;
    let received = weir.count("plant").await;
    received as f64 / seconds as f64
}

async fn latency(dir: &Path) -> (f64, f64, usize) {
    let topic = format!("weir-bench-lat-{}/t", std::process::id());
    let out = dir.join("latency.ndjson");
    let weir = Weir::start(dir, &format!("sources:\n  plant: {{ type: mqtt, url: 'mqtt://127.0.0.1:1883', topics: ['{topic}'], max_inflight: 1000, clean_session: true }}\nsinks:\n  out: {{ type: file, inputs: [plant], path: '{}' }}\n", out.display())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(topic, 10_000, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(weir);
    let mut latencies: Vec<f64> = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).ok()?;
            let sent = event["sent_us"].as_i64()?;
            let received = event["meta"]["received_at"]
                .as_str()?
                .parse::<jiff::Timestamp>()
                .ok()?
                .as_microsecond();
            Some((received - sent) as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.5), at(0.99), latencies.len())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
        let amqp = amqp(dir.path()).await;
        println!("amqp → blackhole     {amqp:>10.0} msg/s  (target >= 100,000: {})", verdict(amqp >= 100_000.0));
        let mqtt = mqtt(dir.path()).await;
        println!("mqtt QoS 1 → blackhole {mqtt:>8.0} msg/s  (target >= 50,000: {}; the publisher shares the 2 cores)", verdict(mqtt >= 50_000.0));
        let (p50, p99, n) = latency(dir.path()).await;
        println!("mqtt at 10k msg/s    p50 {p50:.2} ms, p99 {p99:.2} ms publish → receipt over {n} readings (target p99 <= 20 ms: {})", verdict(p99 <= 20.0));
    });
}
