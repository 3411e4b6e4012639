//! The `redis` sink against the real Redis: each mode, TTL, `only_newer` with readings that
//! arrive late, refused writes going to `.errors`, TLS (mutual) and a Redis Cluster.
//!
//! Readings come in over the `http` source of a real weir process, whose 2xx means "every
//! sink committed it": so right after a 2xx the test may look into Redis.
//!
//! Every test holds a shared lease on the shared Redis (see `support::services`), also the
//! ones whose sink writes elsewhere: `Harness` cleans its keys there when dropped, and
//! `services::redis` installs redis-server for the cluster and TLS servers.

use std::time::Duration;

use redis::Commands as _;
use serde_json::{Value, json};

use crate::support::services::{Broker, Lease};
use crate::support::{self, Weir, free_port, lines, metric_in, services};

/// 2026-11-26T12:00:00Z in epoch milliseconds: readings' `ts` is this plus an offset.
const T0: i64 = 1_795_694_400_000;

/// Tests write into this database, under a prefix of their own.
const DB: u32 = 9;

struct Harness {
    dir: tempfile::TempDir,
    weir: Weir,
    base: String,
    client: reqwest::Client,
    prefix: String,
}

impl Harness {
    /// weir with `http` (event time from `ts`) → the `redis` sink configured by `options`
    /// (YAML lines under the sink, `{prefix}` replaced) and its errors → `dead.ndjson`.
    async fn start(name: &str, url: &str, options: &str) -> Harness {
        let prefix = format!("weir-test-{}-{name}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let (port, api) = (free_port(), free_port());
        let options = options.replace("{prefix}", &prefix);
        let text = format!(
            "api: {{ listen: '127.0.0.1:{api}' }}
data_dir: '{d}/data'
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}', event_time: ts }}
sinks:
  warm:
    type: redis
    inputs: [devices]
    url: '{url}'
{options}
  dead: {{ type: file, inputs: [warm.errors], path: '{d}/dead.ndjson' }}
",
            d = dir.path().display()
        );
        let path = dir.path().join("pipeline.yaml");
        std::fs::write(&path, text).unwrap();
        let weir = Weir::start(dir.path(), &path, ([127, 0, 0, 1], api).into()).await;
        Harness {
            dir,
            weir,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            prefix,
        }
    }

