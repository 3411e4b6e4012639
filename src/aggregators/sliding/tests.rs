//! Sliding windows against a brute-force reference: every change point of the accepted
//! events, each aggregated over all accepted events in `(p - size, p]`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::SlidingWindows;
use crate::aggregators::engine::WindowEngine;
use crate::aggregators::window::LatePolicy;
use crate::aggregators::window::testing::{self, event};
use crate::event::Event;

const T0: i64 = 1_800_000_000_000;

fn engine(lateness_ms: u64, size: i64) -> SlidingWindows {
    let aggregates = [("n", "count()"), ("sum", "sum(x)")];
    let spec = testing::spec(&aggregates, lateness_ms, LatePolicy::Drop);
    SlidingWindows::new(spec, size)
}

fn end_of(e: &Event) -> i64 {
    e.get("window_end")
        .unwrap()
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}

#[test]
fn the_definition_is_spelled_as_checkpoints_hold_it() {
    // Checkpoints on disk hold this text: a new spelling would drop their open windows.
    assert_eq!(
        engine(0, 60_000).definition(),
        "sliding size=60000 count(),sum(x)"
    );
}

#[test]
fn emits_when_an_event_enters_and_when_it_leaves() {
    let mut e = engine(0, 1000);
    let mut out = Vec::new();
    let now = Instant::now();
    e.add(&event("d", T0, 1), T0, now, &mut out);
    e.add(&event("d", T0 + 400, 2), T0, now, &mut out);
    assert_eq!(
        out.len(),
        1,
        "the arrival at T0 is final once time moved past it"
    );
    assert_eq!((end_of(&out[0]), out[0].get("n")), (T0, Some(&json!(1))));
    e.add(&event("d", T0 + 1500, 4), T0, now, &mut out);
    // Points T0+400 (both in), T0+1000 (first left), T0+1400 (second left, empty: skipped).
    let summary: Vec<(i64, Value)> = out
        .iter()
        .map(|o| (end_of(o) - T0, o.get("sum").unwrap().clone()))
        .collect();
    assert_eq!(
        summary,
        [(0, json!(1.0)), (400, json!(3.0)), (1000, json!(2.0))]
    );
}

type Results = BTreeMap<(String, i64), (u64, i64)>;

fn reference(events: &[(String, i64, i64)], size: i64, lateness: i64) -> Results {
    let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
    let mut accepted: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for (device, t, x) in events {
        if latest
            .get(device.as_str())
            .is_some_and(|m| *t < m - lateness)
        {
            continue;
        }
        latest.insert(
            device,
            latest.get(device.as_str()).map_or(*t, |m| (*m).max(*t)),
        );
        accepted.entry(device).or_default().push((*t, *x));
    }
    let mut results = Results::new();
    for (device, events) in accepted {
        let points: BTreeSet<i64> = events.iter().flat_map(|(t, _)| [*t, t + size]).collect();
        for p in points {
            let inside: Vec<i64> = events
                .iter()
                .filter(|(t, _)| p - size < *t && *t <= p)
                .map(|(_, x)| *x)
                .collect();
            if !inside.is_empty() {
                results.insert(
                    (device.to_owned(), p),
                    (inside.len() as u64, inside.iter().sum()),
                );
            }
        }
    }
    results
}

fn stream() -> impl Strategy<Value = Vec<(String, i64, i64)>> {
    proptest::collection::vec((0usize..2, -1500i64..1500, -20i64..20), 1..100).prop_map(|steps| {
        let mut clock = [0i64; 2];
        steps
            .into_iter()
            .map(|(device, step, x)| {
                clock[device] = (clock[device] + step.max(0)).max(0);
                (
                    format!("d{device}"),
                    T0 + (clock[device] + step.min(0)).max(0),
                    x,
                )
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn sliding_windows_match_the_reference(
        events in stream(),
        size in prop_oneof![Just(500i64), Just(1000), Just(2500)],
        lateness in prop_oneof![Just(0i64), Just(700), Just(3000)],
    ) {
        let mut e = engine(lateness as u64, size);
        let now = Instant::now();
        let mut out = Vec::new();
        for (device, t, x) in &events {
            e.add(&event(device, *t, *x), T0, now, &mut out);
        }
        e.tick(T0, now + Duration::from_millis(1), false, &mut out);
        prop_assert_eq!(e.open_windows(), 0);
        let mut results = Results::new();
        for o in &out {
            let key = (o.device_id.as_deref().unwrap().to_owned(), end_of(o));
            let value = (o.get("n").unwrap().as_u64().unwrap(), o.get("sum").unwrap().as_f64().unwrap() as i64);
            prop_assert!(results.insert(key, value).is_none(), "a change point was emitted twice");
        }
        prop_assert_eq!(results, reference(&events, size, lateness));
    }
}
