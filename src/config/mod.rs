//! The pipeline language: loading, merging and validating topologies written in YAML.
//!
//! [`load`] reads files and directories into a [`TopologyConfig`]: every component's typed
//! configuration, its resolved inputs, and the position it was written at. Everything a
//! user can get wrong is found here, before anything starts, and reported as
//! [`Diagnostics`] that name the file, line, column and component.
//!
//! It also holds the contract every component type meets, one module per section
//! ([`source`], [`transform`], [`aggregator`], [`sink`], [`action`]: the trait and the
//! build context) and every service ([`service`]), and the shape of the [`Catalogue`] of
//! types it is handed: the language knows sections, never a concrete type.

pub mod action;
pub mod aggregator;
mod api_jwt;
mod catalogue;
pub mod common;
pub mod component;
pub use api_jwt::{JwksSource, JwtConfig};
mod diagnostic;
mod env;
mod load;
mod nesting;
mod options;
mod role;
mod run_mode;
pub mod schema;
mod sensitive;
pub mod service;
pub mod sink;
pub mod source;
pub mod telemetry;
mod tls;
pub mod transform;
pub mod unit_test;
mod units;
mod validate;
pub mod yaml;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use self::tls::TlsConfig;
pub use catalogue::{Catalogue, ComponentType, OptionsError, ServiceType};
pub use component::{
    ComponentId, ComponentKind, ComponentTask, FieldProblem, OutputName, Resource,
};
pub use diagnostic::{Diagnostic, Diagnostics, Location, Severity, did_you_mean};
pub use load::{TESTS_KEY, load, load_str, pipeline_files};
pub use options::Options;
pub use role::{Grant, Role, RoleBinding, Scope, describe_scope};
pub use run_mode::{BatchRange, RunMode};
pub use sensitive::{RedactedUrl, SecretText, Sensitive, scrub};
pub use service::{ServiceConfigs, ServiceUse};
pub use unit_test::is_test_file;
pub use units::{ByteSize, Duration};
pub use yaml::PathStep;

use action::ActionComponent;
use aggregator::AggregatorComponent;
use sink::SinkComponent;
use source::SourceComponent;
use transform::TransformComponent;

/// A whole topology, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TopologyConfig {
    pub globals: GlobalConfig,
    /// Every component by id (ids are unique across sections).
    pub components: BTreeMap<ComponentId, Component>,
}

impl TopologyConfig {
    /// The components that read `output`, in id order.
    pub fn consumers_of<'a>(
        &'a self,
        output: &'a OutputRef,
    ) -> impl Iterator<Item = &'a Component> + 'a {
        self.components
            .values()
            .filter(move |c| c.inputs.contains(output))
    }
}

/// One component: its typed configuration, its inputs and where it was declared.
#[derive(Clone, Debug, PartialEq)]
pub struct Component {
    pub id: ComponentId,
    pub config: ComponentConfig,
    /// The outputs it reads, globs expanded.
    pub inputs: Vec<OutputRef>,
    /// Where its id was written.
    pub location: Location,
}

/// A component's typed configuration: its `type` and its options.
#[derive(Clone, Debug)]
pub struct ComponentConfig {
    type_name: &'static str,
    options: SectionOptions,
    /// `redact`, `trace`: what every type of the section takes (see [`common`]).
    common: common::CommonOptions,
}

/// A component's options, as the trait object of its section.
#[derive(Clone, Debug)]
pub enum SectionOptions {
    Source(Arc<dyn SourceComponent>),
    Transform(Arc<dyn TransformComponent>),
    Aggregator(Arc<dyn AggregatorComponent>),
    Sink(Arc<dyn SinkComponent>),
    Action(Arc<dyn ActionComponent>),
}

impl SectionOptions {
    fn as_options(&self) -> &dyn Options {
        match self {
            Self::Source(c) => &**c,
            Self::Transform(c) => &**c,
            Self::Aggregator(c) => &**c,
            Self::Sink(c) => &**c,
            Self::Action(c) => &**c,
        }
    }
}

impl PartialEq for ComponentConfig {
    fn eq(&self, other: &Self) -> bool {
        self.type_name == other.type_name
            && self.kind() == other.kind()
            && self.common == other.common
            && self
                .options
                .as_options()
                .same_as(other.options.as_options())
    }
}

