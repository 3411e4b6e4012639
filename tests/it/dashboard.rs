//! The Grafana dashboard (`packaging/grafana/weir.json`) asks only for what weir exports:
//! every PromQL query of its panels and variables is taken apart into its series
//! selectors (metric name and label matchers), and a running `weir` whose pipeline
//! exercises every component kind (an http source, a device gateway, enrich, remap,
//! filter, alarm, a tumbling window, a Redis sink, a log action) must serve a series
//! matching each of them on `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::{Value, json};

use crate::support::services::{self, Broker, Lease};
use crate::support::{Weir, azure_sdk, free_port};

/// One series selector of a query: `name{label="value", ...}`.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
}

#[derive(Debug, Clone, PartialEq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    /// Numbers and durations (`0.99`, `5m`).
    Number(String),
    /// `$var`, `${var}`, `$__rate_interval`: Grafana fills these in.
    Variable(String),
    Punct(String),
}

fn tokenize(query: &str) -> Vec<Token> {
    let chars: Vec<char> = query.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let mut text = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' && i + 1 < chars.len() {
                    i += 1;
                }
                text.push(chars[i]);
                i += 1;
            }
            i += 1;
            tokens.push(Token::Str(text));
        } else if c == '$' {
            let mut name = String::new();
            i += 1;
            let braced = i < chars.len() && chars[i] == '{';
            if braced {
                i += 1;
            }
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                name.push(chars[i]);
                i += 1;
            }
            if braced && i < chars.len() && chars[i] == '}' {
                i += 1;
            }
            tokens.push(Token::Variable(name));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let mut text = String::new();
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                text.push(chars[i]);
                i += 1;
            }
            tokens.push(Token::Number(text));
        } else if c.is_alphabetic() || c == '_' || c == ':' {
            let mut text = String::new();
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                text.push(chars[i]);
                i += 1;
            }
            tokens.push(Token::Ident(text));
        } else {
            // Two-character operators first: `=~ !~ != == >= <=`.
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            if ["=~", "!~", "!=", "==", ">=", "<="].contains(&two.as_str()) {
                tokens.push(Token::Punct(two));
                i += 2;
            } else {
                tokens.push(Token::Punct(c.to_string()));
                i += 1;
            }
        }
    }
    tokens
}

/// Words that are PromQL syntax, never a metric.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// The series selectors of a PromQL query: names that are not functions, aggregations,
/// keywords, grouping labels or label names inside `{}`; with their matchers.
fn selectors(query: &str) -> Vec<Selector> {
    let tokens = tokenize(query);
    let punct = |i: usize, p: &str| matches!(tokens.get(i), Some(Token::Punct(x)) if x == p);
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) if KEYWORDS.contains(&word.to_lowercase().as_str()) => {
                // `by (a, b)`, `on (a)`, `group_left (a)`: a list of label names.
                if punct(i + 1, "(") {
                    i = skip_past(&tokens, i + 1, ")");
                } else {
                    i += 1;
                }
            }
            // A function or an aggregation: `rate(`, `sum by (x) (`.
            Token::Ident(_) if punct(i + 1, "(") => i += 1,
            Token::Ident(_) if matches!(tokens.get(i + 1), Some(Token::Ident(w)) if w == "by" || w == "without") => {
                i += 1
            }
            Token::Ident(name) => {
                let mut selector = Selector {
                    name: name.clone(),
                    matchers: Vec::new(),
                };
                i += 1;
                if punct(i, "{") {
                    let (matchers, next) = matchers_at(&tokens, i);
                    selector.matchers = matchers;
                    i = next;
                }
                found.push(selector);
            }
            Token::Punct(p) if p == "{" => {
                // `{__name__="x"}`: a selector without a leading name.
                let (matchers, next) = matchers_at(&tokens, i);
                let (name, rest): (Vec<Matcher>, Vec<Matcher>) = matchers
                    .into_iter()
                    .partition(|m| m.label == "__name__" && m.op == "=");
                if let Some(name) = name.first() {
                    found.push(Selector {
                        name: name.value.clone(),
                        matchers: rest,
                    });
                }
                i = next;
            }
            // A range or subquery: `[5m]`, `[$__rate_interval]`, `[1h:5m]`.
            Token::Punct(p) if p == "[" => i = skip_past(&tokens, i, "]"),
            _ => i += 1,
        }
    }
    found
}

