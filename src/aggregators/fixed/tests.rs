//! Boundary cases and a property test of the fixed-window engine against a brute-force
//! reference written independently of it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::json;

use super::{Assigner, FixedWindows};
use crate::aggregators::engine::WindowEngine;
use crate::aggregators::window::testing::{self, event};
use crate::aggregators::window::{Bound, LatePolicy, Outcome, WindowSpec, timestamp};
use crate::event::Event;

const NOW_MS: i64 = 1_800_000_000_000;

fn spec(lateness_ms: u64, policy: LatePolicy) -> WindowSpec {
    let aggregates = [
        ("n", "count()"),
        ("sum", "sum(x)"),
        ("min", "min(x)"),
        ("max", "max(x)"),
        ("avg", "avg(x)"),
    ];
    testing::spec(&aggregates, lateness_ms, policy)
}

/// (device, start ms, end ms) -> (n, sum, min, max)
type Results = BTreeMap<(String, i64, i64), (u64, i64, i64, i64)>;

fn collect(events: &[Event], into: &mut Results) {
    for e in events {
        let start = e
            .get("window_start")
            .unwrap()
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let end = e
            .get("window_end")
            .unwrap()
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        let key = (e.device_id.as_deref().unwrap().to_owned(), start, end);
        let value = (
            e.get("n").unwrap().as_u64().unwrap(),
            e.get("sum").unwrap().as_f64().unwrap() as i64,
            e.get("min").unwrap().as_f64().unwrap() as i64,
            e.get("max").unwrap().as_f64().unwrap() as i64,
        );
        assert!(
            into.insert(key.clone(), value).is_none(),
            "window {key:?} emitted twice"
        );
    }
}

#[test]
fn an_event_at_end_opens_the_next_window_and_closes_the_previous() {
    let mut engine = FixedWindows::new(
        spec(0, LatePolicy::Drop),
        Assigner::Tumbling {
            size: 1000,
            offset: 0,
        },
    );
    let mut out = Vec::new();
    let now = Instant::now();
    engine.add(&event("d", NOW_MS, 1), NOW_MS, now, &mut out);
    engine.add(&event("d", NOW_MS + 999, 2), NOW_MS, now, &mut out);
    assert!(out.is_empty());
    engine.add(&event("d", NOW_MS + 1000, 4), NOW_MS, now, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].get("n"), Some(&json!(2)));
    assert_eq!(out[0].get("sum"), Some(&json!(3.0)));
    assert_eq!(
        out[0].get("window_start"),
        Some(&json!(timestamp(NOW_MS).to_string()))
    );
    assert_eq!(
        out[0].get("window_end"),
        Some(&json!(timestamp(NOW_MS + 1000).to_string()))
    );
    assert_eq!(engine.open_windows(), 1);
}

#[test]
fn lateness_keeps_a_window_open_then_late_events_follow_the_policy() {
    let now = Instant::now();
    for (policy, expected) in [
        (LatePolicy::Drop, Outcome::Dropped(Bound::Late)),
        (LatePolicy::Route, Outcome::Routed(Bound::Late)),
        (LatePolicy::Adjust, Outcome::Adjusted(Bound::Late)),
    ] {
        let mut engine = FixedWindows::new(
            spec(500, policy),
            Assigner::Tumbling {
                size: 1000,
                offset: 0,
            },
        );
        let mut out = Vec::new();
        engine.add(&event("d", NOW_MS + 100, 1), NOW_MS, now, &mut out);
        engine.add(&event("d", NOW_MS + 1400, 1), NOW_MS, now, &mut out);
        assert!(
            out.is_empty(),
            "the first window is open until its end + 500ms"
        );
        // 450 ms behind the watermark: within the 500 ms lateness, its window is still open.
        assert_eq!(
            engine.add(&event("d", NOW_MS + 950, 1), NOW_MS, now, &mut out),
            Outcome::Folded,
            "within lateness"
        );
        engine.add(&event("d", NOW_MS + 1500, 1), NOW_MS, now, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].get("n"), Some(&json!(2)));
        assert_eq!(
            engine.add(&event("d", NOW_MS + 300, 1), NOW_MS, now, &mut out),
            expected
        );
    }
}

#[test]
fn one_fast_device_does_not_make_others_late() {
    let mut engine = FixedWindows::new(
        spec(0, LatePolicy::Drop),
        Assigner::Tumbling {
            size: 1000,
            offset: 0,
        },
    );
    let mut out = Vec::new();
    let now = Instant::now();
    engine.add(&event("fast", NOW_MS + 50_000, 1), NOW_MS, now, &mut out);
    assert_eq!(
        engine.add(&event("slow", NOW_MS, 1), NOW_MS, now, &mut out),
        Outcome::Folded
    );
}

#[test]
fn future_events_follow_the_policy() {
    let mut engine = FixedWindows::new(
        spec(0, LatePolicy::Route),
        Assigner::Tumbling {
            size: 1000,
            offset: 0,
        },
    );
    let mut out = Vec::new();
    let far = NOW_MS + 3_600_001;
    assert_eq!(
        engine.add(&event("d", far, 1), NOW_MS, Instant::now(), &mut out),
        Outcome::Routed(Bound::Future)
    );
}

#[test]
fn an_idle_group_closes_its_windows_and_later_events_for_them_are_late() {
    let mut engine = FixedWindows::new(
        spec(0, LatePolicy::Drop),
        Assigner::Tumbling {
            size: 1000,
            offset: 0,
        },
    );
    let mut out = Vec::new();
    let now = Instant::now();
    engine.add(&event("d", NOW_MS + 10, 5), NOW_MS, now, &mut out);
    engine.tick(NOW_MS, now + Duration::from_millis(1), false, &mut out);
    assert_eq!(out.len(), 1, "idle timeout (0s here) closes the window");
    assert_eq!(
        engine.add(&event("d", NOW_MS + 20, 5), NOW_MS, now, &mut out),
        Outcome::Dropped(Bound::Late)
    );
    assert_eq!(
        engine.add(&event("d", NOW_MS + 1000, 5), NOW_MS, now, &mut out),
        Outcome::Folded
    );
}