impl ComponentConfig {
    pub fn new(type_name: &'static str, options: SectionOptions) -> Self {
        Self {
            type_name,
            options,
            common: common::CommonOptions::default(),
        }
    }

    /// The same component with `common` options (`redact`, `trace`).
    pub fn with_common(self, common: common::CommonOptions) -> Self {
        Self { common, ..self }
    }

    /// The options every type of the section takes.
    pub fn common(&self) -> &common::CommonOptions {
        &self.common
    }

    /// The options, as the trait object of the component's section.
    pub fn options(&self) -> &SectionOptions {
        &self.options
    }

    pub fn kind(&self) -> ComponentKind {
        match self.options {
            SectionOptions::Source(_) => ComponentKind::Source,
            SectionOptions::Transform(_) => ComponentKind::Transform,
            SectionOptions::Aggregator(_) => ComponentKind::Aggregator,
            SectionOptions::Sink(_) => ComponentKind::Sink,
            SectionOptions::Action(_) => ComponentKind::Action,
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Whether others can read the component's default output.
    pub fn has_default_output(&self) -> bool {
        match &self.options {
            SectionOptions::Source(_) => true,
            SectionOptions::Transform(c) => c.has_default_output(),
            SectionOptions::Aggregator(_) => true,
            SectionOptions::Sink(_) | SectionOptions::Action(_) => false,
        }
    }

    /// The component's named outputs (`errors`, routes, ...).
    pub fn named_outputs(&self) -> Vec<OutputName> {
        let mut outputs = match &self.options {
            SectionOptions::Source(c) => c.named_outputs(),
            SectionOptions::Transform(c) => c.named_outputs(),
            SectionOptions::Aggregator(c) => c.named_outputs(),
            SectionOptions::Action(c) => c.named_outputs(),
            // Sources: payloads they could not turn into events; sinks and actions: what
            // they could not deliver for good (a rejected write, a 4xx).
            SectionOptions::Sink(_) => Vec::new(),
        };
        outputs.push(OutputName::errors());
        outputs
    }

    /// Checks serde cannot express.
    pub fn check(&self) -> Vec<FieldProblem> {
        match &self.options {
            SectionOptions::Source(c) => c.check(),
            SectionOptions::Transform(c) => c.check(),
            SectionOptions::Sink(c) => c.check(),
            SectionOptions::Aggregator(c) => c.check(),
            SectionOptions::Action(c) => c.check(),
        }
    }

    /// The services with settings the component needs, so `validate` can ask for them.
    pub fn services(&self) -> Vec<ServiceUse> {
        match &self.options {
            SectionOptions::Source(c) => c.services(),
            SectionOptions::Transform(c) => c.services(),
            SectionOptions::Aggregator(_) | SectionOptions::Sink(_) | SectionOptions::Action(_) => {
                Vec::new()
            }
        }
    }

    /// How long a source waits for the commit of what it delivered (see
    /// [`SourceComponent::ack_timeout`]).
    pub fn ack_timeout(&self) -> Option<std::time::Duration> {
        match &self.options {
            SectionOptions::Source(c) => c.ack_timeout(),
            _ => None,
        }
    }

    /// How long a sink may hold an event before its commit (see
    /// [`SinkComponent::commit_delay`]).
    pub fn commit_delay(&self) -> Option<std::time::Duration> {
        match &self.options {
            // The disk buffer acknowledges once appended; the sink's batching is its own.
            SectionOptions::Sink(_) if self.disk_buffer() => None,
            SectionOptions::Sink(c) => c.commit_delay(),
            _ => None,
        }
    }

    /// What `weir validate` warns about in the component's options (a deprecated
    /// spelling), by field.
    pub fn warnings(&self) -> Vec<FieldProblem> {
        match &self.options {
            SectionOptions::Action(c) => c.warnings(),
            _ => Vec::new(),
        }
    }

    /// Whether the component (a sink or an action) reads its input through a disk buffer
    /// (in [`crate::buffers::disk_dir`]).
    pub fn disk_buffer(&self) -> bool {
        match &self.options {
            SectionOptions::Sink(c) => c.disk_buffer(),
            SectionOptions::Action(c) => c.disk_buffer(),
            _ => false,
        }
    }

    /// What the component holds exclusively.
    pub fn resources(&self) -> Vec<Resource> {
        match &self.options {
            SectionOptions::Source(c) => c.resources(),
            SectionOptions::Sink(c) => c.resources(),
            _ => Vec::new(),
        }
    }
}

impl Component {
    /// What the component holds exclusively while it runs: what its options name, and a
    /// sink's or action's disk buffer directory under `data_dir`.
    pub fn resources(&self, data_dir: &std::path::Path) -> Vec<Resource> {
        let mut resources = self.config.resources();
        if self.config.disk_buffer() {
            resources.push(Resource::File(sink::buffer_dir(data_dir, &self.id)));
        }
        resources
    }
}

/// A reference to one output: `id` (default output) or `id.name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutputRef {
    pub component: ComponentId,
    pub output: Option<String>,
}

impl std::fmt::Display for OutputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.output {
            Some(name) => write!(f, "{}.{name}", self.component),
            None => write!(f, "{}", self.component),
        }
    }
}