/// The index after the `close` that matches the opener at `open`.
fn skip_past(tokens: &[Token], open: usize, close: &str) -> usize {
    let mut i = open + 1;
    while i < tokens.len() {
        if matches!(&tokens[i], Token::Punct(p) if p == close) {
            return i + 1;
        }
        i += 1;
    }
    i
}

/// The matchers of `{...}` starting at `open`, and the index after its `}`.
fn matchers_at(tokens: &[Token], open: usize) -> (Vec<Matcher>, usize) {
    let mut matchers = Vec::new();
    let mut i = open + 1;
    while i < tokens.len() {
        match (&tokens[i], tokens.get(i + 1), tokens.get(i + 2)) {
            (Token::Punct(p), _, _) if p == "}" => return (matchers, i + 1),
            (Token::Punct(p), _, _) if p == "," => i += 1,
            (Token::Ident(label), Some(Token::Punct(op)), Some(value))
                if ["=", "!=", "=~", "!~"].contains(&op.as_str()) =>
            {
                let value = match value {
                    Token::Str(text) => text.clone(),
                    Token::Variable(name) => format!("${name}"),
                    other => panic!("a label matcher's value is {other:?}"),
                };
                matchers.push(Matcher {
                    label: label.clone(),
                    op: op.clone(),
                    value,
                });
                i += 3;
            }
            (other, _, _) => panic!("unexpected {other:?} in a label matcher list"),
        }
    }
    (matchers, i)
}

/// Every query of the dashboard: panel targets (rows' nested panels included) and the
/// variables' `label_values(...)`/`query_result(...)` queries.
fn queries(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(expr)) => out.push(expr.clone()),
                        ("definition", Value::String(def)) => out.push(variable_query(def)),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// The PromQL inside a variable's query: `label_values(m{a="b"}, label)` holds `m{a="b"}`.
fn variable_query(definition: &str) -> String {
    match definition.strip_prefix("label_values(") {
        Some(rest) => match rest.rfind(',') {
            Some(comma) => rest[..comma].to_owned(),
            // `label_values(label)`: no metric.
            None => String::new(),
        },
        None => definition
            .strip_prefix("query_result(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or(definition)
            .to_owned(),
    }
}

/// The series of a Prometheus text exposition: name and labels.
fn series(exposition: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut all = Vec::new();
    for line in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, _value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let chars: Vec<char> = labels.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let mut key = String::new();
            while i < chars.len() && chars[i] != '=' {
                if chars[i] != ',' {
                    key.push(chars[i]);
                }
                i += 1;
            }
            i += 2; // `="`
            let mut value = String::new();
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
            map.insert(key.trim().to_owned(), value);
        }
        all.push((name.to_owned(), map));
    }
    all
}

