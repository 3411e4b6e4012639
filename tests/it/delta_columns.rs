//! The `delta_lake` sink's `max_columns`: devices sending ever new field names cannot widen
//! the table without limit. A reading whose new field would grow the table beyond the bound
//! goes to `lake.errors` with a reason naming `max_columns` and is counted; the rest of its
//! request still lands.

use serde_json::{Value, json};

use crate::delta_lake::{read_table, start_with_sinks};
use crate::support::{lines, metric_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_field_beyond_max_columns_is_dead_lettered_and_the_rest_lands() {
    let dir = tempfile::tempdir().unwrap();
    // `device_id`, `time`, `received_at`, `id`, `temperature`: room for one more column.
    let sinks = "  lake:
    type: delta_lake
    inputs: [devices]
    uri: lake
    max_columns: 6
    buffer: { type: memory }
    batch: { timeout: 200ms }
  rejected: { type: file, inputs: [lake.errors], path: rejected.ndjson }
";
    let (weir, port, _, _) = start_with_sinks(dir.path(), "", sinks, &[]).await;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap();
    let post = |readings: Vec<Value>| {
        client
            .post(format!("http://127.0.0.1:{port}/v1/devices/d1/messages"))
            .json(&readings)
            .send()
    };
    let first = post(vec![
        json!({"id": 0, "temperature": 20.5}),
        json!({"id": 1, "temperature": 21.0, "humidity": 40.0}),
    ])
    .await
    .unwrap();
    assert!(first.status().is_success(), "{}", first.status());
    let second = post(vec![
        json!({"id": 2, "temperature": 21.5, "pressure": 1013.0}),
        json!({"id": 3, "temperature": 22.0, "humidity": 41.0}),
        json!({"id": 4, "temperature": 22.5}),
    ])
    .await
    .unwrap();
    assert!(second.status().is_success(), "{}", second.status());
    let metrics = weir.metrics().await;
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );

    let table = read_table(&dir.path().join("lake"), "none", &[]).await;
    assert_eq!(table.rows, 4, "every reading but the one with `pressure`");
    assert!(!table.ids.contains_key(&2));
    let columns: Vec<&str> = table.columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(columns.len(), 6, "{columns:?}");
    assert!(!columns.contains(&"pressure"), "{columns:?}");

    let rejected = lines(&dir.path().join("rejected.ndjson"));
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["id"], 2);
    let reason = rejected[0]["meta"]["error"]["message"].as_str().unwrap();
    assert!(
        reason.contains("`pressure`") && reason.contains("max_columns"),
        "{reason}"
    );
    let counted = metric_in(
        &metrics,
        "component_errors_total",
        &["component_id=\"lake\"", "error_type=\"encode_failed\""],
    );
    assert_eq!(counted, 1.0, "the rejected reading is counted");
}
