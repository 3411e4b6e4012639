//! The native evaluator against minijinja: a differential property test over generated
//! expressions and events, and the edge cases it is meant to cover, spelled out.

use std::sync::Arc;

use minijinja::Value as TemplateValue;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};

use super::{Scope, Val, build};
use crate::event::{Event, EventMeta, Fields};
use crate::template::{Condition, EXPRESSIONS, ValueExpr, from_template_value};

fn event(device: Option<&str>, fields: Value) -> Event {
    let Value::Object(map) = fields else {
        panic!("fields must be an object")
    };
    let fields: Fields = map;
    Event::new(
        device.map(Arc::from),
        fields,
        Arc::new(EventMeta::received_by("test".into())),
    )
}

/// A value's kind and exact representation (`1` and `1.0`, `-0.0` and `0.0` differ).
fn repr(value: &TemplateValue) -> String {
    format!("{:?}: {value:?}", value.kind())
}

/// How one expression compares on one event; `Ok(true)` when the native tree answered it
/// itself (not through a bail).
fn check(source: &str, event: &Event) -> Result<bool, TestCaseError> {
    let Ok(expr) = ValueExpr::compile(source) else {
        return Ok(false);
    };
    let reference = expr.eval(&event.view());
    let reference_json = reference
        .as_ref()
        .map(|v| (!v.is_undefined()).then(|| from_template_value(v)))
        .map_err(ToString::to_string);
    // What users get: a field value and a condition's verdict, errors included.
    let json = expr.eval_json(event).map_err(|e| e.to_string());
    prop_assert_eq!(&json, &reference_json, "`{}` as a value", source);
    let condition = Condition::compile(source).map_err(TestCaseError::fail)?;
    let verdict = condition.holds_for(event).map_err(|e| e.to_string());
    let reference_verdict = reference
        .as_ref()
        .map(TemplateValue::is_true)
        .map_err(ToString::to_string);
    prop_assert_eq!(&verdict, &reference_verdict, "`{}` as a condition", source);
    // The tree itself, where it answers: the same kind and value as minijinja's.
    let Some(node) = build(&EXPRESSIONS, source) else {
        return Ok(false);
    };
    let Ok(native) = node.eval(event) else {
        return Ok(false);
    };
    let reference = match reference {
        Ok(reference) => reference,
        Err(err) => {
            return Err(TestCaseError::fail(format!(
                "`{source}`: native {native:?}, minijinja failed: {err}"
            )));
        }
    };
    match &native {
        Val::Json(json) => prop_assert_eq!(*json, &from_template_value(&reference)),
        other => {
            let native = other
                .to_template()
                .map_err(|_| TestCaseError::fail("json"))?;
            prop_assert_eq!(repr(&native), repr(&reference), "`{}`", source);
        }
    }
    Ok(true)
}

fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            -1,
            2,
            3,
            -3,
            7,
            -7,
            10,
            100,
            i64::MAX,
            i64::MIN,
            i64::MAX - 1,
            i64::MIN + 1,
            (1 << 53) + 1,
            1 << 62,
            -(1 << 32),
        ]),
        -1000i64..1000,
        any::<i64>(),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::sample::select(vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            2.0,
            -7.5,
            0.1,
            1e308,
            -1e308,
            5e-324,
            9.223372036854776e18,
            -9.223372036854776e18,
            9007199254740992.0,
            20.0,
        ]),
        -1000.0f64..1000.0,
        any::<f64>().prop_filter("JSON holds finite numbers", |f| f.is_finite()),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "", "a", "ab", "b", "n-1", "A", "10", "1.5", "é", "None"
        ])
        .prop_map(String::from),
        "[a-c]{0,4}",
    ]
}

/// A field's value: every JSON kind, with numbers near every boundary.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => int().prop_map(Value::from),
        3 => float().prop_map(Value::from),
        2 => string().prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!(u64::MAX)),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            (inner.clone(), inner).prop_map(|(x, y)| json!({ "x": x, "y": y })),
        ]
    })
}

const FIELDS: [&str; 5] = ["a", "b", "s", "t", "o"];

