//! The language of a pipeline's unit tests (`weir test`): the `tests:` list, in a pipeline
//! file or in a `*.test.yaml` file beside it.
//!
//! The keys are Vector's, so its users know them: each test inserts events at a transform
//! or aggregator (`inputs: [{ insert_at, value | events | log_fields }]`), takes what
//! reaches a component's output (`outputs: [{ extract_from, conditions | expect | count
//! }]`) and may require that an output stays silent (`no_outputs_from`). A test may also
//! declare the devices the registry holds while it runs (`registry: { devices: [...] }`).
//!
//! Tests are read here with their positions, so a mistake in one names its file, line and
//! test; running them is `weir test`'s job, outside the engine.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::diagnostic::{Diagnostic, Diagnostics};
use super::load::serde_diagnostic;
use super::units::Duration;
use super::yaml::{Node, NodeKind, PathStep};
use crate::template::Condition;

/// Whether `path` holds unit tests for a pipeline (`*.test.yaml`, `*.test.yml`), which
/// `weir test` reads and a directory's pipeline files leave out.
pub fn is_test_file(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|name| name.ends_with(".test.yaml") || name.ends_with(".test.yml"))
}

/// One unit test of a pipeline.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitTest {
    /// What the test is called in reports.
    pub name: String,
    /// The devices the registry holds while the test runs (for `enrich`); the registry
    /// is a fresh one in a temporary `data_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryFixture>,
    /// Events inserted into the pipeline, in order per `insert_at`.
    pub inputs: Vec<TestInput>,
    /// What must come out, and where.
    #[serde(default)]
    pub outputs: Vec<TestOutput>,
    /// Components (`id`) or named outputs (`id.errors`) that must emit nothing.
    #[serde(default)]
    pub no_outputs_from: Vec<String>,
    /// How long the test may run before it fails (default 30s).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Devices for the registry of one test.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryFixture {
    pub devices: Vec<DeviceFixture>,
}

/// One device of a test's registry.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceFixture {
    pub id: String,
    /// `enabled` (default) or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FixtureStatus>,
    /// Tags, which `enrich` adds as `device.<tag>`.
    #[serde(default)]
    pub tags: Map<String, Value>,
    #[serde(default)]
    pub desired: Map<String, Value>,
    #[serde(default)]
    pub reported: Map<String, Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FixtureStatus {
    Enabled,
    Disabled,
}

impl FixtureStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
}

/// Events inserted at one component. An event is a mapping of its fields plus
/// `device_id` and, optionally, `meta` (`event_time`, `received_at`, `source`, `topic`,
/// `routing_key`, `headers`, `trace_id`): the shape the `file` sink writes. Without
/// `meta.event_time` an event's time is when the test inserts it, as a source would set.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestInput {
    /// The transform or aggregator the events enter, as if its inputs had sent them.
    pub insert_at: String,
    /// One event: a mapping, or JSON text of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Several events: a list of mappings (or JSON texts), or NDJSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Value>,
    /// One event given as its fields (Vector's spelling of `value` for logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_fields: Option<Map<String, Value>>,
}

/// What must reach one output.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestOutput {
    /// A component (`alarm`) or a named output (`alarm.errors`, `route.hot`), or a list of
    /// them (their events are taken together).
    pub extract_from: OneOrMany,
    /// minijinja conditions (weir's condition syntax: fields are top-level names, with
    /// `device_id` and `meta`). Strict: every event taken must satisfy every condition,
    /// and at least one event must be taken unless `count: 0`.
    #[serde(default)]
    pub conditions: Conditions,
    /// The exact events expected, in any order (with `ordered: true`, in this order):
    /// `device_id` and every field must match (numbers by value), and the `meta` keys
    /// given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Vec<Value>>,
    /// How many events must be taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Compare `expect` in order.
    #[serde(default)]
    pub ordered: bool,
}

/// One output reference or several.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<&str> {
        match self {
            Self::One(one) => vec![one.as_str()],
            Self::Many(many) => many.iter().map(String::as_str).collect(),
        }
    }
}

