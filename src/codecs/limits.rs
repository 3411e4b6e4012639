//! Bounds on one decoded reading: how many fields it has and how deep its objects and
//! arrays nest. Devices are outside data; without these a single payload could carry a
//! reading with a million fields (each a Delta column, a Redis hash entry, a template
//! lookup) or a nesting deep enough to exhaust a stack in whatever walks it next.

use serde_json::Value;

use crate::event::Fields;

/// The limits every reading a decoder yields is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadingLimits {
    /// The most top-level fields of one reading.
    pub max_fields: usize,
    /// The deepest nesting of objects and arrays; the reading's own object is depth 1.
    pub max_depth: usize,
}

pub(super) fn default_max_fields() -> usize {
    1000
}

pub(super) fn default_max_depth() -> usize {
    32
}

impl ReadingLimits {
    /// Refuses limits no reading could meet.
    pub fn check(&self) -> Result<(), String> {
        if self.max_fields == 0 {
            return Err("`max_fields` is 0: expected at least 1".into());
        }
        if self.max_depth == 0 {
            return Err("`max_depth` is 0: expected at least 1 (a flat reading)".into());
        }
        Ok(())
    }

    /// Says why `reading` is over a limit, if it is.
    pub fn admit(&self, reading: &Fields) -> Result<(), String> {
        if reading.len() > self.max_fields {
            return Err(format!(
                "it has {} fields, more than `max_fields` ({})",
                reading.len(),
                self.max_fields
            ));
        }
        // Walked with an explicit stack: the point is not to trust the nesting.
        let mut pending: Vec<(&Value, usize)> = reading.values().map(|v| (v, 2)).collect();
        while let Some((value, depth)) = pending.pop() {
            let children: Box<dyn Iterator<Item = &Value>> = match value {
                Value::Object(fields) => Box::new(fields.values()),
                Value::Array(items) => Box::new(items.iter()),
                _ => continue,
            };
            if depth > self.max_depth {
                return Err(format!(
                    "its objects and arrays nest deeper than `max_depth` ({})",
                    self.max_depth
                ));
            }
            pending.extend(children.map(|child| (child, depth + 1)));
        }
        Ok(())
    }
}