#[test]
fn snapshots_restore_open_windows() {
    let mut engine = FixedWindows::new(
        spec(0, LatePolicy::Drop),
        Assigner::Tumbling {
            size: 1000,
            offset: 0,
        },
    );
    let mut out = Vec::new();
    let now = Instant::now();
    engine.add(&event("d", NOW_MS + 10, 5), NOW_MS, now, &mut out);
    let definition = engine.definition();
    let bytes = serde_json::to_vec(&engine.export()).unwrap();
    let mut restored = FixedWindows::new(
        spec(0, LatePolicy::Drop),
        Assigner::Tumbling {
            size: 1000,
            offset: 0,
        },
    );
    restored.import(serde_json::from_slice(&bytes).unwrap());
    assert_eq!(restored.definition(), definition);
    restored.add(&event("d", NOW_MS + 20, 7), NOW_MS, now, &mut out);
    restored.add(&event("d", NOW_MS + 1000, 0), NOW_MS, now, &mut out);
    assert_eq!(out[0].get("sum"), Some(&json!(12.0)));
    let other = FixedWindows::new(
        spec(0, LatePolicy::Drop),
        Assigner::Tumbling {
            size: 2000,
            offset: 0,
        },
    );
    assert_ne!(
        other.definition(),
        definition,
        "a changed window size refuses the checkpoint"
    );
    // Checkpoints on disk hold this text: a new spelling would drop their open windows.
    assert_eq!(
        definition,
        "Tumbling { size: 1000, offset: 0 } count(),sum(x),min(x),max(x),avg(x)"
    );
}

/// The brute-force reference: per device, an event is accepted unless it is older than the
/// latest accepted time minus the lateness; every accepted event counts in every window
/// `[k*hop, k*hop + size)` that holds it; a window is due once some accepted time of its
/// device reaches `end + lateness`.
fn reference(
    events: &[(String, i64, i64)],
    size: i64,
    hop: i64,
    lateness: i64,
) -> (Results, BTreeMap<(String, i64, i64), usize>) {
    let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
    let mut results = Results::new();
    let mut due_at = BTreeMap::new();
    for (index, (device, t, x)) in events.iter().enumerate() {
        let seen = latest.get(device.as_str()).copied();
        if seen.is_some_and(|m| *t < m - lateness) {
            continue;
        }
        let max = seen.map_or(*t, |m| m.max(*t));
        latest.insert(device, max);
        let mut k = (t - size) / hop - 2;
        while k * hop <= *t {
            let (start, end) = (k * hop, k * hop + size);
            if start <= *t && *t < end {
                let entry = results.entry((device.clone(), start, end)).or_insert((
                    0,
                    0,
                    i64::MAX,
                    i64::MIN,
                ));
                entry.0 += 1;
                entry.1 += x;
                entry.2 = entry.2.min(*x);
                entry.3 = entry.3.max(*x);
            }
            k += 1;
        }
        for ((d, _, end), _) in results.iter() {
            if d == device && end + lateness <= max {
                due_at.entry((d.clone(), 0, *end)).or_insert(index);
            }
        }
    }
    (results, due_at)
}

fn stream() -> impl Strategy<Value = Vec<(String, i64, i64)>> {
    // Three devices; times wander forward with jitter up to 3 s back (some beyond lateness).
    proptest::collection::vec((0usize..3, -3000i64..4000, -50i64..50), 1..200).prop_map(|steps| {
        let mut clock = [0i64; 3];
        steps
            .into_iter()
            .map(|(device, step, x)| {
                clock[device] = (clock[device] + step.max(0)).max(0);
                let t = (clock[device] + step.min(0)).max(0);
                (format!("d{device}"), NOW_MS + t, x)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn fixed_windows_match_the_reference(
        events in stream(),
        (size, hop) in prop_oneof![(1000i64..=1000, 1000i64..=1000), (1000i64..=1000, 250i64..=250), (900i64..=900, 300i64..=300)],
        lateness in prop_oneof![Just(0i64), Just(500), Just(2000)],
    ) {
        let assigner = if size == hop { Assigner::Tumbling { size, offset: 0 } } else { Assigner::Hopping { size, hop, offset: 0 } };
        let mut engine = FixedWindows::new(spec(lateness as u64, LatePolicy::Drop), assigner);
        let now = Instant::now();
        let mut results = Results::new();
        let mut emitted_at = BTreeMap::new();
        for (index, (device, t, x)) in events.iter().enumerate() {
            let mut out = Vec::new();
            engine.add(&event(device, *t - NOW_MS + NOW_MS, *x), NOW_MS, now, &mut out);
            for e in &out {
                let end = e.get("window_end").unwrap().as_str().unwrap().parse::<jiff::Timestamp>().unwrap().as_millisecond();
                emitted_at.insert((e.device_id.as_deref().unwrap().to_owned(), 0, end), index);
            }
            collect(&out, &mut results);
        }
        // Flush what is still open (idle timeout is zero).
        let mut rest = Vec::new();
        engine.tick(NOW_MS, now + Duration::from_millis(1), false, &mut rest);
        collect(&rest, &mut results);
        prop_assert_eq!(engine.open_windows(), 0);

        let (expected, due_at) = reference(&events, size, hop, lateness);
        prop_assert_eq!(&results, &expected);
        // Windows are emitted exactly when they become due, not before, not later.
        prop_assert_eq!(&emitted_at, &due_at);
    }
}
