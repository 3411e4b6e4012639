//! `simulator`: a fleet of virtual devices, for the quickstart, demos and load tests.
//!
//! Each device reports every field of `fields` in turn. A device's value is its own base
//! (the field's `base` plus a per-device offset) plus a slow random-walk drift, Gaussian
//! noise and the occasional spike; now and then a device drops out and is silent for a
//! while. The simulated clock starts at `start_time` (default: now) and advances `1/rate`
//! per reading, so with a fixed `seed` and `start_time` the stream is identical on every
//! run. `realtime: false` produces readings as fast as the pipeline takes them.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use indexmap::IndexMap;
use jiff::{SignedDuration, Timestamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::gate::{DeviceGate, UnknownDevices};
use super::{SourceComponent, SourceContext};
use crate::config::{Duration, FieldProblem};
use crate::event::{DeviceId, Event, EventBatch, EventMeta, Fields};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::EventsReceived;
use crate::topology::ComponentTask;

/// A simulated fleet.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Number of devices; ids are `<device_prefix><n>` with n zero-padded.
    #[serde(default = "default_devices")]
    pub devices: u32,
    #[serde(default = "default_prefix")]
    pub device_prefix: String,
    /// Readings per second across the whole fleet.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Pace readings to the wall clock; `false` emits as fast as the pipeline accepts.
    #[serde(default = "default_true")]
    pub realtime: bool,
    /// Seed of the random generator: the same seed gives the same readings.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Event time of the first reading (RFC 3339); default: when the source starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub start_time: Option<Timestamp>,
    /// Stop after this many readings; default: run until shut down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Readings per batch sent downstream.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The measured fields; default: `temperature` and `vibration`.
    #[serde(default = "default_fields")]
    pub fields: IndexMap<String, FieldSpec>,
    /// Devices that go silent now and then.
    #[serde(default)]
    pub dropout: DropoutSpec,
}

/// How one measured field behaves.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Fleet-wide typical value.
    pub base: f64,
    /// Standard deviation of each device's fixed offset from `base`.
    #[serde(default)]
    pub spread: f64,
    /// Standard deviation of each reading's step in the device's random-walk drift.
    #[serde(default)]
    pub drift: f64,
    /// Standard deviation of per-reading noise.
    #[serde(default)]
    pub noise: f64,
    /// Probability that a reading is a spike.
    #[serde(default)]
    pub spike_probability: f64,
    /// How far a spike jumps above the value.
    #[serde(default)]
    pub spike: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Decimal places kept.
    #[serde(default = "default_decimals")]
    pub decimals: u32,
}

/// Devices dropping out: each reading has `probability` of starting a silence of `duration`
/// (simulated time) for its device.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DropoutSpec {
    #[serde(default)]
    pub probability: f64,
    #[serde(default = "default_dropout")]
    pub duration: Duration,
}

impl Default for DropoutSpec {
    fn default() -> Self {
        Self {
            probability: 0.0,
            duration: default_dropout(),
        }
    }
}

fn default_devices() -> u32 {
    10
}
fn default_prefix() -> String {
    "sim-".into()
}
fn default_rate() -> f64 {
    10.0
}
fn default_true() -> bool {
    true
}
fn default_seed() -> u64 {
    1
}
fn default_batch_size() -> usize {
    100
}
fn default_decimals() -> u32 {
    2
}
fn default_dropout() -> Duration {
    Duration::from_secs(30)
}
fn default_fields() -> IndexMap<String, FieldSpec> {
    let spec = |base, spread, drift, noise, spike_probability, spike, min| FieldSpec {
        base,
        spread,
        drift,
        noise,
        spike_probability,
        spike,
        min,
        max: None,
        decimals: 2,
    };
    IndexMap::from([
        (
            "temperature".to_owned(),
            spec(70.0, 8.0, 0.05, 0.4, 0.002, 35.0, None),
        ),
        (
            "vibration".to_owned(),
            spec(2.0, 0.4, 0.01, 0.15, 0.001, 3.0, Some(0.0)),
        ),
    ])
}