fn events() -> impl Strategy<Value = Event> {
    (
        prop::option::of(prop::sample::select(vec!["d1", "n-1", ""])),
        prop::collection::vec(prop::option::of(value()), FIELDS.len()),
    )
        .prop_map(|(device, values)| {
            let mut fields = serde_json::Map::new();
            for (name, value) in FIELDS.iter().zip(values) {
                if let Some(value) = value {
                    fields.insert((*name).to_owned(), value);
                }
            }
            event(device, Value::Object(fields))
        })
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        int().prop_map(|i| i.to_string()),
        float().prop_map(|f| format!("{f:?}")),
        string().prop_map(|s| format!("'{s}'")),
        prop::sample::select(vec![
            "none",
            "true",
            "false",
            "None",
            "True",
            "[1, 'a']",
            "['a', 'b', 2.0]",
            "[]",
        ])
        .prop_map(String::from),
    ]
}

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(vec![
            "a", "b", "s", "t", "o", "missing", "device_id", "o.x", "o.y", "o.z", "s.x",
        ])
        .prop_map(String::from),
        8 => literal(),
        // Names the view or the environment answers, not a field.
        1 => prop::sample::select(vec!["meta.source", "range"]).prop_map(String::from),
    ]
}

/// Expressions over the fields: every operator, chains, tests, and some constructs only
/// minijinja evaluates (filters, methods, calls), unparenthesised at times so precedence is
/// the parser's.
fn expression() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 16, 3, |inner| {
        let binary = prop::sample::select(vec![
            "+", "-", "*", "/", "//", "%", "**", "~", "==", "!=", "<", "<=", ">", ">=", "in",
            "not in", "and", "or",
        ]);
        let test = prop::sample::select(vec![
            "defined", "undefined", "none", "number", "integer", "int", "float", "string",
            "boolean", "true", "false", "odd", "mapping",
        ]);
        let filter = prop::sample::select(vec!["abs", "int", "float", "round", "default(7)"]);
        prop_oneof![
            8 => (inner.clone(), binary.clone(), inner.clone(), any::<bool>()).prop_map(
                |(l, op, r, parens)| if parens { format!("({l} {op} {r})") } else { format!("{l} {op} {r}") }
            ),
            2 => (inner.clone(), binary, inner.clone(), prop::sample::select(vec!["<", "==", "in"]), inner.clone())
                .prop_map(|(a, op, b, op2, c)| format!("({a} {op} {b} {op2} {c})")),
            2 => inner.clone().prop_map(|e| format!("not {e}")),
            2 => inner.clone().prop_map(|e| format!("-{e}")),
            2 => (inner.clone(), inner.clone(), prop::option::of(inner.clone()))
                .prop_map(|(a, c, b)| match b {
                    Some(b) => format!("({a} if {c} else {b})"),
                    None => format!("({a} if {c})"),
                }),
            2 => (inner.clone(), any::<bool>(), test)
                .prop_map(|(e, not, t)| format!("({e} is {}{t})", if not { "not " } else { "" })),
            1 => (inner.clone(), filter).prop_map(|(e, f)| format!("({e} | {f})")),
            1 => inner.prop_map(|e| format!("({e}).upper()")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6000))]

    #[test]
    fn native_agrees_with_minijinja(source in expression(), event in events()) {
        check(&source, &event)?;
    }
}

/// The differential test is only worth something if the tree answers a good share of the
/// cases itself; a tree that always bails would agree trivially.
#[test]
fn the_tree_answers_most_generated_cases_itself() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut native, mut checked) = (0, 0);
    for _ in 0..2000 {
        let source = expression().new_tree(&mut runner).unwrap().current();
        let event = events().new_tree(&mut runner).unwrap().current();
        if ValueExpr::compile(&source).is_err() {
            continue;
        }
        checked += 1;
        native += usize::from(check(&source, &event).unwrap());
    }
    assert!(native * 4 > checked, "native {native} of {checked}");
}

