//! Taps: live copies of the events passing a component's outputs or entering it, for
//! `weir tap` (`GET /v1/tap`).
//!
//! Every output and every input channel has a [`TapPoint`], registered with the one
//! [`TapHub`] of the process (a service without settings, so the API finds it). A point
//! copies nothing unless a tap is attached to it: the check on the hot path is one relaxed
//! atomic load per batch. An attached tap gets clones of the batch's events (their bodies
//! are shared, not copied) through a bounded queue it is offered with `try_send`: a tap
//! that reads slowly loses samples, counted in `tap_dropped_events_total`; the pipeline
//! never waits for it. What a tap may see (redaction, device scope) is decided where it is
//! served, not here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use globset::{Glob, GlobMatcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::config::ComponentId;
use crate::event::{Event, EventBatch};
use crate::telemetry::Metrics;

/// Where on a component a tap looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Port {
    /// An output: `default` or a named one (`errors`, a route).
    Output(Arc<str>),
    /// What the component takes from its input channel.
    Input,
}

impl Port {
    /// `default`, `errors`, ... or `input`.
    pub fn name(&self) -> &str {
        match self {
            Self::Output(name) => name,
            Self::Input => "input",
        }
    }
}

/// Events copied at one point, for one tap.
#[derive(Debug)]
pub struct Tapped {
    pub component: ComponentId,
    pub port: Port,
    pub events: Vec<Event>,
}

/// Which points a tap wants: outputs of components whose id (`id`, or `id.name` for a
/// named output) matches one glob, inputs of components whose id matches the other.
#[derive(Clone, Debug, Default)]
pub struct TapFilter {
    outputs_of: Vec<GlobMatcher>,
    inputs_of: Vec<GlobMatcher>,
}

impl TapFilter {
    /// A filter of `outputs_of` and `inputs_of` globs (`decode`, `plant_*`, `*.errors`);
    /// with neither, every component's outputs.
    pub fn new(outputs_of: &[String], inputs_of: &[String]) -> Result<Self, String> {
        let compile = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| {
                    Glob::new(p)
                        .map(|g| g.compile_matcher())
                        .map_err(|e| format!("`{p}` is not a glob: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut filter = Self {
            outputs_of: compile(outputs_of)?,
            inputs_of: compile(inputs_of)?,
        };
        if filter.outputs_of.is_empty() && filter.inputs_of.is_empty() {
            filter.outputs_of = compile(&["*".to_owned()])?;
        }
        Ok(filter)
    }

    fn matches(&self, component: &ComponentId, port: &Port) -> bool {
        match port {
            Port::Input => self
                .inputs_of
                .iter()
                .any(|g| g.is_match(component.as_str())),
            Port::Output(name) if &**name == "default" => self
                .outputs_of
                .iter()
                .any(|g| g.is_match(component.as_str())),
            Port::Output(name) => {
                let full = format!("{component}.{name}");
                self.outputs_of.iter().any(|g| g.is_match(&full))
            }
        }
    }
}

/// One attached tap: its filter and the queue it reads.
struct Subscription {
    filter: TapFilter,
    tx: mpsc::Sender<Tapped>,
    /// Events this tap lost because its queue was full.
    dropped: AtomicU64,
    /// Events the tap still wants copied in this interval (`u64::MAX`: no bound), so a
    /// point copies no more than the tap will show; the tap refills it each interval.
    budget: AtomicU64,
    /// Events left uncopied because the budget was spent.
    skipped: AtomicU64,
}

impl Subscription {
    /// Takes up to `wanted` events from the budget; how many were granted.
    fn grant(&self, wanted: u64) -> u64 {
        let mut granted = 0;
        let _ = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                granted = left.min(wanted);
                Some(left - granted)
            });
        granted
    }
}

/// One output or input channel that can be tapped.
pub struct TapPoint {
    component: ComponentId,
    port: Port,
    /// Whether any tap is attached: the one thing the hot path reads.
    attached: AtomicBool,
    subscribers: ArcSwap<Vec<Arc<Subscription>>>,
    counters: TapCounters,
}

impl TapPoint {
    /// A point no tap can reach (a component built outside a topology, in tests).
    pub fn unreachable(component: &str) -> Arc<Self> {
        Arc::new(Self::new(
            ComponentId::new(component),
            Port::Input,
            TapCounters::default(),
        ))
    }

    fn new(component: ComponentId, port: Port, counters: TapCounters) -> Self {
        Self {
            component,
            port,
            attached: AtomicBool::new(false),
            subscribers: ArcSwap::from_pointee(Vec::new()),
            counters,
        }
    }

    /// Offers `batch` to the attached taps, if any; never waits.
    #[inline]
    pub fn offer(&self, batch: &EventBatch) {
        if self.attached.load(Ordering::Relaxed) {
            self.copy(&batch.events);
        }
    }

