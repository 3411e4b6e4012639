//! `${VAR}` substitution inside string values, after YAML parsing.
//!
//! Substituting after parsing means a secret containing `:` or `#` cannot change the shape of
//! the document, and an unset variable is reported at the field that uses it.
//!
//! - `${VAR}` is replaced by the variable; unset is an error.
//! - `${VAR:-default}` falls back to `default` when the variable is unset or empty.
//! - `$$` is a literal `$`.
//!
//! A string that is exactly one `${VAR}` takes the YAML type of what it expands to, so
//! `port: ${PORT}` is a number when `PORT=8080`.

use saphyr::ScalarOwned;
use serde_json::Value;

/// Expands the variables in `text`; errors name the first unset variable.
pub fn substitute(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Value, String> {
    if !text.contains('$') {
        return Ok(Value::String(text.to_owned()));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut references = 0;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{text}`: expected `${{NAME}}`"))?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&body[..end], None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a variable name: expected letters, digits and `_`"
                ));
            }
            match (
                lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (write `${{{name}:-default}}` for a fallback)"
                    ));
                }
            }
            references += 1;
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    let whole = text.starts_with("${") && text.ends_with('}') && references == 1;
    Ok(if whole {
        typed(out)
    } else {
        Value::String(out)
    })
}

/// Reads an expanded value the way YAML would have read it in place.
fn typed(text: String) -> Value {
    match ScalarOwned::parse_from_cow(text.as_str().into()) {
        ScalarOwned::Integer(i) => Value::from(i),
        ScalarOwned::FloatingPoint(f) => {
            serde_json::Number::from_f64(f.into_inner()).map_or(Value::String(text), Value::Number)
        }
        ScalarOwned::Boolean(b) => Value::Bool(b),
        _ => Value::String(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr:et".into()),
            "PORT" => Some("8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_inside_strings() {
        assert_eq!(
            substitute("Bearer ${TOKEN}", &env).unwrap(),
            "Bearer s3cr:et"
        );
        assert_eq!(substitute("cost: $$5", &env).unwrap(), "cost: $5");
        assert_eq!(substitute("a $ b", &env).unwrap(), "a $ b");
    }

    #[test]
    fn a_lone_reference_takes_its_yaml_type() {
        assert_eq!(substitute("${PORT}", &env).unwrap(), Value::from(8080));
        assert_eq!(substitute(":${PORT}", &env).unwrap(), ":8080");
    }

    #[test]
    fn defaults_and_errors() {
        assert_eq!(substitute("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(substitute("${EMPTY:-x}", &env).unwrap(), "x");
        let err = substitute("${NOPE}", &env).unwrap_err();
        assert!(err.contains("`NOPE` is not set"), "{err}");
        assert!(substitute("${unclosed", &env).is_err());
        assert!(substitute("${bad-name}", &env).is_err());
    }
}
