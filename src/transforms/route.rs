//! `route`: send each event to the named outputs whose condition it meets.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FunctionTransform, TransformComponent, TransformContext, TransformOutput};
use crate::config::{FieldProblem, OutputName};
use crate::event::Event;
use crate::telemetry::events::ErrorType;
use crate::template::Condition;

/// The output of `route` for events that matched no route.
pub const UNMATCHED: &str = "_unmatched";

/// Splits a stream: each route is a named output (`<id>.<route>`) carrying the events that
/// meet its condition. An event may match several routes; one that matches none goes to
/// `<id>._unmatched`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Output name to condition, e.g. `hot: "temperature > 90"`.
    pub routes: IndexMap<String, Condition>,
}

impl TransformComponent for RouteConfig {
    fn named_outputs(&self) -> Vec<OutputName> {
        let mut outputs: Vec<_> = self.routes.keys().map(|k| OutputName(k.clone())).collect();
        outputs.push(OutputName(UNMATCHED.into()));
        outputs
    }

    fn has_default_output(&self) -> bool {
        false
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.routes.is_empty() {
            problems.push(FieldProblem::at(["routes"], "expected at least one route"));
        }
        for name in self.routes.keys() {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid || name == UNMATCHED || name == OutputName::ERRORS {
                problems.push(FieldProblem::at(
                    ["routes", name.as_str()],
                    format!(
                        "`{name}` cannot name a route: expected letters, digits, `_` or `-`, other than `{UNMATCHED}` and `errors`"
                    ),
                ));
            }
        }
        problems
    }

    fn build(&self, _: &TransformContext) -> anyhow::Result<Box<dyn FunctionTransform>> {
        Ok(Box::new(Route {
            routes: self
                .routes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            matched: Vec::new(),
        }))
    }
}

pub struct Route {
    routes: Vec<(String, Condition)>,
    /// Reused per event: indexes of the matching routes.
    matched: Vec<usize>,
}

impl FunctionTransform for Route {
    fn transform(&mut self, event: Event, out: &mut TransformOutput) {
        self.matched.clear();
        for (i, (name, condition)) in self.routes.iter().enumerate() {
            match condition.holds_for(&event) {
                Ok(true) => self.matched.push(i),
                Ok(false) => {}
                Err(err) => {
                    let message = format!("route `{name}` failed: {err}");
                    return out.error(event, ErrorType::Expression, message);
                }
            }
        }
        match self.matched.split_last() {
            None => out.push_named(UNMATCHED, event),
            Some((&last, rest)) => {
                for &i in rest {
                    out.push_named(&self.routes[i].0, event.clone());
                }
                out.push_named(&self.routes[last].0, event);
            }
        }
    }
}