    #[cold]
    fn copy(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        for subscriber in self.subscribers.load().iter() {
            let wanted = events.len() as u64;
            let count = subscriber.grant(wanted);
            if count < wanted {
                subscriber
                    .skipped
                    .fetch_add(wanted - count, Ordering::Relaxed);
            }
            if count == 0 {
                continue;
            }
            let tapped = Tapped {
                component: self.component.clone(),
                port: self.port.clone(),
                // At most what the budget granted: `count` fits a usize, being at most
                // the batch's length.
                events: events[..count as usize].to_vec(),
            };
            // Counted as made, whatever becomes of the copy: the count proves there are
            // none while no tap is attached.
            self.counters.copied.inc_by(count);
            match subscriber.tx.try_send(tapped) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.dropped.fetch_add(count, Ordering::Relaxed);
                    self.counters.dropped.inc_by(count);
                }
                // The tap is going; its handle detaches it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    fn set_subscribers(&self, subscribers: Vec<Arc<Subscription>>) {
        self.attached
            .store(!subscribers.is_empty(), Ordering::Relaxed);
        self.subscribers.store(Arc::new(subscribers));
    }
}

/// The process-wide tap counters.
#[derive(Clone, Default)]
struct TapCounters {
    copied: Counter,
    dropped: Counter,
    attached: Gauge,
}

/// Every tap point and every attached tap of the process.
pub struct TapHub {
    state: Mutex<HubState>,
    counters: TapCounters,
    /// Field names every tap masks (the union of the running components' `redact`).
    redacted: ArcSwap<Vec<String>>,
}

#[derive(Default)]
struct HubState {
    points: Vec<Weak<TapPoint>>,
    subscriptions: Vec<Weak<Subscription>>,
}

impl TapHub {
    /// A hub whose counts are `metrics`' `tap_*` series.
    pub fn new(metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(HubState::default()),
            counters: TapCounters {
                copied: metrics.tap_copied_events.clone(),
                dropped: metrics.tap_dropped_events.clone(),
                attached: metrics.tap_sessions.clone(),
            },
            redacted: ArcSwap::from_pointee(Vec::new()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new point for `component`'s `port`, attached to the taps already watching it.
    pub fn point(&self, component: &ComponentId, port: Port) -> Arc<TapPoint> {
        let point = Arc::new(TapPoint::new(
            component.clone(),
            port,
            self.counters.clone(),
        ));
        let mut state = self.state();
        state.points.retain(|p| p.strong_count() > 0);
        state.points.push(Arc::downgrade(&point));
        let watching: Vec<Arc<Subscription>> = state
            .subscriptions
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| s.filter.matches(&point.component, &point.port))
            .collect();
        point.set_subscribers(watching);
        point
    }

    /// Attaches a tap reading through a queue of `capacity` batches; it stays attached
    /// until the returned [`Tap`] is dropped. Points copy it no more than `budget` events
    /// until [`Tap::refill`] (`None`: every event).
    pub fn attach(
        self: &Arc<Self>,
        filter: TapFilter,
        capacity: usize,
        budget: Option<u64>,
    ) -> Tap {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let subscription = Arc::new(Subscription {
            filter,
            tx,
            dropped: AtomicU64::new(0),
            budget: AtomicU64::new(budget.unwrap_or(u64::MAX)),
            skipped: AtomicU64::new(0),
        });
        let mut matched = Vec::new();
        let mut state = self.state();
        state.subscriptions.retain(|s| s.strong_count() > 0);
        state.subscriptions.push(Arc::downgrade(&subscription));
        for point in state.points.iter().filter_map(Weak::upgrade) {
            if subscription.filter.matches(&point.component, &point.port) {
                let mut list = point.subscribers.load().as_ref().clone();
                list.push(Arc::clone(&subscription));
                point.set_subscribers(list);
                matched.push(format!("{}:{}", point.component, point.port.name()));
            }
        }
        drop(state);
        self.counters.attached.inc();
        matched.sort();
        matched.dedup();
        Tap {
            hub: Arc::clone(self),
            subscription,
            rx,
            matched,
        }
    }

    fn detach(&self, subscription: &Arc<Subscription>) {
        let mut state = self.state();
        state
            .subscriptions
            .retain(|s| s.upgrade().is_some_and(|s| !Arc::ptr_eq(&s, subscription)));
        for point in state.points.iter().filter_map(Weak::upgrade) {
            let list = point.subscribers.load();
            if list.iter().any(|s| Arc::ptr_eq(s, subscription)) {
                let kept = list
                    .iter()
                    .filter(|s| !Arc::ptr_eq(s, subscription))
                    .cloned()
                    .collect();
                point.set_subscribers(kept);
            }
        }
        drop(state);
        self.counters.attached.dec();
    }

    /// Sets the fields every tap masks, from the running components' `redact` lists.
    pub fn set_redacted(&self, fields: Vec<String>) {
        self.redacted.store(Arc::new(fields));
    }

    /// The fields every tap masks.
    pub fn redacted(&self) -> Arc<Vec<String>> {
        self.redacted.load_full()
    }
}

/// One attached tap: the events copied for it, until it is dropped.
pub struct Tap {
    hub: Arc<TapHub>,
    subscription: Arc<Subscription>,
    rx: mpsc::Receiver<Tapped>,
    /// The points it watches when it attached (`component:port`).
    pub matched: Vec<String>,
}

impl Tap {
    /// The next events copied for this tap.
    pub async fn next(&mut self) -> Option<Tapped> {
        self.rx.recv().await
    }

