//! The pipeline language: loading, merging and validating topologies written in YAML.
//!
//! [`load`] reads files and directories into a [`TopologyConfig`]: every component's typed
//! configuration, its resolved inputs, and the position it was written at. Everything a
//! user can get wrong is found here, before anything starts, and reported as
//! [`Diagnostics`] that name the file, line, column and component.

pub mod component;
mod diagnostic;
mod env;
mod load;
pub mod schema;
mod units;
mod validate;
pub mod yaml;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use component::{ComponentId, ComponentKind, OutputName};
pub use diagnostic::{Diagnostic, Diagnostics, Location, Severity};
pub use load::{load, load_str};
pub use units::{ByteSize, Duration};
pub use yaml::PathStep;

use crate::actions::ActionConfig;
use crate::aggregators::AggregatorConfig;
use crate::sinks::SinkConfig;
use crate::sources::SourceConfig;
use crate::transforms::TransformConfig;

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

/// A component's typed configuration, by section.
#[derive(Clone, Debug, PartialEq)]
pub enum ComponentConfig {
    Source(SourceConfig),
    Transform(TransformConfig),
    Aggregator(AggregatorConfig),
    Sink(SinkConfig),
    Action(ActionConfig),
}

impl ComponentConfig {
    pub fn kind(&self) -> ComponentKind {
        match self {
            Self::Source(_) => ComponentKind::Source,
            Self::Transform(_) => ComponentKind::Transform,
            Self::Aggregator(_) => ComponentKind::Aggregator,
            Self::Sink(_) => ComponentKind::Sink,
            Self::Action(_) => ComponentKind::Action,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Source(c) => c.type_name(),
            Self::Transform(c) => c.type_name(),
            Self::Aggregator(c) => c.type_name(),
            Self::Sink(c) => c.type_name(),
            Self::Action(c) => c.type_name(),
        }
    }

    /// Whether others can read the component's default output.
    pub fn has_default_output(&self) -> bool {
        match self {
            Self::Source(_) => true,
            Self::Transform(c) => c.component().has_default_output(),
            Self::Aggregator(_) => true,
            Self::Sink(_) | Self::Action(_) => false,
        }
    }

    /// The component's named outputs (`errors`, routes, ...).
    pub fn named_outputs(&self) -> Vec<OutputName> {
        match self {
            Self::Source(c) => c.outputs(),
            Self::Transform(c) => c.outputs(),
            Self::Aggregator(c) => c.outputs(),
            // What a sink or an action could not deliver for good (a rejected write, a 4xx).
            Self::Sink(_) | Self::Action(_) => vec![OutputName::errors()],
        }
    }

    /// Checks serde cannot express.
    pub fn check(&self) -> Vec<FieldProblem> {
        match self {
            Self::Source(c) => c.component().check(),
            Self::Transform(c) => c.component().check(),
            Self::Sink(c) => c.component().check(),
            Self::Aggregator(c) => c.component().check(),
            Self::Action(c) => c.component().check(),
        }
    }

    /// The option that makes the component use the device registry (`type` for
    /// components that always do), so `validate` can ask for the `registry:` section.
    pub fn registry_option(&self) -> Option<&'static str> {
        match self {
            Self::Source(c) => c.component().registry_option(),
            Self::Transform(c) => c.component().registry_option(),
            Self::Aggregator(_) | Self::Sink(_) | Self::Action(_) => None,
        }
    }

    /// How long a source waits for the commit of what it delivered (see
    /// [`crate::sources::SourceComponent::ack_timeout`]).
    pub fn ack_timeout(&self) -> Option<std::time::Duration> {
        match self {
            Self::Source(c) => c.component().ack_timeout(),
            _ => None,
        }
    }

    /// How long a sink may hold an event before its commit (see
    /// [`crate::sinks::SinkComponent::commit_delay`]).
    pub fn commit_delay(&self) -> Option<std::time::Duration> {
        match self {
            Self::Sink(c) => c.component().commit_delay(),
            _ => None,
        }
    }

    /// What the component holds exclusively.
    pub fn resources(&self) -> Vec<Resource> {
        match self {
            Self::Source(c) => c.component().resources(),
            Self::Sink(c) => c.component().resources(),
            Self::Transform(_) | Self::Aggregator(_) | Self::Action(_) => Vec::new(),
        }
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

/// Something a component holds exclusively while it runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    TcpPort(SocketAddr),
    File(PathBuf),
}

impl Resource {
    /// Whether two resources cannot be held at once (`0.0.0.0:80` and `127.0.0.1:80` clash).
    pub fn conflicts_with(&self, other: &Resource) -> bool {
        match (self, other) {
            (Self::TcpPort(a), Self::TcpPort(b)) => {
                a.port() == b.port()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            }
            (Self::File(a), Self::File(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TcpPort(addr) => write!(f, "port {addr}"),
            Self::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A problem with one field of a component, found after deserialization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    /// Path from the component's mapping to the field; empty for the component itself.
    pub path: Vec<PathStep>,
    pub message: String,
}

impl FieldProblem {
    pub fn at<'a>(path: impl IntoIterator<Item = &'a str>, message: impl Into<String>) -> Self {
        Self {
            path: path
                .into_iter()
                .map(|s| PathStep::Key(s.to_owned()))
                .collect(),
            message: message.into(),
        }
    }

    pub fn component(message: impl Into<String>) -> Self {
        Self {
            path: Vec::new(),
            message: message.into(),
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
    /// The built-in device registry; absent: no registry (no `/v1/devices`, no gates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<crate::registry::RegistryConfig>,
    /// Reload when a pipeline file changes (as `weir run --watch`).
    #[serde(default)]
    pub watch: bool,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            api: ApiConfig::default(),
            log: LogConfig::default(),
            registry: None,
            watch: false,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/weir")
}

/// The HTTP API: `/health`, `/ready`, `/metrics`, `/v1/...`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_api_listen(),
        }
    }
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
