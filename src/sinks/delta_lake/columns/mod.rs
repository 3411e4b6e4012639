//! From events to Arrow columns: the table's columns, their types, and the rules that
//! turn one event's fields into one row.
//!
//! Every row has three columns of its own: `device_id`, `time` (event time) and
//! `received_at`, plus the derived partition columns the user asked for (`date`, `hour`).
//! Each field of an event is a column of its own name. A field the table has no column for
//! becomes a new nullable column (additive schema evolution), its type taken from its
//! first value: strings, objects and arrays are `string` (objects and arrays as JSON text),
//! numbers `double`, booleans `boolean`. A value that does not fit its column (a string in
//! a `double` column) rejects the whole event with a message that says so: the sink sends
//! it to its `errors` output rather than guess.

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::{DataType as DeltaType, StructField};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codecs::kind;
use crate::event::{Event, Value, parse_event_time};

/// The type of a column the sink writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Text; objects and arrays are stored as their JSON text.
    String,
    /// 64-bit floating point.
    Double,
    /// 64-bit integer; a number with a fraction does not fit.
    Long,
    Boolean,
    /// Microseconds, UTC; from RFC 3339 text or epoch milliseconds.
    Timestamp,
}

impl ColumnType {
    fn arrow(self) -> DataType {
        match self {
            Self::String => DataType::Utf8,
            Self::Double => DataType::Float64,
            Self::Long => DataType::Int64,
            Self::Boolean => DataType::Boolean,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    fn delta(self) -> DeltaType {
        match self {
            Self::String => DeltaType::STRING,
            Self::Double => DeltaType::DOUBLE,
            Self::Long => DeltaType::LONG,
            Self::Boolean => DeltaType::BOOLEAN,
            Self::Timestamp => DeltaType::TIMESTAMP,
        }
    }

    /// The column type of an existing table's Arrow type, if the sink can write it.
    pub fn from_arrow(data_type: &DataType) -> Option<Self> {
        match data_type {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(Self::String),
            DataType::Float64 => Some(Self::Double),
            DataType::Int64 => Some(Self::Long),
            DataType::Boolean => Some(Self::Boolean),
            DataType::Timestamp(TimeUnit::Microsecond, _) => Some(Self::Timestamp),
            _ => None,
        }
    }

    /// The type a new column gets from its first non-null value.
    fn infer(value: &Value) -> Option<Self> {
        match value {
            Value::Null => None,
            Value::Bool(_) => Some(Self::Boolean),
            Value::Number(_) => Some(Self::Double),
            Value::String(_) | Value::Array(_) | Value::Object(_) => Some(Self::String),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Double => "double",
            Self::Long => "long",
            Self::Boolean => "boolean",
            Self::Timestamp => "timestamp",
        }
    }

    /// Whether `value` can be stored in a column of this type.
    fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (Self::String, Value::String(_) | Value::Array(_) | Value::Object(_)) => true,
            (Self::Double, Value::Number(_)) => true,
            (Self::Long, Value::Number(n)) => as_long(n).is_some(),
            (Self::Boolean, Value::Bool(_)) => true,
            (Self::Timestamp, value) => parse_event_time(value).is_some(),
            _ => false,
        }
    }
}

fn as_long(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        let x = n.as_f64()?;
        // 20.0 is a long; 20.5 and 1e300 are not.
        (x.fract() == 0.0 && x.abs() < 9.0e18).then_some(x as i64)
    })
}

/// A column derived from event time, for partitioning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Derived {
    /// `YYYY-MM-DD` of event time, UTC.
    Date,
    /// Hour of the day of event time, UTC (0-23).
    Hour,
}

impl Derived {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "date" => Some(Self::Date),
            "hour" => Some(Self::Hour),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Date => "date",
            Self::Hour => "hour",
        }
    }

    fn column_type(self) -> ColumnType {
        match self {
            Self::Date => ColumnType::String,
            Self::Hour => ColumnType::Long,
        }
    }
}

/// The columns every row has, whatever its fields.
const DEVICE_ID: &str = "device_id";
const TIME: &str = "time";
const RECEIVED_AT: &str = "received_at";
/// How many of those there are.
const OWN_COLUMNS: usize = 3;

