//! Judging what a test's run produced: `count`, `conditions` (strict: every event taken
//! must satisfy every condition, unlike Vector, where one matching event passes), `expect`
//! (the exact events, with a diff) and `no_outputs_from`; each failure says what was
//! expected, what came, and which event broke which condition.

use serde_json::{Map, Value};

use super::events::{differences, observed, show};
use super::harness::Taken;
use super::suite::{PlannedOutput, PlannedTest};
use crate::event::Event;

/// Events shown under one failure, at most.
const SHOWN: usize = 10;

/// Every failed assertion of a test, one paragraph each; empty when it passed.
pub fn judge(test: &PlannedTest, taken: &Taken) -> Vec<String> {
    let mut failures = Vec::new();
    for output in &test.outputs {
        let events: Vec<&Event> = output
            .refs
            .iter()
            .flat_map(|(_, r)| taken.get(r).into_iter().flatten())
            .collect();
        failures.extend(judge_output(output, &events));
    }
    for (text, reference) in &test.silent {
        let events = taken.get(reference).map(Vec::as_slice).unwrap_or_default();
        if !events.is_empty() {
            let mut text = format!(
                "`{text}` emitted {}, expected none (no_outputs_from):",
                plural(events.len(), "event")
            );
            list_events(&mut text, events.iter(), &[]);
            failures.push(text);
        }
    }
    failures
}

fn judge_output(output: &PlannedOutput, events: &[&Event]) -> Vec<String> {
    let label = output.label();
    let mut failures = Vec::new();
    if let Some(count) = output.count
        && count != events.len()
        && output.expect.is_none()
    {
        let mut text = format!(
            "output `{label}` ({}): expected {}, got {}",
            output.location,
            plural(count, "event"),
            events.len()
        );
        if !events.is_empty() {
            text.push(':');
            list_events(&mut text, events.iter().copied(), &[]);
        }
        failures.push(text);
    }
    if !output.conditions.is_empty() {
        failures.extend(judge_conditions(output, &label, events));
    }
    if let Some(expected) = &output.expect {
        let got: Vec<Map<String, Value>> = events.iter().map(|e| observed(e)).collect();
        if let Some(diff) = diff(expected, &got, output.ordered) {
            failures.push(format!(
                "output `{label}` ({}): `expect` does not match ({} expected, {} got):\n{diff}",
                output.location,
                expected.len(),
                got.len()
            ));
        }
    }
    failures
}

/// Strict conditions: at least one event (unless `count: 0` says none may come), and
/// every event satisfies every condition.
fn judge_conditions(output: &PlannedOutput, label: &str, events: &[&Event]) -> Vec<String> {
    if events.is_empty() {
        return match output.count {
            Some(0) => Vec::new(),
            _ => vec![format!(
                "output `{label}` ({}): no event reached it, so its conditions cannot hold",
                output.location
            )],
        };
    }
    let mut failed: Vec<String> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let view = event.view();
        for condition in &output.conditions {
            let verdict = match condition.matches(&view) {
                Ok(true) => continue,
                Ok(false) => "is false".to_owned(),
                Err(err) => format!("cannot be evaluated: {err}"),
            };
            failed.push(format!(
                "  event {} of {}: condition `{}` {verdict}\n    {}",
                i + 1,
                events.len(),
                condition.source(),
                show(&observed(event), &[])
            ));
        }
    }
    if failed.is_empty() {
        return Vec::new();
    }
    let total = failed.len();
    failed.truncate(SHOWN);
    let mut text = format!(
        "output `{label}` ({}): {} (every event must satisfy every condition):\n{}",
        output.location,
        plural(total, "failed condition"),
        failed.join("\n")
    );
    if total > SHOWN {
        text.push_str(&format!("\n  ... and {} more", total - SHOWN));
    }
    vec![text]
}

