//! Running one test through the real topology.
//!
//! The pipeline's transforms and aggregators run as `weir run` runs them
//! ([`RunningTopology`]: the same build, channels, wiring and drain); only its edges are
//! replaced. Its sources, sinks and actions do not run: an [`Inserted`] source per
//! `insert_at` component sends the test's events into that component's input, and a
//! [`TakenSink`] per output under test records what reaches it. Once the inserted events are sent the
//! sources end, the graph drains as at shutdown, and the aggregators close their open
//! windows ([`EndOfInput::CloseWindows`]): the test's input is all there will be.
//!
//! Each test runs in a fresh temporary `data_dir` (alarm state, window checkpoints, the
//! registry), so tests cannot see each other's state or the daemon's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::events::InputEvent;
use super::suite::PlannedTest;
use crate::config::aggregator::EndOfInput;
use crate::config::sink::{SinkComponent, SinkContext};
use crate::config::source::{SourceComponent, SourceContext};
use crate::config::{
    Component, ComponentConfig, ComponentId, ComponentKind, OutputRef, SectionOptions,
    ServiceConfigs, TopologyConfig,
};
use crate::event::{Event, EventBatch};
use crate::registry::{DeviceSpec, Registry, RegistryConfig};
use crate::telemetry::Telemetry;
use crate::topology::{ComponentTask, RunningTopology};

/// What reached each output under test, in arrival order.
pub type Taken = BTreeMap<OutputRef, Vec<Event>>;

/// How a test's run ended, before its assertions.
pub enum Run {
    /// The graph drained: what reached the outputs under test.
    Drained(Taken),
    /// It could not run, or a component failed: why.
    Broken(String),
}