/// Whether a series satisfies a selector. Matchers on a Grafana variable (`$instance`)
/// match anything: Grafana fills them in, and `instance` is Prometheus's own label.
fn matches(selector: &Selector, name: &str, labels: &BTreeMap<String, String>) -> bool {
    selector.name == name
        && selector.matchers.iter().all(|m| {
            if m.value.contains('$') {
                return true;
            }
            let value = labels.get(&m.label).map(String::as_str).unwrap_or("");
            let regex = || Regex::new(&format!("^(?:{})$", m.value)).expect("a valid regex");
            match m.op.as_str() {
                "=" => value == m.value,
                "!=" => value != m.value,
                "=~" => regex().is_match(value),
                "!~" => !regex().is_match(value),
                op => panic!("unknown matcher {op}"),
            }
        })
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string("packaging/grafana/weir.json").expect("the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

#[test]
fn the_tokenizer_finds_selectors_and_skips_functions_groupings_and_ranges() {
    let query = r#"histogram_quantile(0.99, sum by (le, component_id) (rate(sink_commit_duration_seconds_bucket{instance=~"$instance", component_kind="sink"}[$__rate_interval])))
        / on (instance) group_left (version) max without (le) (build_info offset 5m) > bool 0.5
        or {__name__="alarm_active", component_id!="x"} unless absent(up)"#;
    let found = selectors(query);
    let names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sink_commit_duration_seconds_bucket",
            "build_info",
            "alarm_active",
            "up"
        ]
    );
    assert_eq!(
        found[0].matchers,
        [
            Matcher {
                label: "instance".into(),
                op: "=~".into(),
                value: "$instance".into()
            },
            Matcher {
                label: "component_kind".into(),
                op: "=".into(),
                value: "sink".into()
            },
        ]
    );
    assert_eq!(found[2].matchers[0].op, "!=");
    assert_eq!(
        variable_query(
            r#"label_values(component_sent_events_total{instance=~"$instance"}, component_id)"#
        ),
        r#"component_sent_events_total{instance=~"$instance"}"#
    );
    let exposition = "# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"z\"} 3\nup 1\n";
    let all = series(exposition);
    assert_eq!(all[0].0, "x_total");
    assert_eq!(all[0].1["b"], "q\"z");
    let selector = &selectors(r#"x_total{a="1", b=~"q.*"}"#)[0];
    assert!(matches(selector, &all[0].0, &all[0].1));
    assert!(!matches(
        &selectors(r#"x_total{a="2"}"#)[0],
        &all[0].0,
        &all[0].1
    ));
}

#[test]
fn the_dashboard_is_a_grafana_model_on_a_prometheus_datasource_variable() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "Grafana 10+"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "a Prometheus data source variable"
    );
    let mut panels = 0;
    let mut titles = Vec::new();
    fn visit(panel: &Value, panels: &mut usize, titles: &mut Vec<String>) {
        if panel["type"] == "row" {
            titles.push(panel["title"].as_str().unwrap_or_default().to_owned());
        } else {
            *panels += 1;
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel {} queries the data source variable",
                panel["title"]
            );
        }
        for inner in panel["panels"].as_array().into_iter().flatten() {
            visit(inner, panels, titles);
        }
    }
    for panel in dashboard["panels"].as_array().expect("panels") {
        visit(panel, &mut panels, &mut titles);
    }
    assert!(panels >= 20, "{panels} panels");
    for row in [
        "Ingest",
        "Errors and discards",
        "Buffers",
        "Windows",
        "Alarms and actions",
        "Registry",
        "Sinks",
        "Device gateway",
    ] {
        assert!(
            titles.iter().any(|t| t == row),
            "a row `{row}` in {titles:?}"
        );
    }
}

