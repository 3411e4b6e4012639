//! The dead letters of a disk-buffered `delta_lake` sink (readings that do not fit the
//! table, sent to `lake.errors`) keep the promise its rows keep: a crash after the commit
//! of their chunk's rows does not lose them, nor does a failure downstream of `errors`; a
//! window the sink gives up does not send them twice; and with `errors` wired to nothing
//! they are counted, not redelivered for ever.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use redis::Commands as _;
use serde_json::{Value, json};

use crate::delta_lake::start_with_sinks;
use crate::support::mounts::ReadOnly;
use crate::support::services::{self, Broker, Lease};
use crate::support::{Weir, delta, eventually, lines, metric_in};

/// The sink under test: a table of `id` and `temperature` only, so a reading with any
/// other field is a dead letter. `options`: more of its settings.
fn lake(options: &str) -> String {
    format!(
        "  lake:
    type: delta_lake
    inputs: [devices]
    uri: lake
    evolve_schema: false
    schema: {{ id: double, temperature: double }}
    {options}
"
    )
}

fn fits(id: u64) -> Value {
    json!({ "id": id, "temperature": 20.5 })
}

fn misfit(id: u64) -> Value {
    json!({ "id": id, "temperature": 20.5, "pressure": 1013.0 })
}

async fn post(port: u16, readings: &[Value]) -> bool {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/devices/d1/messages"))
        .timeout(Duration::from_secs(10))
        .json(readings)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The ids in the local table at `dir` (empty while it does not exist).
async fn table_ids(dir: &Path) -> BTreeMap<u64, usize> {
    let url = url::Url::from_directory_path(dir).unwrap();
    delta::ids(&url, &HashMap::new()).await
}

async fn terminate(weir: Weir) {
    let status = tokio::task::spawn_blocking(move || weir.terminate())
        .await
        .unwrap();
    assert!(status.success(), "weir exits cleanly: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_commit_loses_no_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    // The dead letters go to a table of their own that commits only at shutdown: what it
    // holds in memory when weir dies is lost, as anything not yet committed downstream.
    let sinks = lake("batch: { max_events: 4, timeout: 1h }")
        + "  rejected: { type: delta_lake, inputs: [lake.errors], uri: rejected, buffer: { type: memory }, batch: { timeout: 1h } }\n";
    let (weir, port, pipeline, api) = start_with_sinks(
        dir.path(),
        "",
        &sinks,
        &[("WEIR_CRASH_AT", "delta_lake.after_commit")],
    )
    .await;
    // Four rows (one commit, then the crash point) and one dead letter, in one chunk.
    let readings = [fits(0), fits(1), misfit(2), fits(3), fits(4)];
    // Answered once durable in the buffer, or not at all if the crash came first.
    post(port, &readings).await;
    weir.wait_for_crash().await;
    assert_eq!(
        table_ids(&dir.path().join("lake")).await.len(),
        4,
        "the crash came after the commit"
    );

    // The buffer hands the chunk out again; the table holds its rows, but not the dead
    // letter, which must go to `errors` again.
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    terminate(weir).await;
    let lake = table_ids(&dir.path().join("lake")).await;
    assert_eq!(
        lake,
        [(0, 1), (1, 1), (3, 1), (4, 1)].into_iter().collect(),
        "the rows once"
    );
    let rejected = table_ids(&dir.path().join("rejected")).await;
    assert_eq!(
        rejected,
        [(2, 1)].into_iter().collect(),
        "the dead letter reached `errors` after the crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_refused_downstream_is_sent_again_until_it_lands() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/9", services::redis());
    let prefix = format!("weir-test-{}-delta-dead-letters", std::process::id());
    let key = format!("{prefix}:d1");
    let mut redis = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect to Redis");
    // A key of another type: the dead letter's HSET fails with WRONGTYPE, and with
    // `rejected.errors` wired to nothing its delivery fails, so the chunk comes back.
    let _: () = redis.set(&key, "taken").unwrap();
    let sinks = lake("batch: { timeout: 200ms }")
        + &format!(
            "  rejected: {{ type: redis, inputs: [lake.errors], url: '{url}', key: '{prefix}:{{{{ device_id }}}}' }}\n"
        );
    let (weir, port, _, _) = start_with_sinks(dir.path(), "", &sinks, &[]).await;
    assert!(post(port, &[fits(0), misfit(1)]).await);
    let table = dir.path().join("lake");
    let landed = async {
        while table_ids(&table).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), landed)
        .await
        .expect("the row lands");
    // Refused a few times; then the key is free.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _: () = redis.del(&key).unwrap();
    let arrived = eventually(Duration::from_secs(30), || {
        redis
            .hget::<_, _, Option<String>>(&key, "id")
            .ok()
            .flatten()
            == Some("1".to_owned())
    })
    .await;
    terminate(weir).await;
    let _: redis::RedisResult<()> = redis.del(&key);
    assert!(arrived, "the dead letter reached Redis once it could");
    assert_eq!(table_ids(&table).await, [(0, 1)].into_iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_given_up_while_the_table_is_read_only_sends_its_dead_letters_once() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = lake("batch: { timeout: 300ms }\n    retry: { max_backoff: 1s }")
        + "  rejected: { type: file, inputs: [lake.errors], path: rejected.ndjson }\n";
    let (weir, port, _, _) = start_with_sinks(dir.path(), "", &sinks, &[]).await;
    let table = dir.path().join("lake");
    assert!(post(port, &[fits(0), fits(1)]).await);
    assert!(
        eventually(Duration::from_secs(20), || table
            .join("_delta_log")
            .is_dir())
        .await,
        "the table exists"
    );

    // Every commit fails while the table is read-only: the sink gives its window up, and
    // the buffer hands the chunk out again, again and again.
    let read_only = ReadOnly::mount(&table);
    assert!(post(port, &[fits(10), misfit(11)]).await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = lines(&dir.path().join("rejected.ndjson")).len();
    read_only.release();

    let landed = async {
        while !table_ids(&table).await.contains_key(&10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), landed)
        .await
        .expect("the row lands once the table is writable again");
    let metrics = weir.metrics().await;
    terminate(weir).await;
    let retried = metric_in(&metrics, "sink_retries_total", &["component_id=\"lake\""]);
    assert!(
        retried >= 2.0,
        "commits failed and were retried ({retried})"
    );
    let rejected = lines(&dir.path().join("rejected.ndjson"));
    let ids: Vec<u64> = rejected.iter().filter_map(|r| r["id"].as_u64()).collect();
    assert_eq!(
        ids,
        vec![11],
        "one dead letter, however often its chunk came back ({during} during the outage)"
    );
    let table = table_ids(&table).await;
    assert_eq!(table, [(0, 1), (1, 1), (10, 1)].into_iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_with_errors_wired_to_nothing_are_counted_and_do_not_hold_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let (weir, port, _, _) =
        start_with_sinks(dir.path(), "", &lake("batch: { timeout: 200ms }"), &[]).await;
    assert!(post(port, &[fits(0), misfit(1), fits(2)]).await);
    assert!(post(port, &[fits(3)]).await);
    let table = dir.path().join("lake");
    let landed = async {
        while table_ids(&table).await.len() < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), landed)
        .await
        .expect("the rows land");
    // The buffer lets go of the chunk: its dead letter does not bring it back for ever.
    let mut drained = false;
    for _ in 0..100 {
        let metrics = weir.metrics().await;
        let pending = metric_in(
            &metrics,
            "buffer_events",
            &["component_id=\"lake\"", "buffer_type=\"disk\""],
        );
        let discarded = metric_in(
            &metrics,
            "component_discarded_events_total",
            &["component_id=\"lake\""],
        );
        if pending == 0.0 && discarded >= 1.0 {
            assert_eq!(discarded, 1.0, "the dead letter is counted once");
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained, "the buffer was acknowledged and the drop counted");
    terminate(weir).await;
    assert_eq!(
        table_ids(&table).await,
        [(0, 1), (2, 1), (3, 1)].into_iter().collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_holding_many_dead_letters_commits_early() {
    let dir = tempfile::tempdir().unwrap();
    // A commit an hour away, unless the window holds 4 rows, or 4 dead letters.
    let sinks = lake("batch: { max_events: 4, timeout: 1h }")
        + "  rejected: { type: file, inputs: [lake.errors], path: rejected.ndjson }\n";
    let (weir, port, _, _) = start_with_sinks(dir.path(), "", &sinks, &[]).await;
    let readings = [fits(0), misfit(1), misfit(2), misfit(3), misfit(4)];
    assert!(post(port, &readings).await);
    let rejected = dir.path().join("rejected.ndjson");
    let sent = eventually(Duration::from_secs(20), || lines(&rejected).len() == 4).await;
    let table = table_ids(&dir.path().join("lake")).await;
    terminate(weir).await;
    assert!(sent, "the dead letters went out with an early commit");
    assert_eq!(table, [(0, 1)].into_iter().collect(), "committed with them");
}
