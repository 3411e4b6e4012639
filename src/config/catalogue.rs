//! The catalogue: the closed set of component types and services one build of weir has.
//!
//! The engine names no concrete component. Whoever assembles weir lists every type of
//! every section here, once, and hands the catalogue to the loader (which types options
//! by it), to the schema generator (which describes them) and, through the typed options
//! it produced, to the builder. An explicit list rather than linker-collected
//! registration: a type left out fails loudly in `validate` and in the schema test, where
//! a registration the linker dropped would leave the catalogue silently short.

use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::action::ActionComponent;
use super::aggregator::AggregatorComponent;
use super::service::ServiceConfig;
use super::sink::SinkComponent;
use super::source::SourceComponent;
use super::transform::TransformComponent;
use super::{ComponentConfig, ComponentKind, SectionOptions};

/// Why options could not be read, with the path to the offending field.
pub type OptionsError = serde_path_to_error::Error<serde_json::Error>;

/// One component type of a section: its `type`, how its options are read, their schema.
pub struct ComponentType<T: ?Sized> {
    pub name: &'static str,
    parse: fn(Value) -> Result<Arc<T>, OptionsError>,
    schema: fn(&mut SchemaGenerator) -> Schema,
}

impl<T: ?Sized> ComponentType<T> {
    /// Reads this type's options.
    pub fn parse(&self, options: Value) -> Result<Arc<T>, OptionsError> {
        (self.parse)(options)
    }

    /// The JSON Schema of this type's options.
    pub fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        (self.schema)(generator)
    }
}

impl<T: ?Sized> ComponentType<T> {
    /// The type `name`, whose options are `C`.
    pub const fn of<C: InSection<T> + DeserializeOwned + JsonSchema>(name: &'static str) -> Self {
        Self {
            name,
            parse: parse_as::<C, T>,
            schema: schema_of::<C>,
        }
    }
}

fn parse_as<C: InSection<T> + DeserializeOwned, T: ?Sized>(
    options: Value,
) -> Result<Arc<T>, OptionsError> {
    serde_path_to_error::deserialize::<_, C>(options).map(|c| Arc::new(c).into_section())
}

fn schema_of<C: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    C::json_schema(generator)
}

/// Options of a component type of the section whose trait object is `T`.
pub trait InSection<T: ?Sized> {
    fn into_section(self: Arc<Self>) -> Arc<T>;
}

macro_rules! in_section {
    ($($trait:ident),*) => {$(
        impl<C: $trait> InSection<dyn $trait> for C {
            fn into_section(self: Arc<Self>) -> Arc<dyn $trait> {
                self
            }
        }
    )*};
}

in_section!(
    SourceComponent,
    TransformComponent,
    AggregatorComponent,
    SinkComponent,
    ActionComponent
);

/// A shared service with settings of its own: a top-level key of the pipeline language
/// (`registry:`), read into a [`ServiceConfig`] that starts the service.
pub struct ServiceType {
    /// The top-level key of its settings; the service runs when the key is set.
    pub key: &'static str,
    /// What it is, in messages: `the device registry`.
    pub describes: &'static str,
    /// A minimal setting, in messages: `registry: { path: registry.redb }`.
    pub example: &'static str,
    /// The description of the key in the JSON Schema.
    pub doc: &'static str,
    parse: fn(Value) -> Result<Arc<dyn ServiceConfig>, OptionsError>,
    schema: fn(&mut SchemaGenerator) -> Schema,
}

impl ServiceType {
    /// The service whose settings are `C`, under `key`.
    pub const fn of<C: ServiceConfig + DeserializeOwned + JsonSchema>(
        key: &'static str,
        describes: &'static str,
        example: &'static str,
        doc: &'static str,
    ) -> Self {
        Self {
            key,
            describes,
            example,
            doc,
            parse: Self::parse_as::<C>,
            schema: optional_schema_of::<C>,
        }
    }

    fn parse_as<C: ServiceConfig + DeserializeOwned>(
        options: Value,
    ) -> Result<Arc<dyn ServiceConfig>, OptionsError> {
        serde_path_to_error::deserialize::<_, C>(options)
            .map(|c| Arc::new(c) as Arc<dyn ServiceConfig>)
    }

