//! How `weir tap` prints an event: one JSON line, a YAML document, or one logfmt line.

use serde_json::Value;

/// The output formats of `weir tap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TapFormat {
    Json,
    Yaml,
    Logfmt,
}

/// `value` in `format`, ending with a newline.
pub fn render(value: &Value, format: TapFormat) -> String {
    match format {
        TapFormat::Json => {
            let mut line = serde_json::to_string(value).unwrap_or_default();
            line.push('\n');
            line
        }
        TapFormat::Yaml => {
            let mut out = String::from("---\n");
            yaml(value, 0, &mut out);
            out
        }
        TapFormat::Logfmt => {
            let mut pairs = Vec::new();
            flatten(value, &mut String::new(), &mut pairs);
            let mut line = pairs
                .into_iter()
                .map(|(key, text)| format!("{key}={}", logfmt_value(&text)))
                .collect::<Vec<_>>()
                .join(" ");
            line.push('\n');
            line
        }
    }
}

/// Writes `value` as block YAML at `indent`: scalars as JSON text (a JSON string is a
/// YAML double-quoted scalar), so nothing needs YAML's own quoting rules.
fn yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                out.push_str(&pad);
                out.push_str(&yaml_key(key));
                out.push(':');
                nested(item, indent, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                nested(item, indent, out);
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&scalar.to_string());
            out.push('\n');
        }
    }
}

/// The value after `key:` or `-`: a scalar on the same line, a collection below it.
fn nested(item: &Value, indent: usize, out: &mut String) {
    match item {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml(item, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml(item, indent + 2, out);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar.to_string());
            out.push('\n');
        }
    }
}

fn yaml_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    match plain {
        true => key.to_owned(),
        false => Value::from(key).to_string(),
    }
}

/// Leaves of `value` as `a.b.c` keys and their text.
fn flatten(value: &Value, path: &mut String, out: &mut Vec<(String, String)>) {
    let mut descend = |key: &str, item: &Value, path: &mut String| {
        let depth = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        flatten(item, path, out);
        path.truncate(depth);
    };
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                descend(key, item, path);
            }
        }
        Value::Array(items) => {
            for (n, item) in items.iter().enumerate() {
                descend(&n.to_string(), item, path);
            }
        }
        Value::String(text) => out.push((path.clone(), text.clone())),
        other => out.push((path.clone(), other.to_string())),
    }
}

fn logfmt_value(text: &str) -> String {
    let needs_quotes = text.is_empty()
        || text
            .chars()
            .any(|c| c.is_whitespace() || c == '=' || c == '"' || c.is_control());
    match needs_quotes {
        true => Value::from(text).to_string(),
        false => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"device_id": "pump 1", "t": 21.5, "tags": {"site": "a=b"}, "list": [1, {"x": null}]})
    }

    #[test]
    fn yaml_is_read_back_as_the_same_value() {
        let text = render(&event(), TapFormat::Yaml);
        assert!(text.starts_with("---\n"));
        assert_eq!(read_yaml(&text), event());
    }

    /// Reads YAML with the loader weir reads pipelines with.
    fn read_yaml(text: &str) -> Value {
        let file: std::sync::Arc<std::path::Path> = std::path::Path::new("tap.yaml").into();
        let node = crate::config::yaml::Node::parse(&file, text).expect("valid YAML");
        let mut errors = Vec::new();
        node.to_json(&|_| None, &mut errors)
    }

    #[test]
    fn logfmt_flattens_and_quotes() {
        assert_eq!(
            render(&event(), TapFormat::Logfmt),
            "device_id=\"pump 1\" t=21.5 tags.site=\"a=b\" list.0=1 list.1.x=null\n"
        );
    }
}