/// One condition or a list of them.
#[derive(Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(untagged)]
pub enum Conditions {
    #[default]
    None,
    One(Condition),
    Many(Vec<Condition>),
}

impl<'de> Deserialize<'de> for Conditions {
    /// By hand, so a condition that does not compile says why (an untagged enum would say
    /// only that no variant matched).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(deserializer)? {
            Value::Null => Ok(Self::None),
            Value::String(source) => Condition::compile(&source).map(Self::One).map_err(Error::custom),
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(source) => Condition::compile(&source)
                        .map_err(|err| Error::custom(format!("condition {i}: {err}"))),
                    other => Err(Error::custom(format!(
                        "condition {i} is `{other}`: expected a condition such as `temperature > 90`"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(Self::Many),
            other => Err(Error::custom(format!(
                "`{other}` is not a condition: expected a condition or a list of them"
            ))),
        }
    }
}

impl Conditions {
    pub fn items(&self) -> &[Condition] {
        match self {
            Self::None => &[],
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

/// A test as written, with where it was written.
#[derive(Clone, Debug)]
pub struct LocatedTest {
    pub test: UnitTest,
    /// The test's mapping, to locate its fields in later messages.
    pub node: Node,
}

impl LocatedTest {
    /// A diagnostic at `path` inside the test, naming it.
    pub fn error_at(&self, path: &[PathStep], message: impl std::fmt::Display) -> Diagnostic {
        Diagnostic::error(
            Some(self.node.locate(path).clone()),
            format!("test `{}`: {message}", self.test.name),
        )
    }
}

/// Reads the `tests:` list of one file (`tests` is the value of that key).
pub fn parse_tests(
    tests: &Node,
    env: &dyn Fn(&str) -> Option<String>,
    diagnostics: &mut Diagnostics,
) -> Vec<LocatedTest> {
    let items = match &tests.kind {
        NodeKind::Seq(items) => items,
        NodeKind::Null => return Vec::new(),
        _ => {
            diagnostics.push(Diagnostic::error(
                Some(tests.location.clone()),
                format!(
                    "`tests` holds {}: expected a list of tests, each with `name`, `inputs` and `outputs`",
                    tests.kind_name()
                ),
            ));
            return Vec::new();
        }
    };
    let mut parsed = Vec::new();
    for node in items {
        let name = match node.get("name").map(|n| &n.kind) {
            Some(NodeKind::String(name)) => format!("test `{name}`: "),
            _ => String::new(),
        };
        let mut errors = Vec::new();
        let json = node.to_json(env, &mut errors);
        if !errors.is_empty() {
            diagnostics.0.extend(errors);
            continue;
        }
        match serde_path_to_error::deserialize::<_, UnitTest>(json) {
            Ok(test) => {
                let located = LocatedTest {
                    test,
                    node: node.clone(),
                };
                check(&located, diagnostics);
                parsed.push(located);
            }
            Err(err) => {
                let mut diagnostic = serde_diagnostic(node, err);
                diagnostic.message = format!("{name}{}", diagnostic.message);
                diagnostics.push(diagnostic);
            }
        }
    }
    parsed
}

/// What serde cannot say about one test.
fn check(located: &LocatedTest, diagnostics: &mut Diagnostics) {
    let test = &located.test;
    if test.name.trim().is_empty() {
        diagnostics.push(located.error_at(&[key("name")], "expected a non-empty name"));
    }
    if test.inputs.is_empty() {
        diagnostics.push(located.error_at(
            &[key("inputs")],
            "expected at least one input (`insert_at` and `value`, `events` or `log_fields`)",
        ));
    }
    for (i, input) in test.inputs.iter().enumerate() {
        let given = [
            input.value.is_some(),
            input.events.is_some(),
            input.log_fields.is_some(),
        ]
        .into_iter()
        .filter(|given| *given)
        .count();
        if given != 1 {
            diagnostics.push(located.error_at(
                &[key("inputs"), PathStep::Index(i)],
                format!("input {i}: expected exactly one of `value`, `events` or `log_fields`"),
            ));
        }
    }
    if test.outputs.is_empty() && test.no_outputs_from.is_empty() {
        diagnostics.push(located.error_at(
            &[key("name")],
            "nothing is checked: expected `outputs` or `no_outputs_from`",
        ));
    }
    for (i, output) in test.outputs.iter().enumerate() {
        let at = [key("outputs"), PathStep::Index(i)];
        if output.conditions.items().is_empty() && output.expect.is_none() && output.count.is_none()
        {
            diagnostics.push(located.error_at(
                &at,
                format!("output {i}: expected `conditions`, `expect` or `count`"),
            ));
        }
        if output.extract_from.items().is_empty() {
            diagnostics.push(located.error_at(
                &at,
                format!("output {i}: `extract_from` is empty: expected a component id"),
            ));
        }
        if output.ordered && output.expect.is_none() {
            diagnostics
                .push(located.error_at(&at, format!("output {i}: `ordered` goes with `expect`")));
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, device) in test.registry.iter().flat_map(|r| &r.devices).enumerate() {
        if !names.insert(device.id.as_str()) {
            diagnostics.push(located.error_at(
                &[key("registry"), key("devices"), PathStep::Index(i)],
                format!("device `{}` is listed twice", device.id),
            ));
        }
    }
}

fn key(name: &str) -> PathStep {
    PathStep::Key(name.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;

    fn parse(text: &str) -> (Vec<LocatedTest>, Diagnostics) {
        let root = Node::parse(&Arc::from(Path::new("p.yaml")), text).unwrap();
        let mut diagnostics = Diagnostics::default();
        let tests = parse_tests(root.get("tests").unwrap(), &|_| None, &mut diagnostics);
        (tests, diagnostics)
    }

    #[test]
    fn a_test_reads_vectors_keys() {
        let (tests, diagnostics) = parse(
            "tests:
  - name: hot
    inputs:
      - insert_at: valid
        value: { device_id: d1, temperature: 99 }
    outputs:
      - extract_from: hot.alarm
        conditions: \"temperature > 90\"
        count: 1
    no_outputs_from: [valid.errors]
",
        );
        assert!(diagnostics.0.is_empty(), "{diagnostics}");
        let test = &tests[0].test;
        assert_eq!(test.name, "hot");
        assert_eq!(test.outputs[0].extract_from.items(), ["hot.alarm"]);
        assert_eq!(test.outputs[0].conditions.items().len(), 1);
        assert_eq!(test.no_outputs_from, ["valid.errors"]);
    }

    /// A test named `name` whose input gives both `value` and `events` (a mistake of its
    /// own), ending with the output line `last`.
    fn with_output(name: &str, last: &str) -> (Vec<LocatedTest>, Diagnostics) {
        parse(&format!(
            "tests:
  - name: {name}
    inputs:
      - insert_at: valid
        value: {{ a: 1 }}
        events: [{{ a: 2 }}]
    outputs:
      - extract_from: valid
        {last}
"
        ))
    }

    #[test]
    fn mistakes_name_the_file_line_and_test() {
        let (_, diagnostics) = with_output("typo", "conditons: [\"a > 1\"]");
        let text = diagnostics.to_string();
        assert!(
            text.contains(
                "p.yaml:9:20: test `typo`: unknown field `conditons` (did you mean `conditions`?)"
            ),
            "{text}"
        );
        let (_, diagnostics) = with_output("both", "conditions: \"a >\"");
        let text = diagnostics.to_string();
        assert!(
            text.contains("p.yaml:9:21: test `both`: `outputs.0.conditions`")
                && text.contains("invalid expression `a >`"),
            "{text}"
        );
        let (_, diagnostics) = with_output("both", "count: 2");
        assert_eq!(
            diagnostics.to_string(),
            "error: p.yaml:4:9: test `both`: input 0: expected exactly one of `value`, `events` or `log_fields`\n1 error"
        );
    }
}
