//! Secrets in settings: values that `Debug`, `Display`, logs and error messages never show.
//!
//! [`Sensitive`] holds a password, a token, a key or a header value. It reads from the same
//! YAML string as a plain field (after `${VAR}` substitution, so `password: ${SMTP_PASS}`
//! works, even when the variable holds digits only), has the same JSON Schema, and prints
//! as `***`. The value is reached only through [`Sensitive::expose`], at the one place that
//! uses it (the SMTP login, the request header, the store).
//!
//! [`RedactedUrl`] is a URL that may carry a password or a token in its query: it prints
//! through [`crate::redact::url`], which keeps the scheme, host and path an operator needs
//! to find the endpoint.
//!
//! Both serialize to the real value: the registry stores device keys through them and the
//! admin API returns keys to admins. Settings themselves are never serialized for output.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::template::Template;

/// What a secret or a URL can be held as: text read from the settings.
pub trait SecretText: Sized {
    /// Reads the text; an error must not quote it.
    fn from_text(text: String) -> Result<Self, String>;
    /// The text as written.
    fn text(&self) -> &str;
}

impl SecretText for String {
    fn from_text(text: String) -> Result<Self, String> {
        Ok(text)
    }

    fn text(&self) -> &str {
        self
    }
}

impl SecretText for Template {
    fn from_text(text: String) -> Result<Self, String> {
        // A compile error quotes the template: keep the reason, not the secret.
        Template::compile(&text).map_err(|err| err.replace(text.as_str(), "***"))
    }

    fn text(&self) -> &str {
        self.source()
    }
}

/// A password, token, key or header value: prints as `***`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Sensitive<T = String>(T);

impl<T> Sensitive<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl Sensitive<String> {
    /// The secret as text, for the one place that uses it.
    pub fn expose_str(&self) -> &str {
        &self.0
    }
}

impl<T> From<T> for Sensitive<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl From<&str> for Sensitive<String> {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// For command-line options (`--token`).
impl std::str::FromStr for Sensitive<String> {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A URL whose password and secret query values print as `***`
/// ([`crate::redact::url`]).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct RedactedUrl<T = String>(T);

impl<T: SecretText> RedactedUrl<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The whole URL, credentials included, for the one place that connects with it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// The URL as it may be shown: in logs, errors and dead letters.
    pub fn redacted(&self) -> String {
        crate::redact::url(self.0.text())
    }
}

impl RedactedUrl<String> {
    /// The whole URL as text, for the one place that connects with it.
    pub fn expose_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for RedactedUrl<String> {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl<T: SecretText> fmt::Debug for RedactedUrl<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl<T: SecretText> fmt::Display for RedactedUrl<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Reads a string; a number or a boolean (what `${VAR}` alone becomes when the variable
/// holds `12345` or `true`) is read as its text. Errors never quote the value.
fn read_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    deserializer.deserialize_any(Text)
}

macro_rules! text_wrapper {
    ($ty:ident) => {
        impl<'de, T: SecretText> Deserialize<'de> for $ty<T> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = read_text(deserializer)?;
                T::from_text(text)
                    .map(Self)
                    .map_err(serde::de::Error::custom)
            }
        }

        impl<T: SecretText> Serialize for $ty<T> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.0.text())
            }
        }

        /// The schema of the text it holds: users write a plain string.
        impl<T: JsonSchema> JsonSchema for $ty<T> {
            fn inline_schema() -> bool {
                T::inline_schema()
            }

            fn schema_name() -> std::borrow::Cow<'static, str> {
                T::schema_name()
            }

            fn schema_id() -> std::borrow::Cow<'static, str> {
                T::schema_id()
            }

            fn json_schema(generator: &mut SchemaGenerator) -> Schema {
                T::json_schema(generator)
            }
        }
    };
}

text_wrapper!(Sensitive);
text_wrapper!(RedactedUrl);

/// `text` with every occurrence of each secret replaced by `***`: for messages built from
/// what a server answered, which may echo a request's headers or URL back.
pub fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        // Very short values (`1`, `on`) would mask innocent text and hide little.
        if secret.len() >= 4 && out.contains(secret) {
            out = out.replace(secret, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_stars_and_reads_like_a_string() {
        let secret: Sensitive = serde_json::from_value(serde_json::json!("hunter2")).unwrap();
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(secret.expose_str(), "hunter2");
        let digits: Sensitive = serde_json::from_value(serde_json::json!(12345)).unwrap();
        assert_eq!(digits.expose_str(), "12345");
        assert_eq!(serde_json::to_value(&secret).unwrap(), "hunter2");
        assert_eq!(
            serde_json::to_value(schemars::schema_for!(Sensitive)).unwrap()["type"],
            "string"
        );
    }

    #[test]
    fn a_template_error_does_not_quote_the_secret() {
        let err = serde_json::from_value::<Sensitive<Template>>(serde_json::json!(
            "Bearer s3cret-{{ oops"
        ))
        .unwrap_err()
        .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn urls_print_redacted() {
        let url = RedactedUrl::from("amqp://app:s3cret@broker:5672/%2f");
        assert_eq!(format!("{url}"), "amqp://app:***@broker:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose_str(), "amqp://app:s3cret@broker:5672/%2f");
    }

    #[test]
    fn scrub_masks_every_occurrence() {
        assert_eq!(
            scrub("got Bearer abcd and abcd", ["abcd", "x"]),
            "got Bearer *** and ***"
        );
    }
}
