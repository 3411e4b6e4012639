//! Reload latency: `cargo bench --bench reload`.
//!
//! A 50-component topology (a simulator feeding 16 filter → remap pairs into 16 blackholes
//! and one file sink) runs with events flowing; each round changes one filter's condition
//! in the file and measures from "reload requested" to "new topology running": reading
//! and validating the files plus rebuilding and rewiring. Target (issue 7): <= 50 ms.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

fn pipeline(dir: &Path, round: usize) -> String {
    let mut text = String::from(
        "api: { enabled: false }\nsources:\n  fleet: { type: simulator, devices: 100, rate: 20000 }\ntransforms:\n",
    );
    for i in 0..16 {
        let threshold = if i == 0 { 100 + round } else { 100 };
        let _ = writeln!(
            text,
            "  filter_{i}: {{ type: filter, inputs: [fleet], condition: 'temperature < {threshold}' }}"
        );
        let _ = writeln!(
            text,
            "  remap_{i}: {{ type: remap, inputs: [filter_{i}], set: {{ branch: '{i}' }} }}"
        );
    }
    text.push_str("sinks:\n");
    for i in 0..16 {
        let _ = writeln!(
            text,
            "  hole_{i}: {{ type: blackhole, inputs: [remap_{i}] }}"
        );
    }
    let _ = writeln!(
        text,
        "  archive: {{ type: file, inputs: [remap_0], path: '{}/archive.ndjson' }}",
        dir.display()
    );
    text
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pipeline.yaml");
        std::fs::write(&file, pipeline(dir.path(), 0)).expect("write");
        let (config, _) = weir::config::load(&weir::CATALOGUE, std::slice::from_ref(&file))
            .expect("valid pipeline");
        println!(
            "reload latency: {} components, one changes per reload",
            config.components.len()
        );
        let telemetry = Telemetry::new();
        let mut topology = RunningTopology::start(&config, &telemetry).expect("start");
        tokio::time::sleep(Duration::from_millis(500)).await;

        let mut latencies = Vec::new();
        for round in 1..=30 {
            std::fs::write(&file, pipeline(dir.path(), round)).expect("write");
            let started = Instant::now();
            let (config, _) = weir::config::load(&weir::CATALOGUE, std::slice::from_ref(&file))
                .expect("valid pipeline");
            let diff = topology.reload(config).await.expect("reload");
            latencies.push(started.elapsed());
            assert_eq!(diff.changed.len(), 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        latencies.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (p50, p99, max) = (
            latencies[latencies.len() / 2],
            latencies[latencies.len() * 99 / 100],
            latencies[latencies.len() - 1],
        );
        println!(
            "  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} reloads",
            ms(p50),
            ms(p99),
            ms(max),
            latencies.len()
        );
        println!(
            "  target <= 50 ms: {}",
            if max <= Duration::from_millis(50) {
                "PASS"
            } else {
                "MISS"
            }
        );
        let _ = topology.stop(Duration::from_secs(10)).await;
    });
}
