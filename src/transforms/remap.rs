//! `remap`: set, rename and drop fields.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FunctionTransform, TransformComponent, TransformContext, TransformOutput};
use crate::config::FieldProblem;
use crate::event::{Event, Value};
use crate::telemetry::events::ErrorType;
use crate::template::ValueExpr;

/// Reshapes events. Steps run in this order: `set`, `rename`, `drop`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemapConfig {
    /// Field name to minijinja expression, e.g. `temp_f: "temperature * 9 / 5 + 32"`.
    /// Every expression sees the event as it arrived here. An expression that yields
    /// nothing (an undefined name) leaves the field unset; `device_id` sets the device id.
    #[serde(default)]
    pub set: IndexMap<String, ValueExpr>,
    /// Old field name to new field name.
    #[serde(default)]
    pub rename: IndexMap<String, String>,
    /// Fields to remove.
    #[serde(default)]
    pub drop: Vec<String>,
}

impl TransformComponent for RemapConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.set.is_empty() && self.rename.is_empty() && self.drop.is_empty() {
            problems.push(FieldProblem::component(
                "remap does nothing: expected at least one of `set`, `rename`, `drop`",
            ));
        }
        for (from, to) in &self.rename {
            if to.is_empty() || from == "device_id" || to == "device_id" {
                problems.push(FieldProblem::at(
                    ["rename", from.as_str()],
                    "rename takes two non-empty field names other than `device_id` (use `set: { device_id: ... }`)",
                ));
            }
        }
        problems
    }

    fn build(&self, _: &TransformContext) -> anyhow::Result<Box<dyn FunctionTransform>> {
        Ok(Box::new(Remap {
            set: self
                .set
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            rename: self
                .rename
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            drop: self.drop.clone(),
            results: Vec::new(),
        }))
    }
}

pub struct Remap {
    set: Vec<(String, ValueExpr)>,
    rename: Vec<(String, String)>,
    drop: Vec<String>,
    /// Reused per event: the evaluated `set` values.
    results: Vec<Option<Value>>,
}

impl Remap {
    /// Evaluates every `set` expression against the unchanged event.
    fn evaluate(&mut self, event: &Event) -> Result<(), String> {
        self.results.clear();
        if self.set.is_empty() {
            return Ok(());
        }
        for (field, expr) in &self.set {
            let value = expr
                .eval_json(event)
                .map_err(|err| format!("`set.{field}` failed: {err}"))?;
            self.results.push(value);
        }
        Ok(())
    }
}

impl FunctionTransform for Remap {
    fn transform(&mut self, mut event: Event, out: &mut TransformOutput) {
        if let Err(message) = self.evaluate(&event) {
            return out.error(event, ErrorType::Expression, message);
        }
        for ((field, _), value) in self.set.iter().zip(self.results.drain(..)) {
            let Some(value) = value else { continue };
            if field == "device_id" {
                event.device_id = match value {
                    Value::String(s) => Some(s.into()),
                    Value::Null => None,
                    other => Some(other.to_string().into()),
                };
            } else {
                event.insert(field.clone(), value);
            }
        }
        if !self.rename.is_empty() || !self.drop.is_empty() {
            let fields = event.fields_mut();
            for (from, to) in &self.rename {
                if let Some(value) = fields.shift_remove(from) {
                    fields.insert(to.clone(), value);
                }
            }
            for field in &self.drop {
                fields.shift_remove(field);
            }
        }
        out.push(event);
    }
}