    /// Reads the service's settings.
    pub fn parse(&self, options: Value) -> Result<Arc<dyn ServiceConfig>, OptionsError> {
        (self.parse)(options)
    }

    /// The schema of the key: the settings, or `null` for none.
    pub fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        let mut schema = (self.schema)(generator);
        schema.insert("description".into(), self.doc.into());
        schema
    }
}

fn optional_schema_of<C: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<Option<C>>()
}

/// Every component type and service one build of weir has.
pub struct Catalogue {
    pub sources: &'static [ComponentType<dyn SourceComponent>],
    pub transforms: &'static [ComponentType<dyn TransformComponent>],
    pub aggregators: &'static [ComponentType<dyn AggregatorComponent>],
    pub sinks: &'static [ComponentType<dyn SinkComponent>],
    pub actions: &'static [ComponentType<dyn ActionComponent>],
    pub services: &'static [ServiceType],
}

impl Catalogue {
    /// Every `type` the section of `kind` accepts, in catalogue order.
    pub fn type_names(&self, kind: ComponentKind) -> Vec<&'static str> {
        fn names<T: ?Sized>(types: &[ComponentType<T>]) -> Vec<&'static str> {
            types.iter().map(|t| t.name).collect()
        }
        match kind {
            ComponentKind::Source => names(self.sources),
            ComponentKind::Transform => names(self.transforms),
            ComponentKind::Aggregator => names(self.aggregators),
            ComponentKind::Sink => names(self.sinks),
            ComponentKind::Action => names(self.actions),
        }
    }

    /// Reads the options of a `type_name` component of section `kind`; `None` for a type
    /// the section does not have.
    pub fn parse(
        &self,
        kind: ComponentKind,
        type_name: &str,
        options: Value,
    ) -> Option<Result<ComponentConfig, OptionsError>> {
        fn find<'a, T: ?Sized>(
            types: &'a [ComponentType<T>],
            name: &str,
        ) -> Option<&'a ComponentType<T>> {
            types.iter().find(|t| t.name == name)
        }
        let (name, options) = match kind {
            ComponentKind::Source => {
                let t = find(self.sources, type_name)?;
                (t.name, t.parse(options).map(SectionOptions::Source))
            }
            ComponentKind::Transform => {
                let t = find(self.transforms, type_name)?;
                (t.name, t.parse(options).map(SectionOptions::Transform))
            }
            ComponentKind::Aggregator => {
                let t = find(self.aggregators, type_name)?;
                (t.name, t.parse(options).map(SectionOptions::Aggregator))
            }
            ComponentKind::Sink => {
                let t = find(self.sinks, type_name)?;
                (t.name, t.parse(options).map(SectionOptions::Sink))
            }
            ComponentKind::Action => {
                let t = find(self.actions, type_name)?;
                (t.name, t.parse(options).map(SectionOptions::Action))
            }
        };
        Some(options.map(|options| ComponentConfig::new(name, options)))
    }

    /// The schema of each type's options in the section of `kind`, in catalogue order.
    pub fn option_schemas(
        &self,
        kind: ComponentKind,
        generator: &mut SchemaGenerator,
    ) -> Vec<(&'static str, Schema)> {
        fn schemas<T: ?Sized>(
            types: &[ComponentType<T>],
            generator: &mut SchemaGenerator,
        ) -> Vec<(&'static str, Schema)> {
            types
                .iter()
                .map(|t| (t.name, t.schema(generator)))
                .collect()
        }
        match kind {
            ComponentKind::Source => schemas(self.sources, generator),
            ComponentKind::Transform => schemas(self.transforms, generator),
            ComponentKind::Aggregator => schemas(self.aggregators, generator),
            ComponentKind::Sink => schemas(self.sinks, generator),
            ComponentKind::Action => schemas(self.actions, generator),
        }
    }

    /// The service whose settings live under `key`.
    pub fn service(&self, key: &str) -> Option<&ServiceType> {
        self.services.iter().find(|s| s.key == key)
    }
}
