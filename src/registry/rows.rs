//! The file of devices that `weir devices import` reads, `weir devices export` writes and
//! a batch run's `registry: { snapshot: FILE }` loads: NDJSON (one device object a line)
//! or CSV with a header.
//!
//! A row is a record to create ([`super::DeviceSpec`]): `id`, and any of `status`,
//! `primary_key`, `secondary_key`, `x509_thumbprint`, `tags`, `desired`, `reported`. In
//! CSV, `tags`, `desired` and `reported` are JSON objects in a cell, `tag.<name>` columns
//! add tags one by one (numbers and booleans kept as such), and empty cells are left out.
//! What a device's record holds besides (etag, times, twin versions) is the registry's
//! own and is not written: an import makes new records.

use std::path::Path;

use serde_json::{Map, Value};

/// How a file of devices is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    /// CSV for a name ending in `.csv`, NDJSON otherwise.
    pub fn of(file: &Path) -> Self {
        match file.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => Self::Csv,
            _ => Self::Ndjson,
        }
    }
}

/// One row of a file: its line and the device object (or why it is unusable).
pub type Row = (usize, Result<Value, String>);

/// The fields of a row, in the order CSV columns are written.
const FIELDS: [&str; 8] = [
    "id",
    "status",
    "x509_thumbprint",
    "primary_key",
    "secondary_key",
    "tags",
    "desired",
    "reported",
];
/// The fields CSV holds as JSON objects.
const OBJECTS: [&str; 3] = ["tags", "desired", "reported"];

/// The rows of `file`, each with its line.
pub fn read(file: &Path, format: Format) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    match format {
        Format::Ndjson => Ok(text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                let row = match serde_json::from_str::<Value>(line) {
                    Ok(value @ Value::Object(_)) => Ok(value),
                    Ok(_) => Err("expected a JSON object".to_owned()),
                    Err(e) => Err(format!("not JSON: {e}")),
                };
                (n + 1, row)
            })
            .collect()),
        Format::Csv => csv_rows(&text).map_err(|e| format!("{}:1: {e}", file.display())),
    }
}

/// CSV with a header naming an `id` column; see the module documentation. An error is
/// the header's (line 1).
fn csv_rows(text: &str) -> Result<Vec<Row>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if !header.iter().any(|h| h == "id") {
        return Err("the CSV header has no `id` column".into());
    }
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        // The line the record starts on (a quoted cell may span lines).
        let position = match &record {
            Ok(record) => record.position(),
            Err(e) => e.position(),
        };
        let line = position.map_or(n + 2, |p| p.line() as usize);
        let row = record.map_err(|e| e.to_string()).and_then(|record| {
            if record.len() != header.len() {
                return Err(format!(
                    "{} cells, the header has {}",
                    record.len(),
                    header.len()
                ));
            }
            csv_device(&header, &record)
        });
        rows.push((line, row));
    }
    Ok(rows)
}

fn csv_device(header: &[String], record: &csv::StringRecord) -> Result<Value, String> {
    let mut device = Map::new();
    let mut tags = Map::new();
    for (name, cell) in header.iter().zip(record.iter()) {
        if cell.is_empty() {
            continue;
        }
        if let Some(tag) = name.strip_prefix("tag.") {
            tags.insert(tag.to_owned(), typed(cell));
        } else if OBJECTS.contains(&name.as_str()) {
            let parsed: Map<String, Value> = serde_json::from_str(cell)
                .map_err(|e| format!("`{name}` is not a JSON object: {e}"))?;
            match name.as_str() {
                "tags" => tags.extend(parsed),
                _ => {
                    device.insert(name.clone(), Value::Object(parsed));
                }
            }
        } else {
            device.insert(name.clone(), Value::String(cell.to_owned()));
        }
    }
    if !tags.is_empty() {
        device.insert("tags".into(), Value::Object(tags));
    }
    Ok(Value::Object(device))
}

/// A cell's text as a value: JSON numbers and booleans stay typed, the rest is text.
pub fn typed(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ (Value::Number(_) | Value::Bool(_))) => value,
        _ => Value::String(text.to_owned()),
    }
}

/// The row of a device record as the API shows it: the fields a row holds (the keys
/// only when `with_keys`), empty objects left out.
pub fn of_record(record: &Value, with_keys: bool) -> Map<String, Value> {
    let mut row = Map::new();
    for name in FIELDS {
        let keep = match record.get(name) {
            None | Some(Value::Null) => false,
            Some(Value::Object(map)) => !map.is_empty(),
            Some(_) => with_keys || !name.ends_with("_key"),
        };
        if keep {
            row.insert(name.to_owned(), record[name].clone());
        }
    }
    row
}