/// Runs `test` over the transforms and aggregators of `pipeline`.
pub async fn run(pipeline: &TopologyConfig, test: &PlannedTest) -> Run {
    let data_dir = match DataDir::new() {
        Ok(dir) => dir,
        Err(err) => return Run::Broken(format!("cannot make a temporary data_dir: {err}")),
    };
    let watched = watched_outputs(test);
    let records: BTreeMap<OutputRef, Record> = watched
        .iter()
        .map(|r| (r.clone(), Record::default()))
        .collect();
    let mut config = test_topology(pipeline, test, &records);
    config.globals.data_dir = data_dir.0.clone();
    // Held while the topology runs: its registry service opens the same one.
    let registry = match prepare_registry(&mut config, test) {
        Ok(registry) => registry,
        Err(message) => return Run::Broken(message),
    };
    let telemetry = Telemetry::new();
    let mut topology = match RunningTopology::start(&config, &telemetry) {
        Ok(topology) => topology,
        Err(err) => return Run::Broken(format!("the pipeline could not start: {err}")),
    };
    let drained = tokio::time::timeout(test.timeout, topology.wait()).await;
    let failures: Vec<String> = match &drained {
        Ok(failures) => failures
            .iter()
            .filter_map(|f| {
                Some(format!(
                    "component `{}` failed: {:#}",
                    f.component,
                    f.result.as_ref().err()?
                ))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let timed_out = drained.is_err();
    topology.stop(Duration::from_secs(5)).await;
    drop(registry);
    if timed_out {
        return Run::Broken(format!(
            "the pipeline did not drain within {:?} (`timeout` of the test)",
            test.timeout
        ));
    }
    if !failures.is_empty() {
        return Run::Broken(failures.join("\n"));
    }
    Run::Drained(
        records
            .into_iter()
            .map(|(reference, record)| (reference, record.take()))
            .collect(),
    )
}

/// Every output a test looks at, each once.
fn watched_outputs(test: &PlannedTest) -> Vec<OutputRef> {
    let mut all: Vec<OutputRef> = test
        .outputs
        .iter()
        .flat_map(|o| o.refs.iter().map(|(_, r)| r.clone()))
        .chain(test.silent.iter().map(|(_, r)| r.clone()))
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The pipeline's transforms and aggregators, fed by one [`Inserted`] source per
/// `insert_at` component and read by one [`TakenSink`] per output under test.
fn test_topology(
    pipeline: &TopologyConfig,
    test: &PlannedTest,
    records: &BTreeMap<OutputRef, Record>,
) -> TopologyConfig {
    let mut components: BTreeMap<ComponentId, Component> = pipeline
        .components
        .iter()
        .filter(|(_, c)| {
            matches!(
                c.config.kind(),
                ComponentKind::Transform | ComponentKind::Aggregator
            )
        })
        .map(|(id, c)| (id.clone(), c.clone()))
        .collect();
    for (target, events) in &test.inputs {
        // `@` cannot start a component id of the language, so these never clash.
        let id = ComponentId::new(&format!("@insert:{target}"));
        if let Some(component) = components.get_mut(target) {
            component.inputs.push(OutputRef {
                component: id.clone(),
                output: None,
            });
        }
        let source = Inserted {
            events: events.clone(),
        };
        components.insert(
            id.clone(),
            Component {
                id,
                config: ComponentConfig::new(
                    "test_insert",
                    SectionOptions::Source(Arc::new(source)),
                ),
                inputs: Vec::new(),
                location: test.location.clone(),
            },
        );
    }
    for (reference, record) in records {
        let id = ComponentId::new(&format!("@take:{reference}"));
        let sink = TakenSink {
            record: record.clone(),
        };
        components.insert(
            id.clone(),
            Component {
                id,
                config: ComponentConfig::new("test_take", SectionOptions::Sink(Arc::new(sink))),
                inputs: vec![reference.clone()],
                location: test.location.clone(),
            },
        );
    }
    let mut globals = pipeline.globals.clone();
    globals.end_of_input = EndOfInput::CloseWindows;
    TopologyConfig {
        globals,
        components,
    }
}

/// Gives the test a registry of its own in its `data_dir` (whatever file the pipeline
/// names), holding the test's devices; `None` when neither asks for one. Only the
/// registry is started of the pipeline's services.
fn prepare_registry(
    config: &mut TopologyConfig,
    test: &PlannedTest,
) -> Result<Option<Arc<Registry>>, String> {
    let key = crate::registry::SERVICE.key;
    if !config.globals.services.contains(key) && test.devices.is_empty() {
        config.globals.services = ServiceConfigs::default();
        return Ok(None);
    }
    let settings = RegistryConfig::default();
    let registry = Registry::open(&settings.file(&config.globals.data_dir))
        .map_err(|err| format!("cannot open the test's registry: {err}"))?;
    for device in &test.devices {
        let mut spec = json!({ "id": device.id, "tags": device.tags });
        if let Some(status) = device.status {
            spec["status"] = Value::from(status.as_str());
        }
        if !device.desired.is_empty() {
            spec["desired"] = Value::Object(device.desired.clone());
        }
        if !device.reported.is_empty() {
            spec["reported"] = Value::Object(device.reported.clone());
        }
        let spec: DeviceSpec = serde_json::from_value(spec)
            .map_err(|err| format!("device `{}` of the test's registry: {err}", device.id))?;
        registry
            .create(spec)
            .map_err(|err| format!("device `{}` of the test's registry: {err}", device.id))?;
    }
    config.globals.services = ServiceConfigs::new(vec![(key, Arc::new(settings))]);
    Ok(Some(registry))
}

/// The source of a test's events for one component: sends them as one batch, then ends.
#[derive(Debug, PartialEq)]
struct Inserted {
    events: Vec<InputEvent>,
}

impl SourceComponent for Inserted {
    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask> {
        let events = self.events.clone();
        Ok(Box::pin(async move {
            let now = jiff::Timestamp::now();
            let batch: Vec<Event> = events.iter().map(|e| e.to_event(now)).collect();
            cx.out.send(EventBatch::new(batch)).await;
            Ok(())
        }))
    }
}

/// What reached one output under test.
#[derive(Clone, Debug, Default)]
struct Record(Arc<Mutex<Vec<Event>>>);

impl Record {
    fn take(self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The sink that records what reaches one output under test.
#[derive(Debug)]
struct TakenSink {
    record: Record,
}

impl PartialEq for TakenSink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.record.0, &other.record.0)
    }
}

impl SinkComponent for TakenSink {
    fn build(&self, mut cx: SinkContext) -> anyhow::Result<ComponentTask> {
        let record = self.record.clone();
        Ok(Box::pin(async move {
            while let Some(batch) = cx.input.recv().await {
                record
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(batch);
            }
            Ok(())
        }))
    }
}

/// A test's own `data_dir` under the system's temporary directory, removed with what it
/// holds when the test is done.
struct DataDir(std::path::PathBuf);

impl DataDir {
    fn new() -> std::io::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = std::env::temp_dir()
                .join(format!("weir-test-{}-{n}-{nanos:x}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
