//! Conditions, value expressions and string templates: minijinja, compiled once.
//!
//! Every expression in a pipeline is compiled while the configuration is deserialized, so a
//! syntax error is reported at the YAML position of the field that holds it, long before any
//! event flows. At run time an expression is evaluated against an [`Event::view`], which
//! exposes the event's fields as top-level names.
//!
//! [`Event::view`]: crate::event::Event::view
//!
//! Conditions and value expressions also get a native form when they can (see [`native`]):
//! evaluated against a [`Scope`] (an event), it reads fields directly and computes without
//! minijinja's VM, and leaves anything it does not compute itself to minijinja.

mod native;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, LazyLock};

use minijinja::{Environment, Expression, UndefinedBehavior, Value as TemplateValue};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

pub use native::Scope;

/// The environment every expression is compiled in: lenient undefined handling, so that
/// `temperature is number and temperature < 200` is false (not an error) without the field.
static EXPRESSIONS: LazyLock<Environment<'static>> = LazyLock::new(environment);

/// What one evaluation may spend (minijinja's fuel: about one unit per instruction and per
/// 64 bytes a template creates): ~1M instructions or ~64 MB. Far above what a condition or
/// a template in a pipeline needs; without it, `range(100000)` nested in itself or
/// `'x' * 100000000` pinned a worker for minutes or took hundreds of MB for every event
/// (found probing the `template` fuzz target by hand).
pub const FUEL: u64 = 1_000_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(FUEL));
    // Python-style methods (`device_id.startswith('n-')`, `name.lower()`), as people
    // coming from Jinja in Python expect.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env
}

/// Why an expression could not be evaluated for one event.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(String);

impl From<minijinja::Error> for EvalError {
    fn from(err: minijinja::Error) -> Self {
        let mut message = err.kind().to_string();
        if let Some(detail) = err.detail() {
            message.push_str(": ");
            message.push_str(detail);
        }
        Self(message)
    }
}

/// Converts a minijinja value (a template or expression result) back into a JSON value.
pub fn from_template_value(value: &TemplateValue) -> serde_json::Value {
    use minijinja::value::ValueKind;
    use serde_json::Value;
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => Value::Null,
        ValueKind::Bool => Value::Bool(value.is_true()),
        ValueKind::Number => {
            if let Ok(i) = i64::try_from(value.clone()) {
                Value::from(i)
            } else if let Ok(f) = f64::try_from(value.clone()) {
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            } else {
                Value::Null
            }
        }
        ValueKind::String => Value::String(value.as_str().unwrap_or_default().to_owned()),
        _ => serde_json::to_value(value).unwrap_or(Value::Null),
    }
}

/// Renders a compile error as `what went wrong (at character N)`.
fn compile_error(source: &str, err: &minijinja::Error) -> String {
    let mut message = format!("invalid expression `{source}`: {}", err.kind());
    if let Some(detail) = err.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    message
}

/// A compiled minijinja expression that yields a value.
#[derive(Clone)]
pub struct ValueExpr {
    source: Arc<str>,
    compiled: Arc<Expression<'static, 'static>>,
    /// The native form, when the expression has one.
    native: Option<Arc<native::Node>>,
}

impl ValueExpr {
    /// Compiles `source`; the error names the expression and what is wrong with it.
    pub fn compile(source: &str) -> Result<Self, String> {
        let compiled = EXPRESSIONS
            .compile_expression_owned(source.to_owned())
            .map_err(|err| compile_error(source, &err))?;
        Ok(Self {
            source: source.into(),
            compiled: Arc::new(compiled),
            native: native::build(&EXPRESSIONS, source).map(Arc::new),
        })
    }

    /// Evaluates the expression against a context (usually [`crate::event::Event::view`]).
    pub fn eval(&self, context: &TemplateValue) -> Result<TemplateValue, EvalError> {
        Ok(self.compiled.eval(context.clone())?)
    }

    /// Evaluates the expression against an event, as a field value: `None` when it yields
    /// nothing (undefined). The same result as `from_template_value(eval(view))`, natively
    /// when it can be.
    pub fn eval_json(&self, scope: &dyn Scope) -> Result<Option<serde_json::Value>, EvalError> {
        if let Some(node) = &self.native
            && let Ok(value) = node.eval(scope).and_then(native::Val::into_json)
        {
            return Ok(value);
        }
        let value = self.eval(&scope.view())?;
        Ok((!value.is_undefined()).then(|| from_template_value(&value)))
    }

    /// The expression's truthiness for an event, natively when it can be.
    fn is_true(&self, scope: &dyn Scope) -> Result<bool, EvalError> {
        if let Some(node) = &self.native
            && let Ok(holds) = node.eval(scope).and_then(|value| value.is_true())
        {
            return Ok(holds);
        }
        Ok(self.eval(&scope.view())?.is_true())
    }

