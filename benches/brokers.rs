//! Broker sources end to end: `cargo bench --bench brokers` (needs the local RabbitMQ and
//! Mosquitto).
//!
//! - AMQP: a queue pre-filled with 200,000 messages is drained by `amqp → blackhole` (every
//!   message acked after the blackhole took it); messages/s from the first to the last.
//! - MQTT, once per protocol version: 200,000 QoS 1 messages queued in weir's persistent
//!   session on a private Mosquitto (see [`Mosquitto`]) are drained by `mqtt → blackhole`
//!   (each acknowledged after the blackhole took it); messages/s from the first to the last.
//! - Latency: 10,000 msg/s for 10 s through `mqtt (5) → redis` in `stream` mode. Each
//!   reading carries its publish time; Redis stamps each stream entry with its own clock
//!   when it stores it, which is the sink's commit (the sink acknowledges on Redis's reply).
//!   p50/p99 of publish → commit, at Redis's millisecond resolution.
//!
//! Targets (issue 3): AMQP >= 100,000 msg/s, MQTT QoS 1 >= 50,000 msg/s, p99 <= 20 ms.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
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
            format!(
                "data_dir: '{}'\napi: {{ listen: 127.0.0.1:{api}, auth: {{ public_metrics: true }} }}\n{pipeline}",
                dir.display()
            ),
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

const AMQP_MESSAGES: u64 = 200_000;

/// A channel in confirm mode, on a connection of its own.
async fn confirming_channel() -> (Connection, lapin::Channel) {
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (connection, channel)
}

