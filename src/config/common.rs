//! Options a component takes beside its type's own, the same for every type of a section:
//! `redact` (sources, sinks, actions) and `trace` (sources).
//!
//! The loader splits them off as it splits off `type` and `inputs`, so no type declares
//! them and every type has them.

use schemars::JsonSchema;
use serde::Deserialize;

use super::component::{ComponentKind, FieldProblem};
use super::diagnostic::{Diagnostic, Diagnostics};
use super::yaml::{Node, NodeKind};

/// The keys of [`CommonOptions`], split off a component's mapping before its type's
/// options are read.
pub const COMMON_KEYS: &[&str] = &["redact", "trace"];

/// Options every component of a section has.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommonOptions {
    /// Fields of the events passing through this component that hold secrets: `weir tap`
    /// shows them as `***` wherever in an event they are (a name matches a key at any
    /// depth, `a.b` the key `b` under `a`). Device keys are always masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// Sample readings for tracing: each sampled reading logs one line per hop and feeds
    /// `component_latency_seconds`. Readings that arrive with a `traceparent` flagged
    /// sampled are traced whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceOptions>,
}

/// How a source samples readings for tracing.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceOptions {
    /// The share of readings sampled, 0 to 1 (`0.001`: one in a thousand).
    pub sample: f64,
}

impl CommonOptions {
    /// Which of these options a component of `kind` may take.
    pub fn allowed(kind: ComponentKind) -> &'static [&'static str] {
        match kind {
            ComponentKind::Source => &["redact", "trace"],
            ComponentKind::Sink | ComponentKind::Action => &["redact"],
            ComponentKind::Transform | ComponentKind::Aggregator => &[],
        }
    }

    /// Checks serde cannot express.
    pub fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if let Some(trace) = &self.trace
            && !(0.0..=1.0).contains(&trace.sample)
        {
            problems.push(FieldProblem::at(
                ["trace", "sample"],
                format!(
                    "{} is not a share: expected a number from 0 to 1, e.g. 0.001",
                    trace.sample
                ),
            ));
        }
        for (n, field) in self.redact.iter().enumerate() {
            if field.is_empty() || field.split('.').any(str::is_empty) {
                problems.push(FieldProblem {
                    path: vec![
                        super::PathStep::Key("redact".into()),
                        super::PathStep::Index(n),
                    ],
                    message: format!("`{field}` is not a field name: expected `name` or `a.b`"),
                });
            }
        }
        problems
    }

    /// The share of readings a source samples (0 without `trace`).
    pub fn sample_rate(&self) -> f64 {
        self.trace.as_ref().map_or(0.0, |t| t.sample)
    }
}

/// The options every type of the section takes (`redact`, `trace`), refused where the
/// section has no use for them.
pub(super) fn common_options(
    kind: ComponentKind,
    node: &Node,
    env: &dyn Fn(&str) -> Option<String>,
    diagnostics: &mut Diagnostics,
    id: &str,
) -> CommonOptions {
    let allowed = CommonOptions::allowed(kind);
    let mut entries = Vec::new();
    for (key, value) in node.as_map().into_iter().flatten() {
        if !COMMON_KEYS.contains(&key.name.as_str()) {
            continue;
        }
        match allowed.contains(&key.name.as_str()) {
            true => entries.push((key.clone(), value.clone())),
            false => diagnostics.push(
                Diagnostic::error(
                    Some(key.location.clone()),
                    format!(
                        "{}s take no `{}`: it is an option of {}",
                        kind.noun(),
                        key.name,
                        match key.name.as_str() {
                            "trace" => "sources",
                            _ => "sources, sinks and actions",
                        }
                    ),
                )
                .in_component(id),
            ),
        }
    }
    if entries.is_empty() {
        return CommonOptions::default();
    }
    let common = Node {
        location: node.location.clone(),
        kind: NodeKind::Map(entries),
    };
    let mut env_errors = Vec::new();
    let json = common.to_json(env, &mut env_errors);
    if !env_errors.is_empty() {
        diagnostics
            .0
            .extend(env_errors.into_iter().map(|d| d.in_component(id)));
        return CommonOptions::default();
    }
    match serde_path_to_error::deserialize::<_, CommonOptions>(json) {
        Ok(common) => common,
        Err(err) => {
            diagnostics.push(super::load::serde_diagnostic(&common, err).in_component(id));
            CommonOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    fn load(text: &str) -> Result<super::super::TopologyConfig, String> {
        super::super::load_str(&crate::CATALOGUE, "common.yaml", text, &|_| None)
            .map(|(config, _)| config)
            .map_err(|errors| errors.to_string())
    }

    #[test]
    fn redact_and_trace_are_read_beside_any_type() {
        let config = load(
            "sources:
  plant: { type: simulator, redact: [password], trace: { sample: 0.001 } }
sinks:
  out: { type: blackhole, inputs: [plant], redact: [config.token] }
",
        )
        .unwrap();
        let plant = config.components["plant"].config.common();
        assert_eq!(plant.redact, ["password"]);
        assert_eq!(plant.sample_rate(), 0.001);
        assert_eq!(
            config.components["out"].config.common().redact,
            ["config.token"]
        );
    }

    #[test]
    fn misplaced_or_wrong_options_are_refused_where_they_are_written() {
        let errors = load(
            "sources:
  plant: { type: simulator, trace: { sample: 2 } }
transforms:
  shaped: { type: remap, inputs: [plant], redact: [x] }
sinks:
  out: { type: blackhole, inputs: [shaped], trace: { sample: 0.5 }, redact: ['a..b'] }
",
        )
        .unwrap_err();
        assert!(errors.contains("2 is not a share"), "{errors}");
        assert!(errors.contains("transforms take no `redact`"), "{errors}");
        assert!(errors.contains("sinks take no `trace`"), "{errors}");
        assert!(errors.contains("`a..b` is not a field name"), "{errors}");
    }
}
