//! Aggregate functions: `count()`, `sum(f)`, `avg(f)`, `min(f)`, `max(f)`, `first(f)`,
//! `last(f)`, `stddev(f)`, `percentile(f, q)`, `count_distinct(f)`.
//!
//! An [`Aggregate`] is parsed from its text once; each open window holds one
//! [`Accumulator`] per aggregate. Accumulators are small fixed-size states (a count, a
//! running sum, Welford's mean and variance) except `percentile`, which keeps a DDSketch
//! (relative error 1%, bounded size) and `count_distinct`, which keeps the distinct values
//! exactly (its memory grows with the number of distinct values in a window).

use std::collections::HashSet;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use sketches_ddsketch::{Config as SketchConfig, DDSketch};
use smallvec::SmallVec;

/// One aggregate as written, e.g. `percentile(vibration, 0.95)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    pub function: Function,
    /// The field the aggregate reads (none for `count()`).
    pub field: Option<String>,
    text: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Function {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Stddev,
    Percentile(f64),
    CountDistinct,
}

impl Function {
    /// Whether the function needs numbers.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Self::Sum | Self::Avg | Self::Min | Self::Max | Self::Stddev | Self::Percentile(_)
        )
    }
}

impl Aggregate {
    pub fn parse(text: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected `count()`, `sum(field)`, `avg(field)`, `min(field)`, `max(field)`, `first(field)`, `last(field)`, `stddev(field)`, `percentile(field, 0.95)` or `count_distinct(field)`";
        let trimmed = text.trim();
        let (name, rest) = trimmed
            .split_once('(')
            .ok_or_else(|| format!("`{text}` is not an aggregate: {EXPECTED}"))?;
        let args = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("`{text}` lacks a closing `)`: {EXPECTED}"))?;
        let args: Vec<&str> = args
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        let field = |args: &[&str]| -> Result<String, String> {
            match args.first() {
                Some(f)
                    if f.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') =>
                {
                    Ok((*f).to_owned())
                }
                Some(f) => Err(format!("`{f}` in `{text}` is not a field name")),
                None => Err(format!(
                    "`{text}` needs a field, e.g. `{}(temperature)`",
                    name.trim()
                )),
            }
        };
        let one_field = |args: &[&str]| -> Result<String, String> {
            if args.len() > 1 {
                return Err(format!("`{text}` takes one field"));
            }
            field(args)
        };
        let (function, field) = match name.trim() {
            "count" if args.is_empty() => (Function::Count, None),
            "count" => {
                return Err(format!(
                    "`{text}`: `count()` takes no field (use `count_distinct(field)` for distinct values)"
                ));
            }
            "sum" => (Function::Sum, Some(one_field(&args)?)),
            "avg" | "mean" => (Function::Avg, Some(one_field(&args)?)),
            "min" => (Function::Min, Some(one_field(&args)?)),
            "max" => (Function::Max, Some(one_field(&args)?)),
            "first" => (Function::First, Some(one_field(&args)?)),
            "last" => (Function::Last, Some(one_field(&args)?)),
            "stddev" => (Function::Stddev, Some(one_field(&args)?)),
            "count_distinct" => (Function::CountDistinct, Some(one_field(&args)?)),
            "percentile" => {
                let q = args
                    .get(1)
                    .and_then(|q| q.parse::<f64>().ok())
                    .filter(|q| (0.0..=1.0).contains(q) && args.len() == 2)
                    .ok_or_else(|| format!("`{text}`: expected `percentile(field, q)` with q between 0 and 1, e.g. `percentile(vibration, 0.95)`"))?;
                (Function::Percentile(q), Some(field(&args)?))
            }
            other => {
                return Err(format!(
                    "unknown aggregate function `{other}` in `{text}`: {EXPECTED}"
                ));
            }
        };
        Ok(Self {
            function,
            field,
            text: trimmed.to_owned(),
        })
    }

    /// A fresh accumulator for this aggregate.
    pub fn accumulator(&self) -> Accumulator {
        match self.function {
            Function::Count => Accumulator::Count(0),
            Function::Sum => Accumulator::Sum(0.0),
            Function::Avg => Accumulator::Avg { sum: 0.0, count: 0 },
            Function::Min => Accumulator::Min(None),
            Function::Max => Accumulator::Max(None),
            Function::First => Accumulator::First(None),
            Function::Last => Accumulator::Last(None),
            Function::Stddev => Accumulator::Stddev(Box::default()),
            Function::Percentile(_) => Accumulator::Percentile(Box::default()),
            Function::CountDistinct => Accumulator::Distinct(Box::default()),
        }
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Aggregate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Aggregate::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Aggregate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl JsonSchema for Aggregate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Aggregate".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^\s*(count\(\s*\)|(sum|avg|mean|min|max|first|last|stddev|count_distinct)\(\s*[A-Za-z0-9_.]+\s*\)|percentile\(\s*[A-Za-z0-9_.]+\s*,\s*(0(\.\d+)?|1(\.0+)?)\s*\))\s*$",
            "description": "count(), sum(f), avg(f), min(f), max(f), first(f), last(f), stddev(f), percentile(f, q), count_distinct(f)",
            "examples": ["avg(temperature)", "percentile(vibration, 0.95)"]
        })
    }
}