    /// Posts readings of one device; returns the HTTP status.
    async fn post(&self, device: &str, body: Value) -> u16 {
        self.client
            .post(format!("{}/v1/devices/{device}/messages", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    fn key(&self, device: &str) -> String {
        format!("{}:{device}", self.prefix)
    }

    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_in(&self.weir.metrics().await, name, labels)
    }

    /// The sink's metric `name`, polled until it reaches `target` (or 5 s passed).
    async fn metric_reaching(&self, name: &str, target: f64) -> f64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let value = self.metric(name, &[r#"component_id="warm""#]).await;
            if value >= target || std::time::Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn dead_letters(&self) -> Vec<Value> {
        lines(&self.dir.path().join("dead.ndjson"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Ok(mut redis) = connection(&format!("{}/{DB}", services::redis())) {
            clean(&mut redis, &self.prefix);
        }
    }
}

fn connection(url: &str) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(url)?.get_connection()
}

fn shared_redis() -> redis::Connection {
    connection(&format!("{}/{DB}", services::redis())).expect("connect to Redis")
}

fn clean(redis: &mut redis::Connection, prefix: &str) {
    let keys: Vec<String> = redis.keys(format!("{prefix}:*")).unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis.del(keys);
    }
}

fn shared_url() -> String {
    format!("{}/{DB}", services::redis())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_mode_merges_the_latest_fields_and_acks_after_redis_replied() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let h = Harness::start("hash", &shared_url(), "    key: '{prefix}:{{ device_id }}'").await;
    let mut redis = shared_redis();
    let status = h
        .post(
            "dev-1",
            json!({"ts": T0 + 1_000, "temperature": 21.5, "status": "ok", "tags": ["a", 1]}),
        )
        .await;
    assert_eq!(status, 200);
    // The 2xx came after Redis replied: the document is there now.
    let doc: std::collections::HashMap<String, String> = redis.hgetall(h.key("dev-1")).unwrap();
    assert_eq!(doc["device_id"], "dev-1");
    assert_eq!(doc["temperature"], "21.5");
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["tags"], r#"["a",1]"#);
    assert_eq!(doc["event_time_ms"], (T0 + 1000).to_string());
    assert_eq!(doc["event_time"], "2026-11-26T12:00:01Z");

    assert_eq!(
        h.post(
            "dev-1",
            json!({"ts": T0 + 2_000, "temperature": 22, "door": true})
        )
        .await,
        200
    );
    let doc: std::collections::HashMap<String, String> = redis.hgetall(h.key("dev-1")).unwrap();
    assert_eq!(
        doc["temperature"], "22",
        "the newer value replaced the field"
    );
    assert_eq!(
        doc["status"], "ok",
        "fields not sent again are kept (merge)"
    );
    assert_eq!(doc["door"], "true");
    assert_eq!(doc["event_time_ms"], (T0 + 2000).to_string());
    let ttl: i64 = redis.pttl(h.key("dev-1")).unwrap();
    assert_eq!(ttl, -1, "no ttl configured: the document does not expire");

    let sent = h
        .metric("component_sent_events_total", &[r#"component_id="warm""#])
        .await;
    assert_eq!(sent, 2.0);
    let batches = h
        .metric("sink_batch_events_count", &[r#"component_id="warm""#])
        .await;
    assert!(batches >= 2.0, "batch size histogram observed: {batches}");
    let bytes = h
        .metric("component_sent_bytes_total", &[r#"component_id="warm""#])
        .await;
    assert!(bytes > 50.0, "bytes written counted: {bytes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_sets_the_whole_document() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let h = Harness::start(
        "json",
        &shared_url(),
        "    key: '{prefix}:{{ device_id }}'\n    mode: json",
    )
    .await;
    let mut redis = shared_redis();
    assert_eq!(
        h.post(
            "dev-1",
            json!({"ts": T0 + 1_000, "temperature": 21.5, "status": "ok"})
        )
        .await,
        200
    );
    assert_eq!(
        h.post(
            "dev-1",
            json!({"ts": T0 + 2_000, "temperature": 22, "nested": {"a": [1, null]}})
        )
        .await,
        200
    );
    let text: String = redis.get(h.key("dev-1")).unwrap();
    assert!(
        text.starts_with(&format!(r#"{{"event_time_ms":{},"#, T0 + 2000)),
        "{text}"
    );
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        doc,
        json!({
            "event_time_ms": T0 + 2000,
            "event_time": "2026-11-26T12:00:02Z",
            "device_id": "dev-1",
            "ts": T0 + 2000,
            "temperature": 22,
            "nested": {"a": [1, null]},
        }),
        "the whole document was replaced (no `status` any more)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_mode_appends_every_reading_capped_near_maxlen() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let h = Harness::start(
        "stream",
        &shared_url(),
        "    key: '{prefix}:{{ device_id }}'\n    mode: stream\n    maxlen: 100",
    )
    .await;
    let mut redis = shared_redis();
    for round in 0..10 {
        let readings: Vec<Value> = (0..100)
            .map(|i| json!({"ts": T0 + round * 100 + i, "seq": round * 100 + i}))
            .collect();
        assert_eq!(h.post("dev-1", Value::Array(readings)).await, 200);
    }
    let len: usize = redis.xlen(h.key("dev-1")).unwrap();
    // MAXLEN ~ trims whole macro nodes (100 entries by default): about 100, never all 1000.
    assert!((100..=200).contains(&len), "stream length {len}");
    let last: redis::streams::StreamRangeReply =
        redis.xrevrange_count(h.key("dev-1"), "+", "-", 1).unwrap();
    let entry = &last.ids[0];
    assert_eq!(entry.get::<String>("seq").as_deref(), Some("999"));
    assert_eq!(entry.get::<String>("device_id").as_deref(), Some("dev-1"));
    assert_eq!(
        entry.get::<String>("event_time_ms").as_deref(),
        Some((T0 + 999).to_string().as_str())
    );
    let sent = h
        .metric("component_sent_events_total", &[r#"component_id="warm""#])
        .await;
    assert_eq!(sent, 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expires_documents_in_every_mode() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    for mode in ["hash", "json", "stream"] {
        let h = Harness::start(
            &format!("ttl-{mode}"),
            &shared_url(),
            &format!(
                "    key: '{{prefix}}:{{{{ device_id }}}}'\n    mode: {mode}\n    ttl: 1500ms"
            ),
        )
        .await;
        let mut redis = shared_redis();
        assert_eq!(h.post("dev-1", json!({"ts": T0 + 1, "v": 1})).await, 200);
        let ttl: i64 = redis.pttl(h.key("dev-1")).unwrap();
        assert!((1..=1500).contains(&ttl), "{mode}: pttl {ttl}");
        tokio::time::sleep(Duration::from_millis(1800)).await;
        let exists: bool = redis.exists(h.key("dev-1")).unwrap();
        assert!(!exists, "{mode}: the document expired");
    }
}

/// Readings of one device arrive out of order: the document keeps the newest.
async fn only_newer_keeps_the_newest(
    mode: &str,
    read: impl Fn(&mut redis::Connection, &str) -> (i64, i64),
) {
    let h = Harness::start(
        &format!("newer-{mode}"),
        &shared_url(),
        &format!(
            "    key: '{{prefix}}:{{{{ device_id }}}}'\n    mode: {mode}\n    only_newer: true\n    ttl: 1h"
        ),
    )
    .await;
    let mut redis = shared_redis();
    let key = h.key("dev-1");
    assert_eq!(
        h.post("dev-1", json!({"ts": T0 + 2_000, "temperature": 20}))
            .await,
        200
    );
    assert_eq!(read(&mut redis, &key), (T0 + 2_000, 20));
    // Late: older than what is stored.
    assert_eq!(
        h.post("dev-1", json!({"ts": T0 + 1_000, "temperature": 10}))
            .await,
        200
    );
    assert_eq!(
        read(&mut redis, &key),
        (T0 + 2_000, 20),
        "{mode}: a late reading did not overwrite"
    );
    // Out of order inside one request (one pipeline): the newest wins whatever the order.
    let batch = json!([
        {"ts": T0 + 5_000, "temperature": 50},
        {"ts": T0 + 3_000, "temperature": 30},
        {"ts": T0 + 4_000, "temperature": 40},
    ]);
    assert_eq!(h.post("dev-1", batch).await, 200);
    assert_eq!(read(&mut redis, &key), (T0 + 5_000, 50), "{mode}");
    let ttl: i64 = redis.pttl(&key).unwrap();
    assert!(ttl > 3_000_000, "{mode}: the script sets the ttl ({ttl})");
    let skipped = h
        .metric(
            "component_discarded_events_total",
            &[r#"component_id="warm""#, r#"intentional="true""#],
        )
        .await;
    assert_eq!(skipped, 3.0, "{mode}: the three late readings are counted");
    let sent = h
        .metric("component_sent_events_total", &[r#"component_id="warm""#])
        .await;
    assert_eq!(sent, 2.0, "{mode}");
    // The script cache is emptied (as by a Redis restart): the sink loads the scripts again.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut redis).unwrap();
    assert_eq!(
        h.post("dev-1", json!({"ts": T0 + 6_000, "temperature": 60}))
            .await,
        200
    );
    assert_eq!(read(&mut redis, &key), (T0 + 6_000, 60), "{mode}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_newer_keeps_a_hash_from_late_readings() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    only_newer_keeps_the_newest("hash", |redis, key| {
        let (time, temperature): (i64, i64) =
            redis.hmget(key, &["event_time_ms", "temperature"]).unwrap();
        (time, temperature)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_newer_keeps_a_json_document_from_late_readings() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    only_newer_keeps_the_newest("json", |redis, key| {
        let text: String = redis.get(key).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        (
            doc["event_time_ms"].as_i64().unwrap(),
            doc["temperature"].as_i64().unwrap(),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_dead_letters_only_its_event() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let h = Harness::start(
        "wrongtype",
        &shared_url(),
        "    key: '{prefix}:{{ device_id }}'",
    )
    .await;
    let mut redis = shared_redis();
    // A key of another type: HSET on it fails with WRONGTYPE.
    let _: () = redis.set(h.key("taken"), "a string").unwrap();
    let (taken, good) = tokio::join!(
        h.post(
            "taken",
            json!([{"ts": T0 + 1, "v": 1}, {"ts": T0 + 2, "v": 2}])
        ),
        h.post("good", json!({"ts": T0 + 1, "v": 1})),
    );
    assert_eq!(
        (taken, good),
        (200, 200),
        "dead-lettered events are handled"
    );
    let v: String = redis.hget(h.key("good"), "v").unwrap();
    assert_eq!(v, "1");
    let still: String = redis.get(h.key("taken")).unwrap();
    assert_eq!(still, "a string");
    assert!(
        support::eventually(Duration::from_secs(5), || h.dead_letters().len() == 2).await,
        "both readings of the refused key are dead letters: {:?}",
        h.dead_letters()
    );
    for dead in h.dead_letters() {
        assert_eq!(dead["device_id"], "taken");
        let error = &dead["meta"]["error"];
        assert_eq!(error["component"], "warm");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("WRONGTYPE"), "{message}");
    }
    let errors = h
        .metric(
            "component_errors_total",
            &[r#"component_id="warm""#, r#"stage="sending""#],
        )
        .await;
    assert_eq!(errors, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_template_that_fails_dead_letters_the_event() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let h = Harness::start(
        "badkey",
        &shared_url(),
        "    key: \"{prefix}:{{ site | default('') }}{{ 1 / divisor if divisor is defined else '' }}\"",
    )
    .await;
    assert_eq!(
        h.post("dev-1", json!({"ts": T0 + 1, "divisor": 0})).await,
        200
    );
    assert!(
        support::eventually(Duration::from_secs(5), || h.dead_letters().len() == 1).await,
        "{:?}",
        h.dead_letters()
    );
    let message = h.dead_letters()[0]["meta"]["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.starts_with("key template"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_mutual_tls() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    services::redis();
    let certs = tempfile::tempdir().unwrap();
    let pki = support::pki::generate(certs.path());
    // A TLS endpoint (test CA's server certificate, client certificate required) in front
    // of the shared Redis.
    let port = support::pki::tls_proxy(&pki, true, 6379).await;
    let options = format!(
        "    key: '{{prefix}}:{{{{ device_id }}}}'\n    tls: {{ ca_file: '{}', cert_file: '{}', key_file: '{}' }}",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let h = Harness::start("tls", &format!("rediss://localhost:{port}/{DB}"), &options).await;
    assert_eq!(h.post("dev-1", json!({"ts": T0 + 1, "v": 7})).await, 200);
    let v: String = shared_redis().hget(h.key("dev-1"), "v").unwrap();
    assert_eq!(v, "7");
}

/// Starts a daemonized redis-server of a test's own (no persistence, files in `dir`) with
/// `args` on top.
fn start_redis_server(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("redis-server")
        .args(args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "yes", "--dir"])
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("log"))
        .status()
        .expect("run redis-server");
    assert!(status.success(), "redis-server {args:?} did not start");
}

/// Three Redis Cluster nodes on free ports, stopped when dropped.
struct Cluster {
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        services::redis(); // makes sure redis-server is installed
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Vec::new();
        while ports.len() < 3 {
            // The cluster bus listens on port + 10000: claimed too, so that no other test is
            // handed it.
            let port = free_port();
            if port < 50000
                && support::claim_port(port + 10000)
                && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
            {
                ports.push(port);
            }
        }
        let cluster = Cluster { ports, dir };
        for port in &cluster.ports {
            let node_dir = cluster.dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let port = port.to_string();
            start_redis_server(&node_dir, &["--port", &port, "--cluster-enabled", "yes"]);
        }
        for port in &cluster.ports {
            let up = (0..100).any(|_| {
                std::thread::sleep(Duration::from_millis(100));
                connection(&format!("redis://127.0.0.1:{port}")).is_ok()
            });
            assert!(up, "cluster node {port} did not start");
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let output = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let ok = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            cluster.ports.iter().all(|port| {
                connection(&format!("redis://127.0.0.1:{port}"))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
        });
        assert!(ok, "the cluster did not reach cluster_state:ok");
        cluster
    }

    fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for port in &self.ports {
            let _ = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "shutdown", "nosave"])
                .output();
        }
    }
}

fn keys_on(cluster: &Cluster, prefix: &str) -> usize {
    cluster
        .ports
        .iter()
        .map(|port| {
            let mut c = connection(&format!("redis://127.0.0.1:{port}")).unwrap();
            let keys: Vec<String> = c.keys(format!("{prefix}:*")).unwrap();
            keys.len()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_redis_cluster_across_slots() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let cluster = Cluster::start();
    let h = Harness::start(
        "cluster",
        &cluster.urls(),
        "    key: '{prefix}:{{ device_id }}'\n    cluster: true\n    ttl: 1h\n    only_newer: true",
    )
    .await;
    // 200 devices spread over the three nodes, posted 20 at a time.
    for chunk in (0..200).collect::<Vec<_>>().chunks(20) {
        let devices: Vec<String> = chunk.iter().map(|i| format!("dev-{i}")).collect();
        let posts = devices
            .iter()
            .zip(chunk)
            .map(|(device, i)| h.post(device, json!({"ts": T0 + 1, "seq": i})));
        for status in futures::future::join_all(posts).await {
            assert_eq!(status, 200);
        }
    }
    assert_eq!(keys_on(&cluster, &h.prefix), 200);
    for port in &cluster.ports {
        let mut c = connection(&format!("redis://127.0.0.1:{port}")).unwrap();
        let keys: Vec<String> = c.keys(format!("{}:*", h.prefix)).unwrap();
        assert!(!keys.is_empty(), "node {port} holds some of the documents");
        let seq: String = c.hget(&keys[0], "seq").unwrap();
        assert_eq!(keys[0], h.key(&format!("dev-{seq}")));
        // A late reading for that device: the script (loaded on every node) keeps the
        // stored one.
        let device = format!("dev-{seq}");
        assert_eq!(h.post(&device, json!({"ts": T0, "seq": -1})).await, 200);
        let after: String = c.hget(&keys[0], "seq").unwrap();
        assert_eq!(after, seq);
    }
    let skipped = h
        .metric(
            "component_discarded_events_total",
            &[r#"component_id="warm""#, r#"intentional="true""#],
        )
        .await;
    assert_eq!(skipped, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_newest_while_redis_is_unreachable() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    // Nothing listens there: the sink keeps trying to connect, with backoff.
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let h = Harness::start(
        "unreachable",
        &url,
        "    key: '{prefix}:{{ device_id }}'
    buffer: { max_events: 10, when_full: drop_newest }
    retry: { initial_backoff: 50ms, max_backoff: 200ms }",
    )
    .await;
    let base = h.base.clone();
    // The kept readings are never committed: their requests wait, so do not await them.
    let posts: Vec<_> = (0..5)
        .map(|i| {
            let url = format!("{base}/v1/devices/dev-{i}/messages");
            let body: Vec<Value> = (0..10).map(|n| json!({"ts": T0 + n, "n": n})).collect();
            tokio::spawn(async move { reqwest::Client::new().post(url).json(&body).send().await })
        })
        .collect();
    let discarded = h
        .metric_reaching("buffer_discarded_events_total", 40.0)
        .await;
    assert_eq!(discarded, 40.0, "10 readings held, the other 40 dropped");
    let retries = h.metric_reaching("sink_retries_total", 3.0).await;
    assert!(retries >= 3.0, "the sink keeps reconnecting: {retries}");
    let sent = h
        .metric("component_sent_events_total", &[r#"component_id="warm""#])
        .await;
    assert_eq!(sent, 0.0);
    for post in posts {
        post.abort();
    }
}

/// A redis-server of its own listening only on a TLS port, requiring client certificates;
/// shut down when dropped.
struct TlsRedis {
    port: u16,
    pki: support::pki::Pki,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        services::redis(); // makes sure redis-server is installed
        let dir = tempfile::tempdir().unwrap();
        let pki = support::pki::generate(dir.path());
        let port = free_port();
        let path = |p: &std::path::Path| p.display().to_string();
        let (cert, key, ca) = (path(&pki.server_cert), path(&pki.server_key), path(&pki.ca));
        start_redis_server(
            dir.path(),
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "yes",
            ],
        );
        let server = TlsRedis {
            port,
            pki,
            _dir: dir,
        };
        let up = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            server.cli(&["ping"]) == "PONG"
        });
        assert!(up, "the TLS redis-server did not answer");
        server
    }

    /// `redis-cli` over TLS with the test client certificate.
    fn cli(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["--tls", "-h", "localhost", "-p", &self.port.to_string()])
            .arg("--cacert")
            .arg(&self.pki.ca)
            .arg("--cert")
            .arg(&self.pki.client_cert)
            .arg("--key")
            .arg(&self.pki.client_key)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.cli(&["shutdown", "nosave"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_redis_server_listening_on_tls() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let server = TlsRedis::start();
    let options = format!(
        "    key: '{{prefix}}:{{{{ device_id }}}}'\n    mode: json\n    tls: {{ ca_file: '{}', cert_file: '{}', key_file: '{}' }}",
        server.pki.ca.display(),
        server.pki.client_cert.display(),
        server.pki.client_key.display()
    );
    let h = Harness::start(
        "tls-server",
        &format!("rediss://localhost:{}/0", server.port),
        &options,
    )
    .await;
    assert_eq!(h.post("dev-1", json!({"ts": T0 + 1, "v": 7})).await, 200);
    let text = server.cli(&["get", &h.key("dev-1")]);
    let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(doc["v"], 7, "{text}");
}
