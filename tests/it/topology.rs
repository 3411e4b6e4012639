//! The event graph: fan-out, fan-in, named outputs, backpressure and drain.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::{lines, metric, pipeline};

fn api_off() -> &'static str {
    "api: { enabled: false }\n"
}

/// Runs a topology whose sources all end by themselves, until it has drained.
async fn run_to_completion(text: &str) -> std::sync::Arc<Telemetry> {
    let config = pipeline(text);
    let telemetry = Telemetry::new();
    let mut topology = RunningTopology::start(&config, &telemetry).expect("topology starts");
    let failures = tokio::time::timeout(Duration::from_secs(60), topology.wait())
        .await
        .expect("topology drains");
    assert!(failures.is_empty(), "components failed: {failures:?}");
    telemetry
}

fn keys(events: &[serde_json::Value]) -> BTreeSet<(String, i64)> {
    events
        .iter()
        .map(|e| {
            (
                e["device_id"].as_str().unwrap().to_owned(),
                e["ts"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_delivers_every_event_to_every_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let telemetry = run_to_completion(&format!(
        "{}sources:
  fleet: {{ type: simulator, devices: 7, rate: 1000, realtime: false, limit: 5000, start_time: '2026-01-01T00:00:00Z' }}
transforms:
  copy: {{ type: remap, inputs: [fleet], set: {{ copied: 'true' }} }}
sinks:
  a: {{ type: file, inputs: [fleet], path: '{d}/a.ndjson' }}
  b: {{ type: file, inputs: [fleet], path: '{d}/b.ndjson' }}
  c: {{ type: file, inputs: [copy], path: '{d}/c.ndjson' }}
",
        api_off()
    ))
    .await;
    let a = lines(&dir.path().join("a.ndjson"));
    let b = lines(&dir.path().join("b.ndjson"));
    let c = lines(&dir.path().join("c.ndjson"));
    assert_eq!(a.len(), 5000);
    assert_eq!(keys(&a).len(), 5000, "every reading is distinct");
    assert!(
        keys(&a) == keys(&b) && keys(&a) == keys(&c),
        "every consumer saw the same readings"
    );
    assert!(c.iter().all(|e| e["copied"] == true));
    // The transform changed its copy only: fan-out shares, it does not alias.
    assert!(a.iter().all(|e| e.get("copied").is_none()));
    assert_eq!(
        metric(
            &telemetry,
            "component_sent_events_total",
            &[r#"component_id="fleet""#, r#"output="default""#]
        ),
        5000.0
    );
    assert_eq!(
        metric(&telemetry, "component_discarded_events_total", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_merges_sources_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    run_to_completion(&format!(
        "{}sources:
  north: {{ type: simulator, device_prefix: n-, devices: 3, rate: 1000, realtime: false, limit: 1500 }}
  south: {{ type: simulator, device_prefix: s-, devices: 4, rate: 1000, realtime: false, limit: 2500 }}
transforms:
  split:
    type: route
    inputs: [north, south]
    routes:
      north: \"device_id is startingwith('n-')\"
sinks:
  merged: {{ type: file, inputs: ['*'], path: '{d}/merged.ndjson' }}
  joined: {{ type: file, inputs: [split.north, split._unmatched], path: '{d}/joined.ndjson' }}
",
        api_off()
    ))
    .await;
    let merged = lines(&dir.path().join("merged.ndjson"));
    assert_eq!(merged.len(), 4000, "the glob `*` reads both sources");
    let by_source = |prefix: &str| {
        merged
            .iter()
            .filter(|e| e["device_id"].as_str().unwrap().starts_with(prefix))
            .count()
    };
    assert_eq!((by_source("n-"), by_source("s-")), (1500, 2500));
    let joined = lines(&dir.path().join("joined.ndjson"));
    assert_eq!(joined.len(), 4000);
    assert!(
        keys(&joined) == keys(&merged),
        "two named outputs fan back in to one sink"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_slows_the_source_and_nothing_is_dropped() {
    const TOTAL: u64 = 30_000;
    const SINK_RATE: f64 = 10_000.0;
    let config = pipeline(&format!(
        "{}channel_max_events: 1000
sources:
  fleet: {{ type: simulator, devices: 10, rate: 100000, realtime: false, limit: {TOTAL}, batch_size: 100 }}
transforms:
  pass: {{ type: filter, inputs: [fleet], condition: 'true' }}
sinks:
  slow: {{ type: blackhole, inputs: [pass], rate: {SINK_RATE} }}
",
        api_off()
    ));
    let telemetry = Telemetry::new();
    let started = Instant::now();
    let mut topology = RunningTopology::start(&config, &telemetry).unwrap();

    // Two hops of channels bounded in events (`channel_max_events`) plus a batch in each
    // task's hands.
    let bound = 2.0 * 1000.0 + 3.0 * 100.0;
    let mut widest_gap: f64 = 0.0;
    let mut sampler = tokio::time::interval(Duration::from_millis(25));
    let wait = topology.wait();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            failures = &mut wait => {
                assert!(failures.is_empty(), "{failures:?}");
                break;
            }
            _ = sampler.tick() => {
                let produced = metric(&telemetry, "component_sent_events_total", &[r#"component_id="fleet""#, r#"output="default""#]);
                let consumed = metric(&telemetry, "component_sent_events_total", &[r#"component_id="slow""#]);
                widest_gap = widest_gap.max(produced - consumed);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let consumed = metric(
        &telemetry,
        "component_sent_events_total",
        &[r#"component_id="slow""#],
    );
    assert_eq!(consumed, TOTAL as f64, "every event reached the sink");
    assert_eq!(
        metric(&telemetry, "component_discarded_events_total", &[]),
        0.0
    );
    assert!(
        widest_gap <= bound,
        "the source ran {widest_gap} events ahead of the sink (bound {bound})"
    );
    let floor = (TOTAL as f64) / SINK_RATE * 0.9;
    assert!(
        elapsed >= floor,
        "finished in {elapsed:.2}s, faster than the sink allows ({floor:.2}s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_events_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let config = pipeline(&format!(
        "{}sources:
  fleet: {{ type: simulator, devices: 5, rate: 20000 }}
sinks:
  out: {{ type: file, inputs: [fleet], path: '{}/out.ndjson' }}
",
        api_off(),
        dir.path().display()
    ));
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&config, &telemetry).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = topology.stop(Duration::from_secs(10)).await;
    assert!(failures.is_empty(), "{failures:?}");
    let produced = metric(
        &telemetry,
        "component_sent_events_total",
        &[r#"component_id="fleet""#, r#"output="default""#],
    );
    assert!(produced > 0.0);
    assert_eq!(
        lines(&dir.path().join("out.ndjson")).len() as f64,
        produced,
        "every produced event was written before exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_an_unread_error_output_are_counted_not_lost_silently() {
    let telemetry = run_to_completion(&format!(
        "{}sources:
  fleet: {{ type: simulator, devices: 2, rate: 1000, realtime: false, limit: 10 }}
transforms:
  broken: {{ type: decode, inputs: [fleet], codec: json, field: missing }}
sinks:
  out: {{ type: blackhole, inputs: [broken] }}
",
        api_off()
    ))
    .await;
    assert_eq!(
        metric(
            &telemetry,
            "component_errors_total",
            &[r#"component_id="broken""#]
        ),
        10.0
    );
    assert_eq!(
        metric(
            &telemetry,
            "component_discarded_events_total",
            &[r#"component_id="broken""#, r#"intentional="false""#]
        ),
        10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_sink_rotates_by_size_and_keeps_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    run_to_completion(&format!(
        "{}sources:
  fleet: {{ type: simulator, devices: 3, rate: 1000, realtime: false, limit: 3000, batch_size: 50 }}
sinks:
  out: {{ type: file, inputs: [fleet], path: '{d}/out.ndjson', rotate_bytes: 64KiB }}
",
        api_off()
    ))
    .await;
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "rotated into several files: {files:?}");
    let mut total = 0;
    for file in &files {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(
            size <= 64 * 1024,
            "{} is {size} bytes, over rotate_bytes",
            file.display()
        );
        total += lines(file).len();
    }
    assert_eq!(total, 3000, "no line lost across rotations");
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "1")),
        "{files:?}"
    );
}