impl SourceComponent for SimulatorConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.devices == 0 {
            problems.push(FieldProblem::at(
                ["devices"],
                "expected at least one device",
            ));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            problems.push(FieldProblem::at(
                ["rate"],
                "expected a positive number of readings per second",
            ));
        }
        if self.batch_size == 0 {
            problems.push(FieldProblem::at(["batch_size"], "expected at least 1"));
        }
        if !(0.0..=1.0).contains(&self.dropout.probability) {
            problems.push(FieldProblem::at(
                ["dropout", "probability"],
                "expected a probability between 0 and 1",
            ));
        }
        for (name, spec) in &self.fields {
            if !(0.0..=1.0).contains(&spec.spike_probability) {
                problems.push(FieldProblem::at(
                    ["fields", name.as_str(), "spike_probability"],
                    "expected a probability between 0 and 1",
                ));
            }
            if name == "ts" || name == "device_id" {
                problems.push(FieldProblem::at(
                    ["fields", name.as_str()],
                    "`ts` and `device_id` are set by the simulator",
                ));
            }
        }
        problems
    }

    fn bounded(&self) -> Option<crate::config::BatchRange> {
        self.limit.map(|_| crate::config::BatchRange::default())
    }

    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask> {
        let config = self.clone();
        Ok(Box::pin(async move { run(config, cx).await }))
    }
}

async fn run(config: SimulatorConfig, cx: SourceContext) -> anyhow::Result<()> {
    let mut fleet = Fleet::new(&config, config.start_time.unwrap_or_else(Timestamp::now));
    // Simulated devices are usually not registered; ones the registry disables are refused.
    let gate = DeviceGate::new(cx.services.get(), UnknownDevices::Accept)?;
    let source = cx.id.as_arc();
    let started = tokio::time::Instant::now();
    let limit = config.limit.unwrap_or(u64::MAX);
    let mut emitted: u64 = 0;
    let mut ticker = tokio::time::interval(StdDuration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    while emitted < limit && !cx.shutdown.is_cancelled() {
        let due = if config.realtime {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = cx.shutdown.cancelled() => break,
            }
            let owed = (started.elapsed().as_secs_f64() * config.rate) as u64;
            owed.min(limit).saturating_sub(emitted)
        } else {
            (limit - emitted).min(config.batch_size as u64)
        };
        let mut remaining = due;
        while remaining > 0 {
            let n = remaining.min(config.batch_size as u64) as usize;
            let meta = Arc::new(EventMeta::received_by(Arc::clone(&source)));
            let events = fleet.next_batch(n, &meta);
            EventsReceived {
                count: events.len(),
                bytes: 0,
            }
            .emit(&cx.telemetry);
            let events = gate.screen(&cx, events).await;
            tokio::select! {
                _ = cx.out.send(EventBatch::new(events)) => {}
                _ = cx.shutdown.cancelled() => return Ok(()),
            }
            remaining -= n as u64;
            emitted += n as u64;
        }
    }
    Ok(())
}

/// The simulated devices and their clock.
struct Fleet {
    rng: ChaCha8Rng,
    devices: Vec<Device>,
    fields: Vec<(String, FieldSpec)>,
    dropout: DropoutSpec,
    clock: Timestamp,
    step: SignedDuration,
    next_device: usize,
}

struct Device {
    id: DeviceId,
    /// Per field: fixed offset from base, plus accumulated drift.
    offsets: Vec<f64>,
    drift: Vec<f64>,
    silent_until: Option<Timestamp>,
}