/// The table's columns as the sink sees them.
#[derive(Clone, Debug, PartialEq)]
pub struct Columns {
    derived: Vec<Derived>,
    /// Columns holding event fields, in table order.
    fields: IndexMap<String, ColumnType>,
    /// The most columns (own and field columns together) schema evolution may grow the
    /// table to: devices sending ever new field names cannot widen it without limit.
    max_columns: usize,
}

/// One chunk of events turned into a record batch.
pub struct Encoded {
    /// The rows of the accepted events, in the table's current column order.
    pub batch: RecordBatch,
    /// Events that do not fit the table, each with the reason, in input order.
    pub rejected: Vec<(Event, String)>,
    /// The events that made it into `batch`.
    pub accepted: Vec<Event>,
}

impl Columns {
    /// Columns for a table partitioned by `derived`, with `declared` field columns, that
    /// schema evolution grows to at most `max_columns` columns.
    pub fn new(
        derived: Vec<Derived>,
        declared: IndexMap<String, ColumnType>,
        max_columns: usize,
    ) -> Self {
        Self {
            derived,
            fields: declared,
            max_columns,
        }
    }

    /// How many columns a table with `derived` partitions and `declared` fields starts
    /// with: the sink's own columns (`device_id`, `time`, `received_at`), the derived
    /// partitions and the declared fields.
    pub fn column_count(derived: usize, declared: usize) -> usize {
        OWN_COLUMNS + derived + declared
    }

    /// Takes the columns of an existing table (in its order), keeping the columns this
    /// sink knows that the table lacks after them; returns how many field columns the
    /// table has. Fails on a column the sink cannot write or one declared with another type.
    pub fn adopt_table(&mut self, schema: &Schema) -> anyhow::Result<usize> {
        let mut fields = IndexMap::new();
        for field in schema.fields() {
            let name = field.name().as_str();
            if Self::is_reserved(name, &self.derived) {
                continue;
            }
            let Some(column_type) = ColumnType::from_arrow(field.data_type()) else {
                anyhow::bail!(
                    "column `{name}` of the existing table has type {}, which weir cannot write",
                    field.data_type()
                );
            };
            if let Some(wanted) = self.fields.get(name)
                && *wanted != column_type
            {
                anyhow::bail!(
                    "column `{name}` of the existing table is {}, but this sink has it as {}",
                    column_type.name(),
                    wanted.name()
                );
            }
            fields.insert(name.to_owned(), column_type);
        }
        let in_table = fields.len();
        for (name, column_type) in &self.fields {
            fields.entry(name.clone()).or_insert(*column_type);
        }
        self.fields = fields;
        Ok(in_table)
    }

    fn is_reserved(name: &str, derived: &[Derived]) -> bool {
        matches!(name, DEVICE_ID | TIME | RECEIVED_AT) || derived.iter().any(|d| d.name() == name)
    }

    /// Names of the partition columns, in order.
    pub fn partition_columns(&self, by_field: &[String]) -> Vec<String> {
        self.derived
            .iter()
            .map(|d| d.name().to_owned())
            .chain(by_field.iter().cloned())
            .collect()
    }

    fn all(&self) -> impl Iterator<Item = (&str, ColumnType)> {
        [
            (DEVICE_ID, ColumnType::String),
            (TIME, ColumnType::Timestamp),
            (RECEIVED_AT, ColumnType::Timestamp),
        ]
        .into_iter()
        .chain(self.derived.iter().map(|d| (d.name(), d.column_type())))
        .chain(self.fields.iter().map(|(name, t)| (name.as_str(), *t)))
    }