    /// The events copied for this tap, if any are waiting.
    pub fn try_next(&mut self) -> Option<Tapped> {
        self.rx.try_recv().ok()
    }

    /// Sets the events points may copy for this tap until the next refill.
    pub fn refill(&self, budget: u64) {
        self.subscription.budget.store(budget, Ordering::Relaxed);
    }

    /// Events left uncopied since the last call because the budget was spent.
    pub fn take_skipped(&self) -> u64 {
        self.subscription.skipped.swap(0, Ordering::Relaxed)
    }

    /// Events lost so far because this tap's queue was full.
    pub fn dropped(&self) -> u64 {
        self.subscription.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.rx.close();
        self.hub.detach(&self.subscription);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::tests::batch;

    fn hub() -> (Arc<TapHub>, Metrics) {
        let metrics = Metrics::default();
        (TapHub::new(&metrics), metrics)
    }

    #[test]
    fn nothing_is_copied_while_no_tap_is_attached() {
        let (hub, metrics) = hub();
        let point = hub.point(&"decode".into(), Port::Output("default".into()));
        point.offer(&batch(0..10));
        assert_eq!(metrics.tap_copied_events.get(), 0);
        let mut tap = hub.attach(TapFilter::new(&["decode".into()], &[]).unwrap(), 8, None);
        assert_eq!(tap.matched, ["decode:default"]);
        point.offer(&batch(0..10));
        assert_eq!(metrics.tap_copied_events.get(), 10);
        assert_eq!(tap.rx.try_recv().map(|t| t.events.len()).ok(), Some(10));
        drop(tap);
        assert!(!point.attached.load(Ordering::Relaxed));
        point.offer(&batch(0..10));
        assert_eq!(metrics.tap_copied_events.get(), 10, "detached: no copy");
        assert_eq!(metrics.tap_sessions.get(), 0);
    }

    #[test]
    fn a_slow_tap_loses_samples_and_counts_them() {
        let (hub, metrics) = hub();
        let point = hub.point(&"decode".into(), Port::Output("default".into()));
        let tap = hub.attach(TapFilter::new(&[], &[]).unwrap(), 1, None);
        point.offer(&batch(0..3));
        point.offer(&batch(3..8));
        assert_eq!(tap.dropped(), 5);
        assert_eq!(metrics.tap_dropped_events.get(), 5);
        assert_eq!(metrics.tap_copied_events.get(), 8);
    }

    #[test]
    fn a_budget_bounds_what_is_copied_until_it_is_refilled() {
        let (hub, metrics) = hub();
        let point = hub.point(&"decode".into(), Port::Output("default".into()));
        let mut tap = hub.attach(TapFilter::new(&[], &[]).unwrap(), 8, Some(4));
        point.offer(&batch(0..3));
        point.offer(&batch(3..6));
        point.offer(&batch(6..9));
        assert_eq!(
            metrics.tap_copied_events.get(),
            4,
            "3, then 1 of 3, then none"
        );
        assert_eq!(tap.take_skipped(), 5);
        assert_eq!(tap.try_next().map(|t| t.events.len()), Some(3));
        assert_eq!(tap.try_next().map(|t| t.events.len()), Some(1));
        tap.refill(2);
        point.offer(&batch(0..3));
        assert_eq!(tap.try_next().map(|t| t.events.len()), Some(2));
        assert_eq!(tap.take_skipped(), 1);
    }

    #[test]
    fn filters_pick_outputs_named_outputs_and_inputs() {
        let (hub, _) = hub();
        let default = hub.point(&"decode".into(), Port::Output("default".into()));
        let errors = hub.point(&"decode".into(), Port::Output("errors".into()));
        let input = hub.point(&"decode".into(), Port::Input);
        let tap = hub.attach(TapFilter::new(&["*.errors".into()], &[]).unwrap(), 8, None);
        assert_eq!(tap.matched, ["decode:errors"]);
        let inputs = hub.attach(TapFilter::new(&[], &["dec*".into()]).unwrap(), 8, None);
        assert_eq!(inputs.matched, ["decode:input"]);
        // A point made later (a reload) joins the taps watching it.
        let later = hub.point(&"decode".into(), Port::Output("errors".into()));
        assert!(later.attached.load(Ordering::Relaxed));
        assert!(!default.attached.load(Ordering::Relaxed));
        assert!(errors.attached.load(Ordering::Relaxed) && input.attached.load(Ordering::Relaxed));
    }
}
