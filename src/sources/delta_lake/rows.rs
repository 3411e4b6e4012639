//! From one Parquet record batch to events: the columns read as fields, the file's
//! partition values restored, event time and device id from their own columns.
//!
//! This is the source's hot loop (a few hundred nanoseconds a row), so each row's body is
//! a clone of one prototype body (its field names in order, the partition values filled
//! in): cloning copies the hash table as it is, where inserting hashes every name again;
//! the row's values are then written in place, in column order. Consecutive rows of one
//! device share one `Arc` of its id.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use deltalake::arrow::record_batch::RecordBatch;
use jiff::Timestamp;
use serde_json::{Number, Value};

use super::plan::TIME;
use super::read::{DEVICE_ID, Projection};
use crate::event::{DeviceId, Event, EventMeta, Fields};

/// Builds the events of one file's record batches (shared by the tasks that build them).
pub struct RowBuilder {
    pub projection: Arc<Projection>,
    /// The file's partition values restored as fields, after the columns.
    pub constants: Vec<(String, Value)>,
    /// Whether rows must be checked against the range (the file's statistics do not put
    /// all of them inside it).
    pub check_rows: bool,
    pub source: Arc<str>,
}

impl RowBuilder {
    /// One record batch as events.
    pub fn events(&self, batch: &RecordBatch) -> anyhow::Result<Vec<Event>> {
        let time = batch
            .column_by_name(TIME)
            .ok_or_else(|| anyhow::anyhow!("the file has no `{TIME}` column"))?;
        let time = cast(time, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let time = time.as_primitive::<TimestampMicrosecondType>();
        let device = match batch.column_by_name(DEVICE_ID) {
            Some(column) => Some(cast(column, &DataType::Utf8)?),
            None => None,
        };
        let device = device.as_ref().map(|d| d.as_string::<i32>());
        let schema = batch.schema();
        let mut columns = Vec::new();
        for (field, array) in schema.fields().iter().zip(batch.columns()) {
            if self.projection.is_field(field.name()) {
                columns.push((field.name().clone(), Column::of(array)?));
            }
        }
        let mut prototype = Fields::with_capacity(columns.len() + self.constants.len());
        for (name, _) in &columns {
            prototype.insert(name.clone(), Value::Null);
        }
        for (name, value) in &self.constants {
            prototype.insert(name.clone(), value.clone());
        }
        // Names are unique in a Parquet schema and partition columns are not in the data
        // files; should a name come twice all the same, rows are built one field at a time.
        let positional = prototype.len() == columns.len() + self.constants.len();
        let meta = Arc::new(EventMeta::received_by(Arc::clone(&self.source)));
        let mut last_device: Option<DeviceId> = None;
        let mut events = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            if time.is_null(row) {
                continue;
            }
            let micros = time.value(row);
            if self.check_rows && !self.projection.wants(micros) {
                continue;
            }
            let fields = if positional {
                filled(&prototype, &columns, row).unwrap_or_else(|| self.one_by_one(&columns, row))
            } else {
                self.one_by_one(&columns, row)
            };
            let device_id = match device {
                Some(d) if d.is_valid(row) => {
                    let id = d.value(row);
                    match &last_device {
                        Some(last) if **last == *id => Some(Arc::clone(last)),
                        _ => {
                            let id: DeviceId = Arc::from(id);
                            last_device = Some(Arc::clone(&id));
                            Some(id)
                        }
                    }
                }
                _ => None,
            };
            let mut event = Event::new(device_id, fields, Arc::clone(&meta));
            event.time = Timestamp::from_microsecond(micros)?;
            events.push(event);
        }
        Ok(events)
    }

    /// A row's body built field by field: the columns that hold a value, then the
    /// partition values.
    fn one_by_one(&self, columns: &[(String, Column)], row: usize) -> Fields {
        let mut fields = Fields::with_capacity(columns.len() + self.constants.len());
        for (name, column) in columns {
            if let Some(value) = column.value(row) {
                fields.insert(name.clone(), value);
            }
        }
        for (name, value) in &self.constants {
            fields.insert(name.clone(), value.clone());
        }
        fields
    }
}

/// A row's body from the prototype, when every column holds a value in it (`None` when
/// one does not: that field is absent, and the row is built field by field).
fn filled(prototype: &Fields, columns: &[(String, Column)], row: usize) -> Option<Fields> {
    let mut fields = prototype.clone();
    for (slot, (_, column)) in fields.values_mut().zip(columns) {
        *slot = column.value(row)?;
    }
    Some(fields)
}

/// One field column, in the shape its values are read from.
enum Column {
    Double(Float64Array),
    Long(Int64Array),
    Boolean(BooleanArray),
    Text(StringArray),
    Time(TimestampMicrosecondArray),
}

impl Column {
    fn of(array: &ArrayRef) -> anyhow::Result<Self> {
        Ok(match array.data_type() {
            DataType::Float64 | DataType::Float32 | DataType::Float16 => {
                Self::Double(cast(array, &DataType::Float64)?.as_primitive().clone())
            }
            DataType::Int64
            | DataType::Int32
            | DataType::Int16
            | DataType::Int8
            | DataType::UInt32
            | DataType::UInt16
            | DataType::UInt8 => Self::Long(
                cast(array, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            DataType::Boolean => Self::Boolean(array.as_boolean().clone()),
            DataType::Timestamp(_, _) => Self::Time(
                cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?
                    .as_primitive()
                    .clone(),
            ),
            // Text, dates, decimals, anything else: as its text.
            _ => Self::Text(cast(array, &DataType::Utf8)?.as_string::<i32>().clone()),
        })
    }

    /// The value at `row`; `None` for a null (the field is absent).
    fn value(&self, row: usize) -> Option<Value> {
        match self {
            Self::Double(a) => a
                .is_valid(row)
                .then(|| Number::from_f64(a.value(row)).map(Value::Number))
                .flatten(),
            Self::Long(a) => a.is_valid(row).then(|| Value::from(a.value(row))),
            Self::Boolean(a) => a.is_valid(row).then(|| Value::Bool(a.value(row))),
            Self::Text(a) => a
                .is_valid(row)
                .then(|| Value::String(a.value(row).to_owned())),
            Self::Time(a) => a
                .is_valid(row)
                .then(|| Timestamp::from_microsecond(a.value(row)).ok())
                .flatten()
                .map(|t| Value::String(rfc3339(t))),
        }
    }
}

/// RFC 3339 text of `t`, written into a string sized for it once (formatting into an empty
/// one grows it three times, once a row).
fn rfc3339(t: Timestamp) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(32);
    let _ = write!(text, "{t}");
    text
}