    /// Whether the expression has a native form (for tests and benchmarks).
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// The top-level names the expression reads.
    pub fn variables(&self) -> BTreeSet<String> {
        self.compiled
            .undeclared_variables(false)
            .into_iter()
            .collect()
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// A compiled minijinja expression used as a yes/no question.
#[derive(Clone)]
pub struct Condition(ValueExpr);

impl Condition {
    pub fn compile(source: &str) -> Result<Self, String> {
        ValueExpr::compile(source).map(Self)
    }

    /// Whether the condition holds: the expression's truthiness, as in a Jinja `if`.
    pub fn matches(&self, context: &TemplateValue) -> Result<bool, EvalError> {
        Ok(self.0.eval(context)?.is_true())
    }

    /// Whether the condition holds for an event: the same answer as `matches(view)`,
    /// natively when it can be.
    pub fn holds_for(&self, scope: &dyn Scope) -> Result<bool, EvalError> {
        self.0.is_true(scope)
    }

    pub fn is_native(&self) -> bool {
        self.0.is_native()
    }

    pub fn source(&self) -> &str {
        self.0.source()
    }

    pub fn variables(&self) -> BTreeSet<String> {
        self.0.variables()
    }
}

/// A compiled minijinja string template such as `device:{{ device_id }}`.
#[derive(Clone)]
pub struct Template {
    source: Arc<str>,
    /// minijinja ties a compiled template to an environment; each template owns a small one so
    /// it can live as long as its component and be dropped on reload.
    env: Arc<Environment<'static>>,
    /// A template without `{{`/`{%` renders to itself; skip the engine for it.
    is_literal: bool,
}

const TEMPLATE_NAME: &str = "template";

impl Template {
    pub fn compile(source: &str) -> Result<Self, String> {
        let mut env = environment();
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|err| compile_error(source, &err))?;
        Ok(Self {
            source: source.into(),
            env: Arc::new(env),
            is_literal: !source.contains("{{") && !source.contains("{%"),
        })
    }

    pub fn render(&self, context: &TemplateValue) -> Result<String, EvalError> {
        if self.is_literal {
            return Ok(self.source.to_string());
        }
        let template = self.env.get_template(TEMPLATE_NAME)?;
        Ok(template.render(context.clone())?)
    }

    /// The top-level names the template reads.
    pub fn variables(&self) -> BTreeSet<String> {
        self.env
            .get_template(TEMPLATE_NAME)
            .map(|t| t.undeclared_variables(false).into_iter().collect())
            .unwrap_or_default()
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

macro_rules! impl_config_string {
    ($ty:ident, $what:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let source = String::deserialize(deserializer)?;
                $ty::compile(&source).map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.source())
            }
        }

        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.source() == other.source()
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.source())
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "description": $what })
            }
        }
    };
}

impl_config_string!(
    ValueExpr,
    "A minijinja expression; event fields are top-level names."
);
impl_config_string!(
    Condition,
    "A minijinja condition, e.g. `temperature > 100`."
);
impl_config_string!(
    Template,
    "A minijinja template, e.g. `device:{{ device_id }}`."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_is_lenient_about_missing_fields() {
        let cond = Condition::compile("temperature is number and temperature < 200").unwrap();
        let ctx = minijinja::context! { temperature => 20 };
        assert!(cond.matches(&ctx).unwrap());
        assert!(!cond.matches(&minijinja::context! {}).unwrap());
    }

    #[test]
    fn python_style_methods_work() {
        let cond =
            Condition::compile("device_id.startswith('n-') and site.lower() == 'a'").unwrap();
        assert!(
            cond.matches(&minijinja::context! { device_id => "n-1", site => "A" })
                .unwrap()
        );
    }

    #[test]
    fn syntax_errors_name_the_expression() {
        let err = Condition::compile("temperature >").err().unwrap();
        assert!(err.contains("`temperature >`"), "{err}");
    }

    #[test]
    fn runaway_templates_and_expressions_stop_when_their_fuel_runs_out() {
        let ctx = minijinja::context! { device_id => "d7" };
        let nested = Template::compile(
            "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = nested.render(&ctx).unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let huge = ValueExpr::compile("('x' * 100000000) ~ ('x' * 100000000)").unwrap();
        let err = huge.eval(&ctx).unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
        // Each evaluation has its own budget: the same condition keeps working.
        let cond = Condition::compile("device_id == 'd7'").unwrap();
        for _ in 0..3 {
            assert!(cond.matches(&ctx).unwrap());
        }
    }

    #[test]
    fn template_renders_and_lists_variables() {
        let t = Template::compile("devices/{{ device_id }}/commands").unwrap();
        let ctx = minijinja::context! { device_id => "d7" };
        assert_eq!(t.render(&ctx).unwrap(), "devices/d7/commands");
        assert_eq!(t.variables().into_iter().collect::<Vec<_>>(), ["device_id"]);
    }
}