/// Settings outside the component sections.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// Where weir keeps state: registry, window checkpoints, buffers.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The settings of the shared services (`registry:`, ...), each under its own key;
    /// read through the catalogue, not by serde.
    #[serde(skip)]
    #[schemars(skip)]
    pub services: ServiceConfigs,
    /// Reload when a pipeline file changes (as `weir run --watch`).
    #[serde(default)]
    pub watch: bool,
    /// Events each component's input channel holds before its producers wait (default
    /// 8192). A batch larger than this (one big request) still passes, alone.
    #[serde(default = "default_channel_max_events")]
    pub channel_max_events: std::num::NonZeroUsize,
    /// Live or batch: set by `weir run --batch`, never by a file.
    #[serde(skip)]
    #[schemars(skip)]
    pub run: RunMode,
    /// weir's own telemetry: spans of traced readings to an OpenTelemetry collector.
    #[serde(default)]
    pub telemetry: telemetry::TelemetryConfig,
    /// What aggregators do with open windows when their input ends; not a setting of the
    /// language (`weir test` closes them).
    #[serde(skip)]
    #[schemars(skip)]
    pub end_of_input: aggregator::EndOfInput,
}

fn default_channel_max_events() -> std::num::NonZeroUsize {
    crate::topology::channel::DEFAULT_CHANNEL_EVENTS
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            api: ApiConfig::default(),
            log: LogConfig::default(),
            services: ServiceConfigs::default(),
            watch: false,
            channel_max_events: default_channel_max_events(),
            run: RunMode::Live,
            telemetry: telemetry::TelemetryConfig::default(),
            end_of_input: aggregator::EndOfInput::default(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(component::DEFAULT_DATA_DIR)
}

/// The HTTP API: `/health`, `/ready`, `/metrics`, `/v1/...`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Host names the API answers to besides its listen address, `localhost`,
    /// `127.0.0.1` and `[::1]` (with its port): `weir.example.com` or
    /// `weir.example.com:8443`. Requests naming another host (DNS rebinding) or coming
    /// from another web page (`Origin`) are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub auth: ApiAuthConfig,
    /// Serve the API over TLS (`cert_file`, `key_file`; with `ca_file`, callers must also
    /// present a client certificate that CA signed), as the `http` source does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_api_listen(),
            allowed_hosts: Vec::new(),
            auth: ApiAuthConfig::default(),
            tls: None,
        }
    }
}

/// Who may call the API. Every `/v1` route needs an API token (`weir tokens create`);
/// `/health` and `/ready` are public.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiAuthConfig {
    /// Serve `/metrics` without a token (else it needs a `viewer` token).
    #[serde(default)]
    pub public_metrics: bool,
    /// Failed authentications a client address may have in a minute; after that it gets
    /// 429 until the minute is over.
    #[serde(default = "default_failures_per_minute")]
    pub failures_per_minute: std::num::NonZeroU32,
    /// Also accept JWT bearer tokens from an OIDC provider (Entra ID, Keycloak, Auth0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
}

impl Default for ApiAuthConfig {
    fn default() -> Self {
        Self {
            public_metrics: false,
            failures_per_minute: default_failures_per_minute(),
            jwt: None,
        }
    }
}

fn default_failures_per_minute() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::MIN.saturating_add(9)
}

fn default_true() -> bool {
    true
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8686))
}

/// Logging defaults; `--log-format`, `--log-level` and `RUST_LOG` override them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormatName>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormatName {
    Text,
    Json,
}
