//! The column mapping's unit tests.

use super::*;
use crate::event::{EventMeta, Fields};
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Float64Type;

fn event(fields: Value) -> Event {
    let Value::Object(fields) = fields else {
        panic!("test events are objects");
    };
    let fields: Fields = fields;
    Event::new(
        Some("dev-1".into()),
        fields,
        Arc::new(EventMeta::received_by("s".into())),
    )
}

#[test]
fn new_fields_become_columns_typed_by_their_first_value() {
    let mut columns = Columns::new(vec![Derived::Date], IndexMap::new(), 500);
    let encoded = columns
        .encode(
            vec![
                event(serde_json::json!({"temperature": 21.5, "site": "p3", "ok": true})),
                event(serde_json::json!({"temperature": 22, "tags": {"a": 1}})),
            ],
            true,
        )
        .expect("encodes");
    assert!(encoded.rejected.is_empty());
    let schema = encoded.batch.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "device_id",
            "time",
            "received_at",
            "date",
            "temperature",
            "site",
            "ok",
            "tags"
        ]
    );
    let temperature = encoded.batch.column(4).as_primitive::<Float64Type>();
    assert_eq!(temperature.value(1), 22.0);
    let tags = encoded.batch.column(7).as_string::<i32>();
    assert!(tags.is_null(0));
    assert_eq!(tags.value(1), r#"{"a":1}"#);
}

#[test]
fn a_value_that_does_not_fit_its_column_rejects_only_its_event() {
    let mut declared = IndexMap::new();
    declared.insert("rpm".to_owned(), ColumnType::Long);
    let mut columns = Columns::new(Vec::new(), declared, 500);
    let encoded = columns
        .encode(
            vec![
                event(serde_json::json!({"rpm": 3000, "temperature": 20.5})),
                event(serde_json::json!({"rpm": 3000.5})),
                event(serde_json::json!({"temperature": "hot"})),
                event(serde_json::json!({"rpm": 2000.0})),
            ],
            true,
        )
        .expect("encodes");
    assert_eq!(encoded.batch.num_rows(), 2);
    let reasons: Vec<&str> = encoded.rejected.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "field `rpm` is a number but its column is long",
            "field `temperature` is a string but its column is double"
        ]
    );
}

#[test]
fn without_evolution_unknown_fields_are_rejected() {
    let mut declared = IndexMap::new();
    declared.insert("temperature".to_owned(), ColumnType::Double);
    let mut columns = Columns::new(Vec::new(), declared, 500);
    let encoded = columns
        .encode(vec![event(serde_json::json!({"humidity": 40}))], false)
        .expect("encodes");
    assert_eq!(encoded.rejected.len(), 1);
    assert_eq!(columns.field_count(), 1);
}

#[test]
fn fields_named_like_own_columns_are_refused_unless_they_agree() {
    let mut columns = Columns::new(vec![Derived::Hour], IndexMap::new(), 500);
    let encoded = columns
        .encode(
            vec![
                event(serde_json::json!({"device_id": "dev-1", "x": 1})),
                event(serde_json::json!({"time": "yesterday"})),
                event(serde_json::json!({"hour": 3})),
            ],
            true,
        )
        .expect("encodes");
    assert_eq!(encoded.batch.num_rows(), 1);
    assert_eq!(encoded.rejected.len(), 2);
}

#[test]
fn new_fields_beyond_max_columns_reject_only_their_event() {
    // Three own columns and `temperature`: room for one more.
    let mut declared = IndexMap::new();
    declared.insert("temperature".to_owned(), ColumnType::Double);
    let mut columns = Columns::new(Vec::new(), declared, 5);
    let encoded = columns
        .encode(
            vec![
                event(serde_json::json!({"temperature": 20.5, "humidity": 40})),
                event(serde_json::json!({"temperature": 21.5, "pressure": 1013})),
                event(serde_json::json!({"temperature": 22.5, "humidity": 41})),
            ],
            true,
        )
        .expect("encodes");
    assert_eq!(encoded.batch.num_rows(), 2);
    assert_eq!(columns.field_count(), 2);
    let reasons: Vec<&str> = encoded.rejected.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        reasons,
        ["new field `pressure` would grow the table to 6 columns, beyond `max_columns` (5)"]
    );
}

#[test]
fn committed_events_are_judged_again_as_they_were_when_written() {
    // Room for three more columns; the table gains one more after these were written.
    let events = || {
        vec![
            event(serde_json::json!({"id": 0, "temperature": 20.5})),
            event(serde_json::json!({"id": 1, "temperature": "hot"})),
            event(serde_json::json!({"id": 2, "humidity": 40, "pressure": 1, "wind": 3})),
            event(serde_json::json!({"id": 3, "humidity": 41})),
            event(serde_json::json!({"id": 4, "pressure": 1012, "time": "x"})),
        ]
    };
    let mut declared = IndexMap::new();
    declared.insert("id".to_owned(), ColumnType::Double);
    let mut written = Columns::new(Vec::new(), declared.clone(), 7);
    let encoded = written.encode(events(), true).expect("encodes");
    let rejected: Vec<Value> = encoded
        .rejected
        .iter()
        .map(|(e, _)| e.fields()["id"].clone())
        .collect();
    assert_eq!(rejected, [1, 2, 4]);
    // A restart: the columns come from the table, which a later record widened.
    let mut later = written.clone();
    later
        .encode(vec![event(serde_json::json!({"pressure": 2}))], true)
        .unwrap();
    assert_eq!(
        later.field_count(),
        4,
        "id, temperature, humidity, pressure"
    );
    let mut restarted = Columns::new(Vec::new(), declared, 7);
    restarted.adopt_table(&later.arrow_schema()).unwrap();
    let again: Vec<Value> = restarted
        .misfits(events(), true)
        .iter()
        .map(|(e, _)| e.fields()["id"].clone())
        .collect();
    assert_eq!(again, rejected);
}