/// The running state of one aggregate in one window.
#[derive(Clone, Serialize, Deserialize)]
pub enum Accumulator {
    Count(u64),
    Sum(f64),
    Avg {
        sum: f64,
        count: u64,
    },
    Min(Option<f64>),
    Max(Option<f64>),
    /// The value with the earliest event time (ms), first arrival on ties.
    First(Option<Box<(i64, Value)>>),
    /// The value with the latest event time (ms), last arrival on ties.
    Last(Option<Box<(i64, Value)>>),
    /// Boxed: it is the largest state, and keeping every variant small keeps windows small.
    Stddev(Box<Welford>),
    Percentile(Box<Quantiles>),
    Distinct(Box<HashSet<String>>),
}

impl fmt::Debug for Accumulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Percentile(values) => write!(f, "Percentile({} values)", values.count()),
            Self::Count(n) => write!(f, "Count({n})"),
            other => write!(f, "{}", serde_json::to_string(other).unwrap_or_default()),
        }
    }
}

/// Why a value was not folded into an aggregate.
#[derive(Debug, PartialEq)]
pub enum Skip {
    /// The field is absent or null: nothing to aggregate, not an error.
    Missing,
    /// A numeric aggregate met a non-number.
    NotANumber,
}

impl Accumulator {
    /// Folds one event's value (the aggregate's field, if any) at event time `time_ms`.
    pub fn add(&mut self, value: Option<&Value>, time_ms: i64) -> Result<(), Skip> {
        if let Self::Count(n) = self {
            *n += 1;
            return Ok(());
        }
        let value = match value {
            None | Some(Value::Null) => return Err(Skip::Missing),
            Some(v) => v,
        };
        let number = || {
            value
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or(Skip::NotANumber)
        };
        match self {
            Self::Count(_) => {}
            Self::Sum(sum) => *sum += number()?,
            Self::Avg { sum, count } => {
                *sum += number()?;
                *count += 1;
            }
            Self::Min(min) => {
                let x = number()?;
                *min = Some(min.map_or(x, |m| m.min(x)));
            }
            Self::Max(max) => {
                let x = number()?;
                *max = Some(max.map_or(x, |m| m.max(x)));
            }
            Self::First(first) => {
                if first.as_ref().is_none_or(|f| time_ms < f.0) {
                    *first = Some(Box::new((time_ms, value.clone())));
                }
            }
            Self::Last(last) => {
                if last.as_ref().is_none_or(|l| time_ms >= l.0) {
                    *last = Some(Box::new((time_ms, value.clone())));
                }
            }
            Self::Stddev(w) => {
                let x = number()?;
                w.count += 1;
                let delta = x - w.mean;
                w.mean += delta / w.count as f64;
                w.m2 += delta * (x - w.mean);
            }
            Self::Percentile(values) => values.add(number()?),
            Self::Distinct(seen) => {
                let key = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                seen.insert(key);
            }
        }
        Ok(())
    }

    /// The aggregate's result; null where nothing was aggregated.
    pub fn result(&self, function: Function) -> Value {
        let number = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        match self {
            Self::Count(n) => Value::from(*n),
            Self::Sum(sum) => number(*sum),
            Self::Avg { count: 0, .. } => Value::Null,
            Self::Avg { sum, count } => number(sum / *count as f64),
            Self::Min(x) | Self::Max(x) => x.map_or(Value::Null, number),
            Self::First(v) | Self::Last(v) => v.as_ref().map_or(Value::Null, |b| b.1.clone()),
            // Population standard deviation of the window's values.
            Self::Stddev(w) if w.count == 0 => Value::Null,
            Self::Stddev(w) => number((w.m2 / w.count as f64).sqrt()),
            Self::Percentile(values) => match function {
                Function::Percentile(q) => values.quantile(q).map_or(Value::Null, number),
                _ => Value::Null,
            },
            Self::Distinct(seen) => Value::from(seen.len()),
        }
    }

