//! The README's first command: the quickstart runs, counts events and fills its files.

use std::path::Path;
use std::time::Duration;

use crate::support::{Weir, eventually, lines, metric_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_runs_counts_and_fills_the_file_sink() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/quickstart.yaml");
    let weir = Weir::start(dir.path(), &pipeline, "127.0.0.1:8686".parse().unwrap()).await;

    let readings = dir.path().join(".weir/quickstart/readings.ndjson");
    assert!(
        eventually(Duration::from_secs(10), || lines(&readings).len() >= 200).await,
        "the file sink fills"
    );
    let metrics = weir.metrics().await;
    let received = metric_in(
        &metrics,
        "component_received_events_total",
        &[r#"component_id="fleet""#],
    );
    let written = metric_in(
        &metrics,
        "component_sent_events_total",
        &[r#"component_id="readings""#],
    );
    assert!(
        received >= 200.0,
        "/metrics counts the fleet's readings ({received})"
    );
    assert!(
        written > 0.0,
        "/metrics counts the file sink's writes ({written})"
    );

    let status = tokio::task::spawn_blocking(move || weir.terminate())
        .await
        .unwrap();
    assert!(
        status.success(),
        "quickstart exits cleanly on SIGTERM: {status}"
    );
    let sample = &lines(&readings)[0];
    for field in [
        "device_id",
        "temperature",
        "temperature_f",
        "vibration",
        "site",
        "ts",
    ] {
        assert!(
            sample.get(field).is_some(),
            "readings carry `{field}`: {sample}"
        );
    }

    // The cold path: SIGTERM committed what the Delta sink held.
    let lake = url::Url::from_directory_path(dir.path().join(".weir/quickstart/lake")).unwrap();
    let table = deltalake::open_table(lake)
        .await
        .expect("the quickstart's Delta table");
    let rows: i64 = table
        .snapshot()
        .unwrap()
        .add_actions_table(true)
        .ok()
        .and_then(|actions| {
            let column = actions.column_by_name("num_records")?;
            let column = column
                .as_any()
                .downcast_ref::<deltalake::arrow::array::Int64Array>()?;
            Some(column.iter().flatten().sum())
        })
        .unwrap_or(0);
    assert!(
        rows >= 200,
        "the Delta table holds the raw readings ({rows})"
    );
}