/// A queue holding [`AMQP_MESSAGES`] readings (publisher-confirmed), and the channel that
/// declared it.
async fn filled_queue(name: &str) -> (Connection, lapin::Channel, String) {
    let queue = format!("weir-bench-{name}-{}", std::process::id());
    let (connection, channel) = confirming_channel().await;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let mut confirms = Vec::new();
    for i in 0..AMQP_MESSAGES {
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
    (connection, channel, queue)
}

/// A plain lapin consumer of `queue` (declared if missing) with `prefetch`, on a
/// connection of its own.
async fn bare_consumer(queue: &str, prefetch: u16) -> (lapin::Channel, lapin::Consumer) {
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = channel
        .basic_consume(
            queue.into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (channel, consumer)
}

/// What the broker can deliver to one consumer here: a bare lapin consumer (prefetch
/// 2000, one `multiple` ack per 256 messages, nothing else) drains the queue; msg/s.
async fn amqp_ceiling() -> f64 {
    let (_connection, channel, queue) = filled_queue("ceiling").await;
    let (_consumer_channel, mut consumer) = bare_consumer(&queue, 2000).await;
    let mut started = None;
    let mut received = 0u64;
    while let Some(Ok(delivery)) = consumer.next().await {
        started.get_or_insert_with(Instant::now);
        received += 1;
        if received.is_multiple_of(256) || received == AMQP_MESSAGES {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .expect("ack");
        }
        if received == AMQP_MESSAGES {
            break;
        }
    }
    let rate = AMQP_MESSAGES as f64 / started.map_or(1.0, |s| s.elapsed().as_secs_f64());
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    rate
}

/// `amqp → blackhole` draining the queue; msg/s from the first message to the last.
async fn amqp(dir: &Path) -> f64 {
    let (_connection, channel, queue) = filled_queue("weir").await;
    let weir = Weir::start(dir, &format!("sources:\n  broker: {{ type: amqp, url: '{AMQP}', queue: '{queue}', prefetch: 2000 }}\nsinks:\n  hole: {{ type: blackhole, inputs: [broker] }}\n")).await;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let rate = loop {
        let n = weir.count("hole").await;
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= AMQP_MESSAGES {
            break AMQP_MESSAGES as f64 / first.map_or(1.0, |f| f.elapsed().as_secs_f64());
        }
        assert!(
            Instant::now() < deadline,
            "AMQP drain did not finish ({n} of {AMQP_MESSAGES})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(weir);
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    rate
}

/// A QoS 1 publisher with 1000 publishes in flight, on the broker at `port`.
fn publisher(name: &str, port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(
        format!("weir-bench-{name}-{}", std::process::id()),
        ("127.0.0.1", port),
    );
    options.set_keep_alive(30).set_inflight(1000);
    AsyncClient::builder(options).capacity(10_000).build()
}

/// Publishes `count` QoS 1 readings to `topic` on the broker at `port`, and returns when
/// the broker has acknowledged every one. (`mosquitto_pub -l` would be faster, but it
/// drops lines it has not sent when its input ends.)
async fn fill(port: u16, topic: &str, count: u64) {
    let (client, mut eventloop) = publisher("fill", port);
    let topic = topic.to_owned();
    let sender = tokio::spawn(async move {
        for i in 0..count {
            let payload = format!(
                r#"{{"device_id": "d{}", "seq": {i}, "temperature": 21.5}}"#,
                i % 1000
            );
            client
                .publish(
                    topic.clone(),
                    payload.into_bytes(),
                    PublishOptions::at_least_once(),
                )
                .await
                .expect("publish");
        }
        client
    });
    let mut acked = 0;
    while acked < count {
        if let rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(_)) =
            eventloop.poll().await.expect("fill the broker")
        {
            acked += 1;
        }
    }
    let _ = sender.await.expect("publisher").disconnect().await;
}

/// Publishes QoS 1 to `topic` at `rate` per second for `seconds`.
async fn publish(topic: String, rate: u64, seconds: u64) -> u64 {
    let (client, mut eventloop) = publisher("pub", 1883);
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        if sent >= rate * started.elapsed().as_millis() as u64 / 1000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        client
            .publish(
                topic.clone(),
                stamped(sent).into_bytes(),
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

const MQTT_MESSAGES: u64 = 200_000;

/// A private Mosquitto for the throughput run, configured like a broker meant for it:
/// every queued message kept (`max_queued_messages 0`; the machine's broker keeps 1000 per
/// subscriber and drops the rest) and 1000 in flight per subscriber under 3.1.1 too (its
/// `max_inflight_messages` is 20; MQTT 5 subscribers announce their own).
struct Mosquitto(Child, u16);

impl Mosquitto {
    async fn start(dir: &Path) -> Mosquitto {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 1000\n"),
        )
        .expect("write mosquitto.conf");
        let broker = Mosquitto(
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto (package mosquitto)"),
            port,
        );
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return broker;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("mosquitto did not start on port {port}");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `mqtt → blackhole` drains: weir's persistent session is set up, weir stops,
/// [`MQTT_MESSAGES`] QoS 1 readings are queued for it, weir starts again and takes them
/// all; msg/s committed from its first message to its last. The publisher is done before
/// weir starts, so it takes no CPU from weir or the broker.
async fn mqtt(dir: &Path, protocol: &str) -> f64 {
    let broker = Mosquitto::start(dir).await;
    let topic = format!("weir-bench-{}/t", std::process::id());
    let pipeline = format!(
        "sources:\n  plant: {{ type: mqtt, url: 'mqtt://127.0.0.1:{}', client_id: weir-bench, topics: ['{topic}'], protocol: '{protocol}', max_inflight: 1000 }}\nsinks:\n  hole: {{ type: blackhole, inputs: [plant] }}\n",
        broker.1
    );
    let weir = Weir::start(dir, &pipeline).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(weir);

    fill(broker.1, &topic, MQTT_MESSAGES).await;

    let weir = Weir::start(dir, &pipeline).await;
    let (mut first, mut last, mut count) = (None, Instant::now(), 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while count < MQTT_MESSAGES {
        assert!(
            Instant::now() < deadline,
            "MQTT drain did not finish ({count} of {MQTT_MESSAGES})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = weir.count("hole").await;
        if n > count {
            first.get_or_insert(last);
            (last, count) = (Instant::now(), n);
        }
    }
    drop(weir);
    MQTT_MESSAGES as f64 / first.map_or(1.0, |first| (last - first).as_secs_f64())
}

/// Milliseconds, sorted, read at quantiles.
struct Percentiles(Vec<f64>);

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self(values)
    }

    fn at(&self, q: f64) -> f64 {
        self.0
            .get(((self.0.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// A latency run: publish → commit, and its first part, publish → weir's receipt.
struct Latency {
    commit: Percentiles,
    receipt: Percentiles,
    sent: u64,
}

/// Which broker source the latency run goes through.
#[derive(Clone, Copy)]
enum Transport {
    Mqtt5,
    Amqp,
}

/// A reading stamped with the time it is published.
fn stamped(seq: u64) -> String {
    let now = jiff::Timestamp::now().as_microsecond();
    format!(
        r#"{{"device_id": "d{}", "seq": {seq}, "sent_us": {now}}}"#,
        seq % 1000
    )
}

/// Publishes to `queue` at `rate` per second for `seconds`; how many the broker confirmed.
/// With publisher confirms, as a device that must not lose readings publishes.
async fn publish_amqp(queue: &str, rate: u64, seconds: u64) -> u64 {
    let (_connection, channel) = confirming_channel().await;
    let mut confirms = Vec::new();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        if sent >= rate * started.elapsed().as_millis() as u64 / 1000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                stamped(sent).as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
        sent += 1;
    }
    let mut confirmed = 0;
    for confirm in confirms {
        if confirm.await.is_ok_and(|c| c.is_ack()) {
            confirmed += 1;
        }
    }
    confirmed
}

async fn latency(dir: &Path, transport: Transport) -> Latency {
    let topic = format!("weir-bench-lat-{}/t", std::process::id());
    let key = format!("weir-bench-lat-{}", std::process::id());
    let redis = redis::Client::open("redis://127.0.0.1:6379/").expect("redis url");
    let mut redis = redis
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("DEL");
    let source = match transport {
        Transport::Mqtt5 => format!(
            "{{ type: mqtt, url: 'mqtt://127.0.0.1:1883', topics: ['{topic}'], max_inflight: 1000, clean_session: true }}"
        ),
        Transport::Amqp => format!(
            "{{ type: amqp, url: '{AMQP}', queue: '{key}', prefetch: 1000, declare: {{ durable: false }} }}"
        ),
    };
    let weir = Weir::start(dir, &format!("sources:\n  plant: {source}\nsinks:\n  warm: {{ type: redis, inputs: [plant], url: 'redis://127.0.0.1:6379/', key: '{key}', mode: stream, maxlen: 1000000 }}\n")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = match transport {
        Transport::Mqtt5 => publish(topic, 10_000, 10).await,
        Transport::Amqp => publish_amqp(&key, 10_000, 10).await,
    };
    // Until every reading is committed (or clearly will not be).
    for _ in 0..100 {
        let stored: u64 = redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("XLEN");
        if stored >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(weir);
    if let Transport::Amqp = transport {
        let connection = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .expect("RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        let _ = channel
            .queue_delete(key.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let (mut commit, mut receipt) = (Vec::new(), Vec::new());
    let mut from = "-".to_owned();
    loop {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut redis)
            .await
            .expect("XRANGE");
        let Some(last) = entries.ids.last() else {
            break;
        };
        from = format!("({}", last.id);
        for entry in &entries.ids {
            // The entry id is `<Redis's clock in ms>-<sequence>`.
            let committed_ms: i64 = entry
                .id
                .split('-')
                .next()
                .and_then(|ms| ms.parse().ok())
                .expect("stream id");
            let sent_us: i64 = entry.get("sent_us").expect("sent_us");
            // The reading has no time of its own, so its event time is weir's receipt.
            let received_ms: i64 = entry.get("event_time_ms").expect("event_time_ms");
            commit.push((committed_ms * 1000 - sent_us) as f64 / 1000.0);
            receipt.push((received_ms * 1000 - sent_us) as f64 / 1000.0);
        }
    }
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("DEL");
    Latency {
        commit: Percentiles::of(commit),
        receipt: Percentiles::of(receipt),
        sent,
    }
}

/// Publish → receipt at a bare lapin consumer (in this process, beside the publisher) at
/// `rate` msg/s: how long RabbitMQ itself takes here.
async fn amqp_bare_latency(rate: u64) -> Percentiles {
    let queue = format!("weir-bench-barelat-{}", std::process::id());
    let (channel, mut consumer) = bare_consumer(&queue, 1000).await;
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut n = 0u64;
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
        {
            let now = jiff::Timestamp::now().as_microsecond();
            let value: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
            latencies.push((now - value["sent_us"].as_i64().expect("sent_us")) as f64 / 1000.0);
            n += 1;
            if n.is_multiple_of(256) {
                delivery
                    .acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .expect("ack");
            }
        }
        latencies
    });
    publish_amqp(&queue, rate, 10).await;
    let latencies = reader.await.expect("reader");
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    Percentiles::of(latencies)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
        // `cargo bench --bench brokers -- mqtt` runs only the parts whose name holds `mqtt`.
        let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
        let wanted = |part: &str| filters.is_empty() || filters.iter().any(|f| part.contains(f.as_str()));
        if wanted("amqp") {
            let ceiling = amqp_ceiling().await;
            println!("amqp broker ceiling  {ceiling:>10.0} msg/s  (a bare lapin consumer, for scale)");
            let amqp = amqp(dir.path()).await;
            println!("amqp → blackhole     {amqp:>10.0} msg/s  (target >= 100,000: {})", verdict(amqp >= 100_000.0));
        }
        for protocol in ["5", "3.1.1"] {
            if wanted(&format!("mqtt{protocol}")) {
                let rate = mqtt(dir.path(), protocol).await;
                println!("mqtt {protocol:<5} QoS 1 → blackhole {rate:>8.0} msg/s  (target >= 50,000: {})", verdict(rate >= 50_000.0));
            }
        }
        if wanted("latency") {
            for (name, transport) in [("mqtt 5", Transport::Mqtt5), ("amqp", Transport::Amqp)] {
                let Latency { commit, receipt, sent } = latency(dir.path(), transport).await;
                println!(
                    "{name} at 10k msg/s → redis: publish → commit p50 {:.1} ms, p99 {:.1} ms over {} of {sent} readings (target p99 <= 20 ms: {}); publish → receipt p99 {:.1} ms",
                    commit.at(0.5),
                    commit.at(0.99),
                    commit.0.len(),
                    verdict(commit.at(0.99) <= 20.0),
                    receipt.at(0.99),
                );
            }
            let bare = amqp_bare_latency(10_000).await;
            println!(
                "amqp at 10k msg/s, bare lapin consumer: publish → receipt p50 {:.1} ms, p99 {:.1} ms (the broker's share, for scale)",
                bare.at(0.5),
                bare.at(0.99)
            );
        }
    });
}