/// The cases the brief names, each against minijinja through the same check.
#[test]
fn edge_cases_agree() {
    let e = event(
        Some("n-1"),
        json!({
            "temperature": 21.5, "seq": 7, "zero": 0, "fzero": 0.0, "max": i64::MAX,
            "min": i64::MIN, "s": "ab", "flag": true, "nothing": null, "big": u64::MAX,
            "o": {"x": 1, "y": [1, 2]}, "l": [1, "a"],
        }),
    );
    let cases = [
        "temperature * 9 / 5 + 32",
        "seq / 7",
        "seq // 2",
        "seq // -2",
        "-seq % 3",
        "seq % -3",
        "temperature // 2",
        "temperature % -2",
        "seq // zero",
        "seq % fzero",
        "seq / zero",
        "max + 1",
        "min - 1",
        "max * 2",
        "-min",
        "min // -1",
        "2 ** 62 * 2",
        "seq ** -1",
        "zero ** -1",
        "big + 1",
        "big > 1",
        "s ~ seq ~ temperature ~ nothing ~ flag ~ missing",
        "s + s",
        "s + seq",
        "s * 2",
        "seq == 7.0",
        "9007199254740993 == 9007199254740992.0",
        "9007199254740993 < 9007199254740992.0",
        "s < 1",
        "missing < 1",
        "missing == none",
        "nothing == none",
        "flag + 1",
        "flag == 1",
        "'a' in s",
        "'c' not in s",
        "1 in s",
        "seq in [1, 7]",
        "'7' in [1, 7]",
        "s in missing",
        "seq in o",
        "o.x + 1",
        "o.z is defined",
        "o.y",
        "missing.x",
        "l",
        "temperature is number and temperature < 200",
        "flag is number",
        "missing and 1",
        "nothing or s",
        "not o",
        "1 < seq < 10 < temperature",
        "seq if flag",
        "seq if nothing",
        "device_id ~ '/' ~ seq",
        "device_id.startswith('n-')",
        "meta.source",
        "range",
        "(1e308 * 10) - (1e308 * 10)",
        "-0.0",
        "0.0 * -1",
    ];
    let mut native = 0;
    for source in cases {
        native += usize::from(check(source, &e).unwrap_or_else(|err| panic!("{err}")));
    }
    assert!(
        native > cases.len() / 2,
        "native {native} of {}",
        cases.len()
    );
}

#[test]
fn unsupported_syntax_stays_with_minijinja() {
    for source in [
        "device_id.startswith('n-')",
        "temperature | round",
        "meta.source",
        "range(3)",
        "x[0]",
        "x is divisibleby(3)",
        "[a, b]",
    ] {
        assert!(!ValueExpr::compile(source).unwrap().is_native(), "{source}");
    }
    for source in [
        "temperature * 9 / 5 + 32",
        "temperature is number and temperature < 200",
        "site in ['a', 'b'] or device_id == 'x'",
        "o.x ~ '-' ~ seq if seq is defined else 'none'",
    ] {
        assert!(ValueExpr::compile(source).unwrap().is_native(), "{source}");
    }
}

/// A native evaluation never does more work than the fuel budget lets minijinja do: strings
/// past the byte budget go to minijinja, whose fuel decides.
#[test]
fn fuel_still_bounds_evaluation() {
    let half = "x".repeat(super::ops::BYTE_BUDGET / 2 + 1);
    let e = event(None, json!({ "s": half }));
    let concat = ValueExpr::compile("s ~ s").unwrap();
    let node = build(&EXPRESSIONS, "s ~ s").unwrap();
    assert!(
        node.eval(&e).is_err(),
        "past the byte budget the tree bails"
    );
    let json = concat.eval_json(&e).unwrap().unwrap();
    assert_eq!(json.as_str().map(str::len), Some(2 * half.len()));
    // Runaway expressions through the event path still run out of fuel.
    let huge = ValueExpr::compile("(s * 150) ~ (s * 150)").unwrap();
    let err = huge.eval_json(&e).unwrap_err();
    assert!(err.to_string().contains("fuel"), "{err}");
    let cond = Condition::compile("(s * 150) ~ (s * 150)").unwrap();
    assert!(cond.holds_for(&e).unwrap_err().to_string().contains("fuel"));
}

/// `Scope` is what the view shows: `device_id` is the event's, not a field of that name.
#[test]
fn device_id_is_the_events() {
    let e = event(Some("d1"), json!({ "device_id": "shadow" }));
    assert_eq!(e.device_id(), Some("d1"));
    let expr = ValueExpr::compile("device_id").unwrap();
    assert_eq!(expr.eval_json(&e).unwrap(), Some(json!("d1")));
    let none = event(None, json!({ "device_id": "shadow" }));
    assert_eq!(expr.eval_json(&none).unwrap(), None);
}