/// A pipeline with every component kind, so that every metric family has a series.
fn pipeline(
    dir: &std::path::Path,
    api: u16,
    http: u16,
    secured: u16,
    prefix: &str,
) -> std::path::PathBuf {
    let gateway = azure_sdk::gateway_source(dir, azure_sdk::gateway_address());
    let redis = services::redis();
    let text = format!(
        "data_dir: '{d}'
api: {{ listen: '127.0.0.1:{api}' }}
registry: {{ path: registry.redb }}
sources:
  readings: {{ type: http, listen: '127.0.0.1:{http}', event_time: ts }}
  secured: {{ type: http, listen: '127.0.0.1:{secured}', auth: sas }}
  gateway: {gateway}
transforms:
  known: {{ type: enrich, inputs: [readings], on_unknown_device: keep }}
  shaped: {{ type: remap, inputs: [known], set: {{ half: 'temperature / 2' }} }}
  valid: {{ type: filter, inputs: [shaped], condition: 'temperature < 200' }}
  hot: {{ type: alarm, inputs: [valid], raise: 'temperature > 100', clear: 'temperature < 50' }}
aggregators:
  minute: {{ type: tumbling, inputs: [valid], size: 1m, event_time: ts, late_events: drop, aggregates: {{ n: count() }} }}
sinks:
  warm: {{ type: redis, inputs: [valid], url: '{redis}/0', key: '{prefix}:{{{{ device_id }}}}', ttl: 10m }}
  rest: {{ type: blackhole, inputs: [minute, secured, gateway, shaped.errors, minute.errors] }}
actions:
  page: {{ type: log, inputs: [hot], message: '{{{{ device_id }}}} {{{{ state }}}}' }}
",
        d = dir.display()
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).expect("write the pipeline");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_asks_for_is_exported_by_a_running_weir() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let dir = tempfile::tempdir().unwrap();
    let (api, http, secured) = (free_port(), free_port(), free_port());
    let prefix = format!("dashboard-test:{}", std::process::id());
    let pipeline = pipeline(dir.path(), api, http, secured, &prefix);
    let weir = Weir::start(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;

    // A registered device (registry series), readings that pass, one the remap cannot
    // compute (an error), one the filter drops (a discard), a hot one (an alarm and its
    // notification), one late for its window, and a refused token (an auth failure).
    let made = weir
        .request(reqwest::Method::POST, "/v1/devices")
        .json(&json!({ "id": "dash-1", "tags": { "site": "a" } }))
        .send()
        .await
        .expect("POST /v1/devices");
    assert_eq!(made.status(), 201);
    let client = reqwest::Client::new();
    let now = jiff::Timestamp::now();
    let hour_ago = now - jiff::SignedDuration::from_hours(1);
    for reading in [
        json!({ "ts": now.to_string(), "temperature": 20 }),
        json!({ "ts": now.to_string(), "temperature": "warm" }),
        json!({ "ts": now.to_string(), "temperature": 300 }),
        json!({ "ts": now.to_string(), "temperature": 120 }),
        json!({ "ts": hour_ago.to_string(), "temperature": 20 }),
    ] {
        let answer = client
            .post(format!(
                "http://127.0.0.1:{http}/v1/devices/dash-1/messages"
            ))
            .json(&reading)
            .send()
            .await
            .expect("POST a reading");
        assert!(
            answer.status().is_success(),
            "{reading}: {}",
            answer.status()
        );
    }
    let refused = client
        .post(format!(
            "http://127.0.0.1:{secured}/v1/devices/dash-1/messages"
        ))
        .header("authorization", "SharedAccessSignature sr=x&sig=y&se=1")
        .json(&json!({ "temperature": 1 }))
        .send()
        .await
        .expect("POST with a bad token");
    assert_eq!(refused.status(), 401);

    let wanted: Vec<(String, Selector)> = queries(&dashboard())
        .into_iter()
        .flat_map(|q| selectors(&q).into_iter().map(move |s| (q.clone(), s)))
        .collect();
    assert!(wanted.len() >= 30, "{} selectors", wanted.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let exposition = weir.metrics().await;
        let all = series(&exposition);
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(_, s)| !all.iter().any(|(name, labels)| matches(s, name, labels)))
            .map(|(query, s)| format!("{} (matchers {:?}) in `{query}`", s.name, s.matchers))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "the dashboard asks for series weir does not export:\n{}",
        missing.join("\n")
    );
    weir.terminate();
    if let Ok(mut redis) =
        redis::Client::open(format!("{}/0", services::redis())).and_then(|c| c.get_connection())
    {
        let keys: Vec<String> =
            redis::Commands::keys(&mut redis, format!("{prefix}:*")).unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::Commands::del(&mut redis, keys);
        }
    }
}