/// The difference between the events expected and got, or `None` when they match:
/// `- ` lines are expected events nothing matched (with how the closest event differs),
/// `+ ` lines events that came but were not expected.
fn diff(
    expected: &[Map<String, Value>],
    got: &[Map<String, Value>],
    ordered: bool,
) -> Option<String> {
    let meta_keys: Vec<&str> = expected
        .iter()
        .filter_map(|e| e.get("meta")?.as_object())
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    let matches = |e: &Map<String, Value>, g: &Map<String, Value>| differences(e, g).is_empty();
    let mut lines = Vec::new();
    if ordered {
        let same =
            expected.len() == got.len() && expected.iter().zip(got).all(|(e, g)| matches(e, g));
        if same {
            return None;
        }
        for i in 0..expected.len().max(got.len()) {
            match (expected.get(i), got.get(i)) {
                (Some(e), Some(g)) if matches(e, g) => {
                    lines.push(format!("  {}", show(g, &meta_keys)))
                }
                (Some(e), Some(g)) => {
                    lines.push(format!("- {}", Value::Object(e.clone())));
                    lines.push(format!("+ {}", show(g, &meta_keys)));
                    lines.push(format!(
                        "    event {}: {}",
                        i + 1,
                        differences(e, g).join("; ")
                    ));
                }
                (Some(e), None) => lines.push(format!("- {}", Value::Object(e.clone()))),
                (None, Some(g)) => lines.push(format!("+ {}", show(g, &meta_keys))),
                (None, None) => {}
            }
        }
        return Some(lines.join("\n"));
    }
    // In any order: each expected event takes the first unmatched event equal to it.
    let mut used = vec![false; got.len()];
    let mut missing = Vec::new();
    for e in expected {
        match (0..got.len()).find(|&j| !used[j] && matches(e, &got[j])) {
            Some(j) => used[j] = true,
            None => missing.push(e),
        }
    }
    let extra: Vec<&Map<String, Value>> = got
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|(g, _)| g)
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return None;
    }
    for e in &missing {
        lines.push(format!("- {}", Value::Object((*e).clone())));
        let closest = extra.iter().map(|g| differences(e, g)).min_by_key(Vec::len);
        if let Some(closest) = closest {
            lines.push(format!("    closest event got: {}", closest.join("; ")));
        }
    }
    for g in &extra {
        lines.push(format!("+ {}", show(g, &meta_keys)));
    }
    Some(lines.join("\n"))
}

fn list_events<'a>(
    text: &mut String,
    events: impl ExactSizeIterator<Item = &'a Event>,
    meta: &[&str],
) {
    let total = events.len();
    for event in events.take(SHOWN) {
        text.push_str("\n    ");
        text.push_str(&show(&observed(event), meta));
    }
    if total > SHOWN {
        text.push_str(&format!("\n    ... and {} more", total - SHOWN));
    }
}

fn plural(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn maps(values: Value) -> Vec<Map<String, Value>> {
        values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_object().unwrap().clone())
            .collect()
    }

    #[test]
    fn the_diff_shows_missing_and_extra_events_and_how_they_differ() {
        let expected = maps(json!([{ "device_id": "a", "n": 2 }, { "device_id": "b", "n": 1 }]));
        let got = maps(json!([
            { "device_id": "b", "n": 1, "meta": { "source": "w", "event_time": "2026-01-01T00:00:00Z" } },
            { "device_id": "a", "n": 3, "meta": { "source": "w", "event_time": "2026-01-01T00:00:00Z" } }
        ]));
        assert_eq!(
            diff(&expected, &got, false).unwrap(),
            "- {\"device_id\":\"a\",\"n\":2}\n    closest event got: `n` expected 2, got 3\n+ {\"device_id\":\"a\",\"n\":3,\"meta\":{\"event_time\":\"2026-01-01T00:00:00Z\"}}"
        );
        // In any order, the same events match; in order, they do not.
        let swapped = maps(json!([{ "device_id": "b", "n": 1 }, { "device_id": "a", "n": 2 }]));
        assert_eq!(diff(&expected, &swapped, false), None);
        let ordered = diff(&expected, &swapped, true).unwrap();
        assert!(
            ordered.contains("    event 1: `device_id` expected \"a\", got \"b\""),
            "{ordered}"
        );
    }
}
