//! The records the registry keeps: devices and enrollment groups, and the requests that
//! create or change them.

use std::sync::Arc;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};

use super::keys;
use crate::config::Sensitive;

/// Free key/values: tags and desired/reported properties.
pub type Properties = Map<String, Value>;

/// Whether a device may send.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Enabled,
    Disabled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
}

/// One device's identity, as stored and as the API shows it (its keys to `admin` only).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct Device {
    pub id: String,
    pub status: Status,
    /// Base64 of 32 random bytes (or derived from an enrollment group's key).
    #[schema(required = false, value_type = String)]
    pub primary_key: Sensitive,
    #[schema(required = false, value_type = String)]
    pub secondary_key: Sensitive,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub tags: Properties,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub desired: Properties,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub reported: Properties,
    /// The twin's desired `$version`: 1 when the device is made, one more with every
    /// change of `desired` (0 only in a record the store has not migrated).
    #[serde(default)]
    pub desired_version: u64,
    /// The twin's reported `$version`, as `desired_version` for `reported`.
    #[serde(default)]
    pub reported_version: u64,
    /// The enrollment group the device registered through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_activity: Option<Timestamp>,
    /// Changes with every write; `If-Match` compares against it.
    pub etag: String,
}

impl Device {
    /// A new enabled device; missing keys are generated.
    pub fn new(spec: DeviceSpec, now: Timestamp) -> Self {
        let fields = spec.fields;
        Self {
            id: spec.id,
            status: fields.status.unwrap_or_default(),
            primary_key: fields
                .primary_key
                .unwrap_or_else(|| keys::generate().into()),
            secondary_key: fields
                .secondary_key
                .unwrap_or_else(|| keys::generate().into()),
            x509_thumbprint: fields.x509_thumbprint.filter(|t| !t.is_empty()),
            tags: fields.tags.unwrap_or_default(),
            desired: fields.desired.unwrap_or_default(),
            reported: fields.reported.unwrap_or_default(),
            desired_version: 1,
            reported_version: 1,
            enrollment_group: None,
            created_at: now,
            updated_at: now,
            last_activity: None,
            etag: new_etag(),
        }
    }

    /// The record as `enrich` adds it to events: `id`, `status`, the tags as fields, and
    /// the desired/reported properties (keys and etag are left out).
    pub fn enrichment(&self) -> Value {
        let mut map = Map::with_capacity(self.tags.len() + 4);
        map.insert("id".into(), Value::from(self.id.as_str()));
        map.insert("status".into(), Value::from(self.status.as_str()));
        for (key, value) in &self.tags {
            if !matches!(key.as_str(), "id" | "status") {
                map.insert(key.clone(), value.clone());
            }
        }
        if !self.desired.is_empty() {
            map.insert("desired".into(), Value::Object(self.desired.clone()));
        }
        if !self.reported.is_empty() {
            map.insert("reported".into(), Value::Object(self.reported.clone()));
        }
        Value::Object(map)
    }

    /// Whether every `key=value` of `filter` is among the tags (values compared as text, so
    /// `max_temp=95` finds the number 95).
    pub fn has_tags(&self, filter: &[(String, String)]) -> bool {
        tags_match(
            &self.tags,
            filter.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    /// The record without its keys, for lists and lifecycle events.
    pub fn without_keys(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.remove("primary_key");
            map.remove("secondary_key");
        }
        value
    }
}

/// Whether `tags` has every `key=value` of `filter` (values compared as text).
pub fn tags_match<'a>(
    tags: &Properties,
    mut filter: impl Iterator<Item = (&'a str, &'a str)>,
) -> bool {
    filter.all(|(key, wanted)| match tags.get(key) {
        Some(Value::String(s)) => s == wanted,
        Some(other) => other.to_string().as_str() == wanted,
        None => false,
    })
}

/// A fresh etag: 16 hex digits, unique per write (a counter would repeat after a delete and
/// re-create, letting a stale `If-Match` through).
pub fn new_etag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A record to create: an id and the fields of its patch type (missing keys are
/// generated). [`DeviceSpec`] is the API's and the import's row.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Spec<P> {
    pub id: String,
    #[serde(flatten)]
    pub fields: P,
}

pub type DeviceSpec = Spec<DevicePatch>;
pub type GroupSpec = Spec<GroupPatch>;

/// By hand, because `deny_unknown_fields` does not work through `flatten`.
impl<'de, P: serde::de::DeserializeOwned> Deserialize<'de> for Spec<P> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = Map::deserialize(deserializer)?;
        let id = match map.remove("id") {
            Some(Value::String(id)) => id,
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`id` is {other}: expected a string"
                )));
            }
            None => return Err(D::Error::missing_field("id")),
        };
        let fields = P::deserialize(Value::Object(map)).map_err(D::Error::custom)?;
        Ok(Self { id, fields })
    }
}

/// The schema of a record to create: its patch type's, with a required `id`. By hand, for
/// the same reason as `Deserialize`: a derived one would say `allOf` the patch type, which
/// allows no other field than its own, `id` included.
impl<P: ToSchema> utoipa::PartialSchema for Spec<P> {
    fn schema() -> RefOr<Schema> {
        let mut schema = P::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            // A number is taken as its text (CSV and NDJSON imports have numeric ids).
            let id = ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::String, Type::Number]))
                .min_length(Some(1))
                .max_length(Some(128))
                .pattern(Some(r"^[^/\s\x00-\x1f\x7f-\x9f]+$"))
                .description(Some(
                    "1 to 128 bytes, no `/`, no whitespace, no control character",
                ));
            object.properties.insert("id".into(), id.into());
            object.required.insert(0, "id".into());
            object.description =
                Some("A record to create: an `id` and any field of a patch".into());
        }
        schema
    }
}