    /// Folds another accumulator of the same aggregate into this one (session windows
    /// merge when an event bridges two of them).
    pub fn merge(&mut self, other: Accumulator) {
        match (self, other) {
            (Self::Count(a), Self::Count(b)) => *a += b,
            (Self::Sum(a), Self::Sum(b)) => *a += b,
            (Self::Avg { sum, count }, Self::Avg { sum: s, count: c }) => {
                *sum += s;
                *count += c;
            }
            (Self::Min(a), Self::Min(b)) => *a = option_fold(*a, b, f64::min),
            (Self::Max(a), Self::Max(b)) => *a = option_fold(*a, b, f64::max),
            (Self::First(a), Self::First(b)) => {
                if let Some(b) = b
                    && a.as_ref().is_none_or(|a| b.0 < a.0)
                {
                    *a = Some(b);
                }
            }
            (Self::Last(a), Self::Last(b)) => {
                if let Some(b) = b
                    && a.as_ref().is_none_or(|a| b.0 >= a.0)
                {
                    *a = Some(b);
                }
            }
            (Self::Stddev(a), Self::Stddev(b)) => {
                // Chan et al.'s parallel combination of two Welford states.
                let total = a.count + b.count;
                if total > 0 {
                    let delta = b.mean - a.mean;
                    a.mean += delta * b.count as f64 / total as f64;
                    a.m2 +=
                        b.m2 + delta * delta * (a.count as f64) * (b.count as f64) / total as f64;
                    a.count = total;
                }
            }
            (Self::Percentile(a), Self::Percentile(b)) => a.merge(*b),
            (Self::Distinct(a), Self::Distinct(b)) => a.extend(*b),
            // Accumulators of one aggregate always have the same variant.
            _ => debug_assert!(false, "merged accumulators of different aggregates"),
        }
    }

    /// Approximate heap bytes held beyond the enum itself.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Self::First(Some(_)) | Self::Last(Some(_)) => 48,
            Self::Stddev(_) => 24,
            Self::Percentile(values) => values.heap_bytes(),
            Self::Distinct(seen) => seen.iter().map(|s| s.len() + 32).sum(),
            _ => 0,
        }
    }
}

/// Welford's online mean and variance.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Welford {
    count: u64,
    mean: f64,
    m2: f64,
}

/// Values for a percentile: kept exactly while few (most device windows hold a handful of
/// readings, and exact is both cheaper and precise), folded into a DDSketch (1% relative
/// error, bounded size) once there are more than [`Quantiles::EXACT_UP_TO`].
#[derive(Clone, Serialize, Deserialize)]
pub enum Quantiles {
    /// The first few values sit inline, so a small window costs one allocation.
    Exact(SmallVec<[f64; 4]>),
    Sketch(DDSketch),
}

impl Default for Quantiles {
    fn default() -> Self {
        Self::Exact(SmallVec::new())
    }
}

impl Quantiles {
    pub const EXACT_UP_TO: usize = 64;

    pub fn add(&mut self, x: f64) {
        match self {
            Self::Exact(values) if values.len() < Self::EXACT_UP_TO => values.push(x),
            Self::Exact(values) => {
                let mut sketch = DDSketch::new(SketchConfig::defaults());
                for v in values.drain(..) {
                    sketch.add(v);
                }
                sketch.add(x);
                *self = Self::Sketch(sketch);
            }
            Self::Sketch(sketch) => sketch.add(x),
        }
    }

    pub fn count(&self) -> usize {
        match self {
            Self::Exact(values) => values.len(),
            Self::Sketch(sketch) => sketch.count(),
        }
    }

    /// The `q` quantile: exact values use the lower nearest rank, `sorted[floor(q * (n-1))]`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        match self {
            Self::Exact(values) if values.is_empty() => None,
            Self::Exact(values) => {
                let mut sorted = values.clone();
                sorted.sort_by(f64::total_cmp);
                sorted
                    .get((q * (sorted.len() - 1) as f64).floor() as usize)
                    .copied()
            }
            Self::Sketch(sketch) => sketch.quantile(q).ok().flatten(),
        }
    }

    pub fn merge(&mut self, other: Quantiles) {
        match other {
            Self::Exact(values) => values.into_iter().for_each(|v| self.add(v)),
            Self::Sketch(theirs) => match self {
                Self::Sketch(ours) => {
                    // Sketches built with the same configuration always merge.
                    let _ = ours.merge(&theirs);
                }
                Self::Exact(values) => {
                    let mut sketch = theirs;
                    values.drain(..).for_each(|v| sketch.add(v));
                    *self = Self::Sketch(sketch);
                }
            },
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Self::Exact(values) if values.spilled() => values.capacity() * 8,
            Self::Exact(_) => 0,
            Self::Sketch(sketch) => 64 + sketch.length() * 8,
        }
    }
}