    /// The Arrow schema of the rows this sink writes.
    pub fn arrow_schema(&self) -> Arc<Schema> {
        let fields: Vec<Field> = self
            .all()
            .map(|(name, t)| Field::new(name, t.arrow(), true))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The Delta columns of a new table.
    pub fn delta_fields(&self) -> Vec<StructField> {
        self.all()
            .map(|(name, t)| StructField::new(name, t.delta(), true))
            .collect()
    }

    /// The Delta columns for field columns after the first `known` ones.
    pub fn delta_fields_after(&self, known: usize) -> Vec<StructField> {
        self.fields
            .iter()
            .skip(known)
            .map(|(name, t)| StructField::new(name, t.delta(), true))
            .collect()
    }

    pub fn field_count(&self) -> usize {
        self.fields.len()
    }

    /// Checks one event against the columns, adding columns for new fields when
    /// `evolve` allows it; returns why the event does not fit, if it does not.
    fn admit(&mut self, event: &Event, evolve: bool) -> Result<(), String> {
        // Columns are added only once the whole event fits.
        let new_columns = self.check(event, evolve)?;
        self.fields.extend(new_columns);
        Ok(())
    }

    /// Whether one event fits the columns as they are (or would, with the new columns it
    /// returns); why not, if it does not.
    fn check(&self, event: &Event, evolve: bool) -> Result<Vec<(String, ColumnType)>, String> {
        let mut new_columns = Vec::new();
        for (name, value) in event.fields() {
            if Self::is_reserved(name, &self.derived) {
                let same_device = name == DEVICE_ID
                    && value.as_str().is_some() == event.device_id.is_some()
                    && value.as_str() == event.device_id.as_deref();
                if same_device || value.is_null() {
                    continue;
                }
                return Err(format!(
                    "field `{name}` has the name of a column the sink fills itself; rename it (e.g. with a remap)"
                ));
            }
            match self.fields.get(name.as_str()) {
                Some(column_type) if column_type.accepts(value) => {}
                Some(column_type) => {
                    return Err(format!(
                        "field `{name}` is {} but its column is {}",
                        kind(value),
                        column_type.name()
                    ));
                }
                None if !evolve => {
                    return Err(format!(
                        "field `{name}` has no column in the table and `evolve_schema` is off"
                    ));
                }
                None => {
                    if let Some(column_type) = ColumnType::infer(value) {
                        new_columns.push((name.clone(), column_type));
                    }
                }
            }
        }
        let columns = Self::column_count(self.derived.len(), self.fields.len());
        if !new_columns.is_empty() && columns + new_columns.len() > self.max_columns {
            let names: Vec<String> = new_columns
                .iter()
                .take(3)
                .map(|(name, _)| format!("`{name}`"))
                .collect();
            return Err(format!(
                "new field {}{} would grow the table to {} columns, beyond `max_columns` ({})",
                names.join(", "),
                if new_columns.len() > names.len() {
                    ", ..."
                } else {
                    ""
                },
                columns + new_columns.len(),
                self.max_columns
            ));
        }
        Ok(new_columns)
    }

    /// The events of `committed` that did not fit when they were written: a disk buffer
    /// hands out again records a commit already holds (after a crash, or when their dead
    /// letters failed), and their dead letters must go out again.
    ///
    /// The answer is the one [`Columns::encode`] gave when they were written, because
    /// columns only grow and never change type, and every column an accepted record
    /// added is in the table (columns are added before their rows are written, and the
    /// records are committed): an accepted record still fits without adding a column; a
    /// type misfit, a reserved name or a field without a column (`evolve_schema` off)
    /// stays one; and a record refused by `max_columns` still is, since the columns
    /// added after it could never take all of its new fields (that many did not fit then).
    /// Only the wording of a reason may differ (the column count it names).
    pub fn misfits(&self, committed: Vec<Event>, evolve: bool) -> Vec<(Event, String)> {
        committed
            .into_iter()
            .filter_map(|event| match self.check(&event, evolve) {
                Ok(_) => None,
                Err(reason) => Some((event, reason)),
            })
            .collect()
    }

    /// Splits `events` into rows that fit (encoded into a batch, after adding any new
    /// columns) and events that do not.
    pub fn encode(&mut self, events: Vec<Event>, evolve: bool) -> anyhow::Result<Encoded> {
        let mut accepted = Vec::with_capacity(events.len());
        let mut rejected = Vec::new();
        for event in events {
            match self.admit(&event, evolve) {
                Ok(()) => accepted.push(event),
                Err(reason) => rejected.push((event, reason)),
            }
        }
        let batch = self.rows(&accepted).inspect_err(|_| {
            // The events go no further: their sources must hear they were not written.
            for event in &accepted {
                event.fail_delivery();
            }
        })?;
        Ok(Encoded {
            batch,
            rejected,
            accepted,
        })
    }

    fn rows(&self, events: &[Event]) -> anyhow::Result<RecordBatch> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(3 + self.fields.len());
        let mut device = StringBuilder::with_capacity(events.len(), events.len() * 12);
        let mut time =
            TimestampMicrosecondBuilder::with_capacity(events.len()).with_timezone("UTC");
        let mut received =
            TimestampMicrosecondBuilder::with_capacity(events.len()).with_timezone("UTC");
        for event in events {
            device.append_option(event.device_id.as_deref());
            time.append_value(event.time.as_microsecond());
            received.append_value(event.meta().received_at.as_microsecond());
        }
        arrays.push(Arc::new(device.finish()));
        arrays.push(Arc::new(time.finish()));
        arrays.push(Arc::new(received.finish()));
        for derived in &self.derived {
            arrays.push(derived_column(*derived, events));
        }
        for (name, column_type) in &self.fields {
            arrays.push(field_column(name, *column_type, events));
        }
        Ok(RecordBatch::try_new(self.arrow_schema(), arrays)?)
    }
}

