//! The JSON Schema of the pipeline language, generated from the config types.
//!
//! Editors with the YAML language server validate and complete pipelines from it
//! (`# yaml-language-server: $schema=../schemas/pipeline.schema.json`). It is committed at
//! `schemas/pipeline.schema.json`; a test fails when that file is stale.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::unit_test::UnitTest;
use super::{Catalogue, ComponentKind, GlobalConfig};

/// The schema as pretty-printed JSON with a trailing newline.
pub fn pipeline_schema_json(catalogue: &Catalogue) -> String {
    let mut text = serde_json::to_string_pretty(&pipeline_schema(catalogue)).unwrap_or_default();
    text.push('\n');
    text
}

/// The whole language: globals plus one property per section.
pub fn pipeline_schema(catalogue: &Catalogue) -> Value {
    let mut generator = SchemaSettings::draft07().into_generator();
    let globals = generator.root_schema_for::<GlobalConfig>().to_value();

    // The services' keys go where the loader lists them: before `watch`.
    let mut properties = Map::new();
    let engine = globals.get("properties").and_then(Value::as_object);
    for (key, schema) in engine.into_iter().flatten() {
        if key == "watch" {
            for service in catalogue.services {
                properties.insert(
                    service.key.into(),
                    service.schema(&mut generator).to_value(),
                );
            }
        }
        properties.insert(key.clone(), schema.clone());
    }
    let mut properties = Value::Object(properties);
    for kind in ComponentKind::ALL {
        let types = catalogue.option_schemas(kind, &mut generator);
        let variants: Vec<Value> = types
            .into_iter()
            .map(|(name, schema)| component_schema(kind, name, schema.to_value()))
            .collect();
        properties[kind.section()] = json!({
            "type": ["object", "null"],
            "description": format!("{}s by id", kind.noun()),
            "propertyNames": { "pattern": "^[A-Za-z0-9_-]+$" },
            "additionalProperties": { "oneOf": variants },
        });
    }
    let tests = generator.subschema_for::<Vec<UnitTest>>().to_value();
    properties[super::TESTS_KEY] = json!({
        "description": "Unit tests of the pipeline, run by `weir test` (never by `weir run`); also in `*.test.yaml` files beside it.",
        "anyOf": [tests, { "type": "null" }],
    });

    let mut definitions = Map::new();
    if let Some(Value::Object(defs)) = globals.get("definitions") {
        definitions.extend(defs.clone());
    }
    for (name, schema) in generator.definitions() {
        definitions.insert(name.clone(), schema.clone());
    }

    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "weir pipeline",
        "description": "A weir topology: sources, transforms, aggregators, sinks and actions wired by `inputs`.",
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
        "definitions": definitions,
    })
}

/// One type's options plus the keys every component of the section has.
fn component_schema(kind: ComponentKind, type_name: &str, mut options: Value) -> Value {
    let object = options
        .as_object_mut()
        .expect("config structs have object schemas");
    let properties = object.entry("properties").or_insert_with(|| json!({}));
    properties["type"] = json!({ "const": type_name });
    let mut required = vec![json!("type")];
    if kind.takes_inputs() {
        properties["inputs"] = json!({
            "description": "Component ids (`id`, `id.output`) or globs (`plant_*`) to read from.",
            "type": "array",
            "items": { "type": "string" },
            "minItems": 1,
        });
        required.push(json!("inputs"));
    }
    let common = common_schema();
    for key in super::common::CommonOptions::allowed(kind) {
        if let Some(schema) = common.get(*key) {
            properties[*key] = schema.clone();
        }
    }
    if let Some(Value::Array(existing)) = object.get("required") {
        required.extend(existing.iter().cloned());
    }
    object.insert("required".into(), Value::Array(required));
    object.insert("additionalProperties".into(), json!(false));
    object.remove("$schema");
    object.remove("title");
    options
}

/// The schemas of the options a section's every type may take (`redact`, `trace`),
/// inlined so each component's schema stands alone.
fn common_schema() -> Map<String, Value> {
    let mut settings = SchemaSettings::draft07();
    settings.inline_subschemas = true;
    let schema = settings
        .into_generator()
        .into_root_schema_for::<super::common::CommonOptions>()
        .to_value();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}