fn option_fold(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_equals_folding_everything_into_one() {
        let xs: Vec<Value> = (0..20).map(|i| Value::from((i * 7 % 13) as f64)).collect();
        for text in [
            "count()",
            "sum(x)",
            "avg(x)",
            "min(x)",
            "max(x)",
            "first(x)",
            "last(x)",
            "stddev(x)",
            "count_distinct(x)",
            "percentile(x, 0.9)",
        ] {
            let aggregate = Aggregate::parse(text).unwrap();
            let mut whole = aggregate.accumulator();
            let (mut left, mut right) = (aggregate.accumulator(), aggregate.accumulator());
            for (i, x) in xs.iter().enumerate() {
                let _ = whole.add(Some(x), i as i64);
                let _ = if i % 3 == 0 {
                    left.add(Some(x), i as i64)
                } else {
                    right.add(Some(x), i as i64)
                };
            }
            left.merge(right);
            let (a, b) = (
                whole.result(aggregate.function),
                left.result(aggregate.function),
            );
            match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{text}: {a} vs {b}"),
                _ => assert_eq!(a, b, "{text}"),
            }
        }
    }

    fn run(text: &str, values: &[Value]) -> Value {
        let aggregate = Aggregate::parse(text).unwrap();
        let mut acc = aggregate.accumulator();
        for (i, v) in values.iter().enumerate() {
            let _ = acc.add(Some(v), i as i64);
        }
        acc.result(aggregate.function)
    }

    #[test]
    fn numeric_aggregates() {
        let xs: Vec<Value> = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
            .iter()
            .map(|x| Value::from(*x))
            .collect();
        assert_eq!(run("count()", &xs), 8);
        assert_eq!(run("sum(x)", &xs), 40.0);
        assert_eq!(run("avg(x)", &xs), 5.0);
        assert_eq!(run("min(x)", &xs), 2.0);
        assert_eq!(run("max(x)", &xs), 9.0);
        assert_eq!(run("stddev(x)", &xs), 2.0);
        assert_eq!(run("first(x)", &xs), 2.0);
        assert_eq!(run("last(x)", &xs), 9.0);
        assert_eq!(run("count_distinct(x)", &xs), 5);
        let p50 = run("percentile(x, 0.5)", &xs).as_f64().unwrap();
        assert!((p50 - 4.0).abs() / 4.0 < 0.02, "{p50}");
    }

    #[test]
    fn accumulators_stay_small() {
        assert!(
            std::mem::size_of::<Accumulator>() <= 24,
            "{}",
            std::mem::size_of::<Accumulator>()
        );
    }

    #[test]
    fn percentiles_are_exact_when_few_and_sketched_when_many() {
        let mut q = Quantiles::default();
        for i in 1..=64 {
            q.add(i as f64);
        }
        assert_eq!(q.quantile(0.5), Some(32.0));
        assert!(matches!(q, Quantiles::Exact(_)));
        for i in 65..=1000 {
            q.add(i as f64);
        }
        assert!(matches!(q, Quantiles::Sketch(_)));
        let p90 = q.quantile(0.9).unwrap();
        assert!((p90 - 900.0).abs() / 900.0 < 0.02, "{p90}");
    }

    #[test]
    fn non_numbers_are_skipped_and_reported() {
        let aggregate = Aggregate::parse("avg(x)").unwrap();
        let mut acc = aggregate.accumulator();
        assert_eq!(acc.add(Some(&Value::from("hot")), 0), Err(Skip::NotANumber));
        assert_eq!(acc.add(None, 0), Err(Skip::Missing));
        assert_eq!(acc.result(aggregate.function), Value::Null);
        assert_eq!(acc.add(Some(&Value::from(3)), 0), Ok(()));
        assert_eq!(acc.result(aggregate.function), 3.0);
    }

    #[test]
    fn parse_errors_say_what_is_expected() {
        for bad in [
            "avg",
            "avg()",
            "median(x)",
            "percentile(x)",
            "percentile(x, 2)",
            "count(x)",
            "sum(a, b)",
        ] {
            assert!(Aggregate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Aggregate::parse(" percentile( v , 0.95 ) ")
                .unwrap()
                .function,
            Function::Percentile(0.95)
        );
    }
}