const MICROS_PER_HOUR: i64 = 3_600_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

fn derived_column(derived: Derived, events: &[Event]) -> ArrayRef {
    match derived {
        Derived::Date => {
            let mut column = StringBuilder::with_capacity(events.len(), events.len() * 10);
            // Consecutive events nearly always share a day: format each day once.
            let mut cached: Option<(i64, String)> = None;
            for event in events {
                let day = event.time.as_microsecond().div_euclid(MICROS_PER_DAY);
                let text = match &cached {
                    Some((cached_day, text)) if *cached_day == day => text,
                    _ => {
                        let date = event.time.strftime("%Y-%m-%d").to_string();
                        &cached.insert((day, date)).1
                    }
                };
                column.append_value(text);
            }
            Arc::new(column.finish())
        }
        Derived::Hour => {
            let mut column = Int64Builder::with_capacity(events.len());
            for event in events {
                let hour = event
                    .time
                    .as_microsecond()
                    .div_euclid(MICROS_PER_HOUR)
                    .rem_euclid(24);
                column.append_value(hour);
            }
            Arc::new(column.finish())
        }
    }
}

/// One field column; values were checked by `admit`, so a misfit here is stored as null.
fn field_column(name: &str, column_type: ColumnType, events: &[Event]) -> ArrayRef {
    let values = events.iter().map(|event| event.get(name));
    match column_type {
        ColumnType::String => {
            let mut column = StringBuilder::with_capacity(events.len(), events.len() * 8);
            for value in values {
                match value {
                    Some(Value::String(text)) => column.append_value(text),
                    Some(value @ (Value::Array(_) | Value::Object(_))) => {
                        column.append_value(value.to_string())
                    }
                    _ => column.append_null(),
                }
            }
            Arc::new(column.finish())
        }
        ColumnType::Double => {
            let mut column = Float64Builder::with_capacity(events.len());
            for value in values {
                column.append_option(value.and_then(Value::as_f64));
            }
            Arc::new(column.finish())
        }
        ColumnType::Long => {
            let mut column = Int64Builder::with_capacity(events.len());
            for value in values {
                column.append_option(value.and_then(|v| v.as_number()).and_then(as_long));
            }
            Arc::new(column.finish())
        }
        ColumnType::Boolean => {
            let mut column = BooleanBuilder::with_capacity(events.len());
            for value in values {
                column.append_option(value.and_then(Value::as_bool));
            }
            Arc::new(column.finish())
        }
        ColumnType::Timestamp => {
            let mut column =
                TimestampMicrosecondBuilder::with_capacity(events.len()).with_timezone("UTC");
            for value in values {
                column.append_option(value.and_then(parse_event_time).map(|t| t.as_microsecond()));
            }
            Arc::new(column.finish())
        }
    }
}

#[cfg(test)]
mod tests;