/// Writes rows, one device at a time, in `format`.
pub struct Writer<W: std::io::Write> {
    out: Output<W>,
    with_keys: bool,
}

enum Output<W: std::io::Write> {
    Ndjson(W),
    Csv(Box<csv::Writer<W>>),
}

impl<W: std::io::Write> Writer<W> {
    /// A writer into `out`; a CSV one writes its header now.
    pub fn new(out: W, format: Format, with_keys: bool) -> std::io::Result<Self> {
        let out = match format {
            Format::Ndjson => Output::Ndjson(out),
            Format::Csv => {
                let mut csv = csv::Writer::from_writer(out);
                csv.write_record(Self::columns(with_keys))?;
                Output::Csv(Box::new(csv))
            }
        };
        Ok(Self { out, with_keys })
    }

    fn columns(with_keys: bool) -> impl Iterator<Item = &'static str> {
        FIELDS
            .into_iter()
            .filter(move |name| with_keys || !name.ends_with("_key"))
    }

    /// Writes the row of `record` (a device as the API shows it).
    pub fn write(&mut self, record: &Value) -> std::io::Result<()> {
        let row = of_record(record, self.with_keys);
        match &mut self.out {
            Output::Ndjson(out) => {
                serde_json::to_writer(&mut *out, &row)?;
                out.write_all(b"\n")
            }
            Output::Csv(csv) => {
                let cells = Self::columns(self.with_keys).map(|name| match row.get(name) {
                    None => String::new(),
                    Some(Value::String(text)) => text.clone(),
                    Some(other) => other.to_string(),
                });
                csv.write_record(cells.collect::<Vec<_>>())
                    .map_err(std::io::Error::other)
            }
        }
    }

    /// Flushes what is buffered and hands the output back.
    pub fn finish(self) -> std::io::Result<W> {
        match self.out {
            Output::Ndjson(mut out) => {
                out.flush()?;
                Ok(out)
            }
            Output::Csv(csv) => (*csv).into_inner().map_err(|e| e.into_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "id": "pump-1", "status": "disabled", "primary_key": "AAAA", "secondary_key": "BBBB",
            "tags": { "site": "plant, \"north\"", "max_temp": 95 }, "desired": { "fan": { "speed": 2 } },
            "reported": {}, "desired_version": 4, "etag": "00ff", "created_at": "2026-01-01T00:00:00Z"
        })
    }

    /// What a written file reads back as, in either format.
    fn round_trip(format: Format, with_keys: bool) -> Vec<Value> {
        let mut writer = Writer::new(Vec::new(), format, with_keys).unwrap();
        writer.write(&record()).unwrap();
        writer
            .write(&json!({ "id": "bare", "status": "enabled" }))
            .unwrap();
        let bytes = writer.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("devices");
        std::fs::write(&file, bytes).unwrap();
        read(&file, format)
            .unwrap()
            .into_iter()
            .map(|(_, row)| row.unwrap())
            .collect()
    }

    #[test]
    fn a_written_file_reads_back_as_the_rows_of_its_records_in_both_formats() {
        let without_keys = json!({
            "id": "pump-1", "status": "disabled",
            "tags": { "site": "plant, \"north\"", "max_temp": 95 }, "desired": { "fan": { "speed": 2 } }
        });
        let bare = json!({ "id": "bare", "status": "enabled" });
        for format in [Format::Ndjson, Format::Csv] {
            assert_eq!(
                round_trip(format, false),
                [without_keys.clone(), bare.clone()],
                "{format:?}"
            );
            let with_keys = round_trip(format, true);
            assert_eq!(with_keys[0]["primary_key"], "AAAA", "{format:?}");
            assert_eq!(with_keys[0]["secondary_key"], "BBBB", "{format:?}");
        }
    }

    #[test]
    fn csv_rows_carry_their_line_and_tag_columns_stay_typed() {
        let rows = csv_rows(
            "id,tag.site,tag.max_temp,desired\na,x,90,\nb,y,\"95\",\"{\"\"fan\"\": 1}\"\nc,z\n",
        )
        .unwrap();
        assert_eq!(
            rows[0],
            (
                2,
                Ok(json!({ "id": "a", "tags": { "site": "x", "max_temp": 90 } }))
            )
        );
        assert_eq!(rows[1].0, 3);
        assert_eq!(rows[1].1.as_ref().unwrap()["desired"], json!({ "fan": 1 }));
        assert_eq!(rows[2].0, 4);
        assert!(rows[2].1.as_ref().unwrap_err().contains("2 cells"));
    }
}
