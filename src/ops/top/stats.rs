//! What `weir top` shows, read from `/metrics`: per component counters, turned into rates
//! between two samples, plus the connected devices and the active alarms.

use std::collections::BTreeMap;

/// One reading of `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub components: BTreeMap<String, Counters>,
    /// `device_gateway_connected_devices`, all gateways together.
    pub connected_devices: f64,
    /// `alarm_active`, all alarm transforms together.
    pub active_alarms: f64,
}

/// One component's series in one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub kind: String,
    pub type_name: String,
    pub received: f64,
    pub sent: f64,
    pub errors: f64,
    pub discarded: f64,
    /// Fill of its input channel, 0 to 1 (sources have none).
    pub buffer: Option<f64>,
    /// `component_latency_seconds`' sum and count (traced readings only).
    pub latency_sum: f64,
    pub latency_count: f64,
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: String,
    pub kind: String,
    pub type_name: String,
    pub in_per_sec: f64,
    pub out_per_sec: f64,
    pub errors: f64,
    pub discarded: f64,
    pub buffer: Option<f64>,
    /// Mean time since arrival of the traced readings seen since the last sample.
    pub latency_ms: Option<f64>,
}

impl Sample {
    /// Reads the OpenMetrics text of `/metrics`.
    pub fn parse(text: &str) -> Self {
        let mut sample = Sample::default();
        for line in text.lines() {
            let Some((name, labels, value)) = parse_line(line) else {
                continue;
            };
            match name {
                "device_gateway_connected_devices" => sample.connected_devices += value,
                "alarm_active" => sample.active_alarms += value,
                _ => sample.component(name, &labels, value),
            }
        }
        sample
    }

    fn component(&mut self, name: &str, labels: &[(String, String)], value: f64) {
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let Some(id) = label("component_id") else {
            return;
        };
        let counters = self.components.entry(id.to_owned()).or_default();
        if counters.kind.is_empty() {
            counters.kind = label("component_kind").unwrap_or_default().to_owned();
            counters.type_name = label("component_type").unwrap_or_default().to_owned();
        }
        match name {
            "component_received_events_total" => counters.received += value,
            "component_sent_events_total" => counters.sent += value,
            "component_errors_total" => counters.errors += value,
            "component_discarded_events_total" => counters.discarded += value,
            "buffer_utilization" => counters.buffer = Some(value),
            "component_latency_seconds_sum" => counters.latency_sum += value,
            "component_latency_seconds_count" => counters.latency_count += value,
            _ => {}
        }
    }
}

/// The table between two samples taken `seconds` apart (rates are 0 for the first).
pub fn rows(previous: Option<&Sample>, current: &Sample, seconds: f64) -> Vec<Row> {
    current
        .components
        .iter()
        .map(|(id, now)| {
            let before = previous.and_then(|p| p.components.get(id));
            let rate = |pick: fn(&Counters) -> f64| match before {
                Some(before) if seconds > 0.0 => ((pick(now) - pick(before)) / seconds).max(0.0),
                _ => 0.0,
            };
            let latency = before.and_then(|b| {
                let count = now.latency_count - b.latency_count;
                (count > 0.0).then(|| (now.latency_sum - b.latency_sum) / count * 1000.0)
            });
            Row {
                id: id.clone(),
                kind: now.kind.clone(),
                type_name: now.type_name.clone(),
                in_per_sec: rate(|c| c.received),
                out_per_sec: rate(|c| c.sent),
                errors: now.errors,
                discarded: now.discarded,
                buffer: now.buffer,
                latency_ms: latency,
            }
        })
        .collect()
}

/// A series' labels, in the order written.
type Labels = Vec<(String, String)>;

/// `name{labels} value` (labels optional); `None` for comments and what is not a sample.
fn parse_line(line: &str) -> Option<(&str, Labels, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open..]),
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, rest)
        }
    };
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inside) => parse_labels(inside)?,
        None => (Vec::new(), rest),
    };
    // The value, then maybe a timestamp or an exemplar.
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// Labels up to the closing `}`, and what follows it.
fn parse_labels(mut text: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches(',');
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        text = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP component_received_events Events
# TYPE component_received_events counter
component_received_events_total{component_id="in",component_kind="source",component_type="http"} 10
component_sent_events_total{component_id="in",component_kind="source",component_type="http",output="default"} 8
component_sent_events_total{component_id="in",component_kind="source",component_type="http",output="errors"} 2
buffer_utilization{component_id="out",component_kind="sink",component_type="file"} 0.25
component_latency_seconds_sum{component_id="out",component_kind="sink",component_type="file"} 0.5
component_latency_seconds_count{component_id="out",component_kind="sink",component_type="file"} 5
device_gateway_connected_devices{component_id="gw",component_kind="source",component_type="device_gateway"} 3
alarm_active{component_id="hot",component_kind="transform",component_type="alarm"} 2
weird{component_id="a \"quoted\" id",component_kind="x",component_type="y"} 1
# EOF
"#;

    #[test]
    fn metrics_become_rows_with_rates() {
        let before = Sample::parse(METRICS);
        assert_eq!(before.connected_devices, 3.0);
        assert_eq!(before.active_alarms, 2.0);
        assert!(before.components.contains_key("a \"quoted\" id"));
        let after = Sample::parse(
            &METRICS
                .replace("} 10", "} 30")
                .replace("latency_seconds_sum{component_id=\"out\",component_kind=\"sink\",component_type=\"file\"} 0.5", "latency_seconds_sum{component_id=\"out\",component_kind=\"sink\",component_type=\"file\"} 0.7")
                .replace("} 5\n", "} 7\n"),
        );
        let rows = rows(Some(&before), &after, 2.0);
        let input = rows.iter().find(|r| r.id == "in").unwrap();
        assert_eq!(input.in_per_sec, 10.0);
        assert_eq!(input.out_per_sec, 0.0);
        let output = rows.iter().find(|r| r.id == "out").unwrap();
        assert_eq!(output.buffer, Some(0.25));
        assert!((output.latency_ms.unwrap() - 100.0).abs() < 1e-6);
    }
}