impl<P: ToSchema> ToSchema for Spec<P> {
    /// `DeviceSpec` for `DevicePatch`, `GroupSpec` for `GroupPatch`.
    fn name() -> std::borrow::Cow<'static, str> {
        P::name().replace("Patch", "Spec").into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        P::schemas(schemas);
    }
}

impl DeviceSpec {
    /// Checks what serde cannot: a usable id and Base64 keys of at least 16 bytes.
    pub fn check(&self) -> Result<(), String> {
        check_id(&self.id)?;
        self.fields.check()
    }
}

/// Changes to a device: each field given replaces the stored one (tags and properties as a
/// whole).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = key_schema)]
    pub primary_key: Option<Sensitive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = key_schema)]
    pub secondary_key: Option<Sensitive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<Properties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub desired: Option<Properties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub reported: Option<Properties>,
}

impl DevicePatch {
    pub fn check(&self) -> Result<(), String> {
        for (name, key) in [
            ("primary_key", &self.primary_key),
            ("secondary_key", &self.secondary_key),
        ] {
            if let Some(key) = key {
                check_key(name, key.expose_str())?;
            }
        }
        Ok(())
    }

    pub fn apply(self, device: &mut Device) {
        let Self {
            status,
            primary_key,
            secondary_key,
            x509_thumbprint,
            tags,
            desired,
            reported,
        } = self;
        if let Some(v) = status {
            device.status = v;
        }
        if let Some(v) = primary_key {
            device.primary_key = v;
        }
        if let Some(v) = secondary_key {
            device.secondary_key = v;
        }
        if let Some(v) = x509_thumbprint {
            device.x509_thumbprint = Some(v).filter(|t| !t.is_empty());
        }
        if let Some(v) = tags {
            device.tags = v;
        }
        if let Some(v) = desired {
            device.desired = v;
        }
        if let Some(v) = reported {
            device.reported = v;
        }
    }
}

/// The schema of a key a request may set: Base64 of at least 16 bytes, or `null`.
fn key_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(keys::KEY_PATTERN))
        .description(Some("Base64 of at least 16 bytes"))
        .into()
}

/// Device ids travel in URL paths, topics and SAS resources: 1 to 128 printable characters,
/// no `/`, no whitespace.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("id `{id}` must be 1 to 128 bytes"));
    }
    if id
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "id `{id}` holds `/`, whitespace or a control character"
        ));
    }
    Ok(())
}

fn check_key(name: &str, key: &str) -> Result<(), String> {
    match keys::decode(key) {
        Some(bytes) if bytes.len() >= 16 => Ok(()),
        _ => Err(format!("`{name}` must be Base64 of at least 16 bytes")),
    }
}

/// An enrollment group: devices holding a key derived from its key register themselves on
/// first contact and inherit its tags.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct EnrollmentGroup {
    pub id: String,
    /// Base64; device keys are Base64(HMAC-SHA256(this key decoded, device id)).
    #[schema(value_type = String)]
    pub key: Sensitive,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub tags: Properties,
    /// Whether a device with a valid derived-key token registers itself on first contact.
    pub auto_register: bool,
    pub status: Status,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    pub etag: String,
}

impl GroupSpec {
    pub fn check(&self) -> Result<(), String> {
        check_id(&self.id)?;
        self.fields.check()
    }

    pub fn into_group(self, now: Timestamp) -> EnrollmentGroup {
        let fields = self.fields;
        EnrollmentGroup {
            id: self.id,
            key: fields.key.unwrap_or_else(|| keys::generate().into()),
            tags: fields.tags.unwrap_or_default(),
            auto_register: fields.auto_register.unwrap_or(true),
            status: fields.status.unwrap_or_default(),
            created_at: now,
            updated_at: now,
            etag: new_etag(),
        }
    }
}

/// Changes to an enrollment group.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = key_schema)]
    pub key: Option<Sensitive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<Properties>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_register: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl GroupPatch {
    pub fn check(&self) -> Result<(), String> {
        match &self.key {
            Some(key) => check_key("key", key.expose_str()),
            None => Ok(()),
        }
    }

    pub fn apply(self, group: &mut EnrollmentGroup) {
        if let Some(v) = self.key {
            group.key = v;
        }
        if let Some(v) = self.tags {
            group.tags = v;
        }
        if let Some(v) = self.auto_register {
            group.auto_register = v;
        }
        if let Some(v) = self.status {
            group.status = v;
        }
    }
}

/// A device as the lookup table holds it: the record plus what the hot paths need ready
/// (decoded keys for SAS checks, the `device` value `enrich` adds).
#[derive(Debug)]
pub struct Entry {
    pub device: Device,
    /// Last activity, Unix milliseconds (0: never), kept in memory between writes.
    pub(super) last_seen: std::sync::atomic::AtomicI64,
    /// The last activity the store has.
    pub(super) stored_seen: std::sync::atomic::AtomicI64,
    pub primary: Vec<u8>,
    pub secondary: Vec<u8>,
    pub enrichment: Value,
}

impl Entry {
    pub fn new(device: Device) -> Arc<Self> {
        let seen = device.last_activity.map_or(0, |t| t.as_millisecond());
        Arc::new(Self {
            last_seen: std::sync::atomic::AtomicI64::new(seen),
            stored_seen: std::sync::atomic::AtomicI64::new(seen),
            primary: keys::decode(device.primary_key.expose_str()).unwrap_or_default(),
            secondary: keys::decode(device.secondary_key.expose_str()).unwrap_or_default(),
            enrichment: device.enrichment(),
            device,
        })
    }
}
