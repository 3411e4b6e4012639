//! Session boundaries, and a property test against a naive simulation that keeps every
//! raw event and recomputes each session from them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::json;

use super::SessionWindows;
use crate::aggregators::engine::WindowEngine;
use crate::aggregators::window::testing::{self, event};
use crate::aggregators::window::{LatePolicy, Outcome};
use crate::event::Event;

const T0: i64 = 1_800_000_000_000;

fn engine(lateness_ms: u64, gap: i64, max: Option<i64>) -> SessionWindows {
    let aggregates = [("n", "count()"), ("sum", "sum(x)")];
    let spec = testing::spec(&aggregates, lateness_ms, LatePolicy::Drop);
    SessionWindows::new(spec, gap, max)
}

fn bounds(e: &Event) -> (String, i64, i64) {
    let ms = |f: &str| {
        e.get(f)
            .unwrap()
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond()
    };
    (
        e.device_id.as_deref().unwrap().to_owned(),
        ms("window_start"),
        ms("window_end"),
    )
}

#[test]
fn the_definition_is_spelled_as_checkpoints_hold_it() {
    // Checkpoints on disk hold this text: a new spelling would drop their open windows.
    assert_eq!(
        engine(0, 1000, Some(5000)).definition(),
        "session gap=1000 max=Some(5000) count(),sum(x)"
    );
    assert_eq!(
        engine(0, 1000, None).definition(),
        "session gap=1000 max=None count(),sum(x)"
    );
}

#[test]
fn a_pause_of_gap_ends_a_session_and_max_duration_splits_one() {
    let mut e = engine(0, 1000, Some(2500));
    let mut out = Vec::new();
    let now = Instant::now();
    for t in [0, 900, 1800] {
        e.add(&event("d", T0 + t, 1), T0, now, &mut out);
    }
    assert!(out.is_empty());
    // 2600 is past start + 2500: a new session; the first closes at start + max_duration.
    e.add(&event("d", T0 + 2600, 1), T0, now, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(bounds(&out[0]), ("d".into(), T0, T0 + 2500));
    assert_eq!(out[0].get("n"), Some(&json!(3)));
    // A pause of exactly `gap` ends the second session.
    e.add(&event("d", T0 + 3600, 1), T0, now, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(bounds(&out[1]), ("d".into(), T0 + 2600, T0 + 3600));
}

#[test]
fn an_event_bridging_two_sessions_merges_them() {
    let mut e = engine(5000, 1000, None);
    let mut out = Vec::new();
    let now = Instant::now();
    e.add(&event("d", T0, 1), T0, now, &mut out);
    e.add(&event("d", T0 + 1500, 2), T0, now, &mut out);
    assert_eq!(e.open_windows(), 2);
    assert_eq!(
        e.add(&event("d", T0 + 800, 4), T0, now, &mut out),
        Outcome::Folded
    );
    assert_eq!(e.open_windows(), 1);
    e.tick(T0, now + Duration::from_millis(1), false, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(bounds(&out[0]), ("d".into(), T0, T0 + 2500));
    assert_eq!(out[0].get("sum"), Some(&json!(7.0)));
}

type Results = BTreeMap<(String, i64, i64), (u64, i64)>;

/// Every session as its raw events; rules applied by brute force over them.
fn reference(events: &[(String, i64, i64)], gap: i64, max: Option<i64>, lateness: i64) -> Results {
    let within = |span: (i64, i64)| max.is_none_or(|m| span.1 - span.0 < m);
    let span = |s: &Vec<(i64, i64)>| {
        (
            s.iter().map(|e| e.0).min().unwrap(),
            s.iter().map(|e| e.0).max().unwrap(),
        )
    };
    let end = |s: &Vec<(i64, i64)>| {
        let (lo, hi) = span(s);
        max.map_or(hi + gap, |m| (hi + gap).min(lo + m))
    };
    let mut open: BTreeMap<String, Vec<Vec<(i64, i64)>>> = BTreeMap::new();
    let mut latest: BTreeMap<String, i64> = BTreeMap::new();
    let mut results = Results::new();
    let emit = |device: &str, s: &Vec<(i64, i64)>, results: &mut Results| {
        let key = (device.to_owned(), span(s).0, end(s));
        let value = (s.len() as u64, s.iter().map(|e| e.1).sum());
        assert!(results.insert(key, value).is_none());
    };
    for (device, t, x) in events {
        if latest.get(device).is_some_and(|m| *t < m - lateness) {
            continue;
        }
        let sessions = open.entry(device.clone()).or_default();
        let touching: Vec<usize> = (0..sessions.len())
            .filter(|&i| {
                let (lo, hi) = span(&sessions[i]);
                *t > lo - gap && *t < hi + gap
            })
            .collect();
        let mut all: Vec<(i64, i64)> = touching.iter().flat_map(|&i| sessions[i].clone()).collect();
        all.push((*t, *x));
        if touching.is_empty() {
            sessions.push(vec![(*t, *x)]);
        } else if within(span(&all)) {
            for &i in touching.iter().rev() {
                sessions.remove(i);
            }
            sessions.push(all);
        } else {
            let mut fits: Vec<usize> = touching
                .iter()
                .copied()
                .filter(|&i| span(&sessions[i]).0 <= *t && within((span(&sessions[i]).0, *t)))
                .collect();
            fits.sort_by_key(|&i| span(&sessions[i]).0);
            match fits.last() {
                Some(&i) => sessions[i].push((*t, *x)),
                None => sessions.push(vec![(*t, *x)]),
            }
        }
        let watermark = latest.get(device).map_or(*t, |m| (*m).max(*t));
        latest.insert(device.clone(), watermark);
        let (closed, still): (Vec<_>, Vec<_>) = sessions
            .drain(..)
            .partition(|s| end(s) <= watermark - lateness);
        *sessions = still;
        for s in closed {
            emit(device, &s, &mut results);
        }
    }
    for (device, sessions) in open {
        for s in sessions {
            emit(&device, &s, &mut results);
        }
    }
    results
}

fn stream() -> impl Strategy<Value = Vec<(String, i64, i64)>> {
    proptest::collection::vec((0usize..2, -2000i64..2500, -20i64..20), 1..120).prop_map(|steps| {
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
    fn sessions_match_the_reference(
        events in stream(),
        gap in prop_oneof![Just(500i64), Just(1000), Just(3000)],
        max in prop_oneof![Just(None), Just(Some(4000i64)), Just(Some(10_000))],
        lateness in prop_oneof![Just(0i64), Just(1000), Just(4000)],
    ) {
        let mut e = engine(lateness as u64, gap, max);
        let now = Instant::now();
        let mut out = Vec::new();
        for (device, t, x) in &events {
            e.add(&event(device, *t, *x), T0, now, &mut out);
        }
        e.tick(T0, now + Duration::from_millis(1), false, &mut out);
        prop_assert_eq!(e.open_windows(), 0);
        let mut results = Results::new();
        for o in &out {
            let value = (o.get("n").unwrap().as_u64().unwrap(), o.get("sum").unwrap().as_f64().unwrap() as i64);
            prop_assert!(results.insert(bounds(o), value).is_none(), "session emitted twice");
        }
        prop_assert_eq!(results, reference(&events, gap, max, lateness));
    }
}