impl Fleet {
    fn new(config: &SimulatorConfig, start: Timestamp) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let fields: Vec<_> = config
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let width = config.devices.to_string().len().max(4);
        let devices = (0..config.devices)
            .map(|n| Device {
                id: format!("{}{:0width$}", config.device_prefix, n + 1).into(),
                offsets: fields
                    .iter()
                    .map(|(_, f)| f.spread * gaussian(&mut rng))
                    .collect(),
                drift: vec![0.0; fields.len()],
                silent_until: None,
            })
            .collect();
        Self {
            rng,
            devices,
            fields,
            dropout: config.dropout.clone(),
            clock: start,
            step: SignedDuration::from_secs_f64(1.0 / config.rate),
            next_device: 0,
        }
    }

    fn next_batch(&mut self, n: usize, meta: &Arc<EventMeta>) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            if let Some(event) = self.next_reading(meta) {
                events.push(event);
            }
        }
        events
    }

    /// The next device's reading, or `None` if that device is silent right now.
    fn next_reading(&mut self, meta: &Arc<EventMeta>) -> Option<Event> {
        let now = self.clock;
        self.clock = self.clock.saturating_add(self.step).unwrap_or(self.clock);
        let index = self.next_device;
        self.next_device = (self.next_device + 1) % self.devices.len();
        let device = &mut self.devices[index];

        if device.silent_until.is_some_and(|until| now < until) {
            return None;
        }
        device.silent_until = None;
        if self.dropout.probability > 0.0 && self.rng.random_bool(self.dropout.probability) {
            let silence = SignedDuration::try_from(self.dropout.duration.get())
                .unwrap_or(SignedDuration::ZERO);
            device.silent_until = now.checked_add(silence).ok();
            return None;
        }

        let mut fields = Fields::new();
        fields.insert("ts".into(), Value::from(now.as_millisecond()));
        for (i, (name, spec)) in self.fields.iter().enumerate() {
            device.drift[i] += spec.drift * gaussian(&mut self.rng);
            let mut value = spec.base
                + device.offsets[i]
                + device.drift[i]
                + spec.noise * gaussian(&mut self.rng);
            if spec.spike_probability > 0.0 && self.rng.random_bool(spec.spike_probability) {
                value += spec.spike;
            }
            if let Some(min) = spec.min {
                value = value.max(min);
            }
            if let Some(max) = spec.max {
                value = value.min(max);
            }
            let scale = 10f64.powi(spec.decimals as i32);
            let value = (value * scale).round() / scale;
            fields.insert(
                name.clone(),
                serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number),
            );
        }
        let mut event = Event::new(Some(device.id.clone()), fields, Arc::clone(meta));
        event.time = now;
        Some(event)
    }
}

fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SimulatorConfig {
        serde_json::from_str(
            r#"{"devices": 3, "rate": 100, "start_time": "2026-01-01T00:00:00Z", "seed": 7}"#,
        )
        .unwrap()
    }

    fn readings(config: &SimulatorConfig, n: usize) -> Vec<Event> {
        let mut fleet = Fleet::new(config, config.start_time.unwrap());
        let meta = Arc::new(EventMeta::received_by("sim".into()));
        fleet.next_batch(n, &meta)
    }

    #[test]
    fn same_seed_same_stream() {
        let a = readings(&config(), 50);
        let b = readings(&config(), 50);
        assert_eq!(
            a.iter().map(|e| e.fields().clone()).collect::<Vec<_>>(),
            b.iter().map(|e| e.fields().clone()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn devices_take_turns_and_time_advances_by_one_over_rate() {
        let events = readings(&config(), 4);
        let ids: Vec<_> = events
            .iter()
            .map(|e| e.device_id.as_deref().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["sim-0001", "sim-0002", "sim-0003", "sim-0001"]);
        assert_eq!(
            events[1].time.as_millisecond() - events[0].time.as_millisecond(),
            10
        );
        assert_eq!(
            events[0].get("ts").unwrap(),
            &Value::from(events[0].time.as_millisecond())
        );
    }

    #[test]
    fn dropouts_silence_a_device() {
        let mut cfg = config();
        cfg.dropout = DropoutSpec {
            probability: 0.2,
            duration: Duration::from_secs(1),
        };
        let events = readings(&cfg, 300);
        // With dropouts, 300 readings take more simulated time than 300 steps.
        let span = events.last().unwrap().time.as_millisecond() - events[0].time.as_millisecond();
        assert!(span > 299 * 10, "span {span}");
    }
}
