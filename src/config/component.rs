//! What identifies a component and what every section's contract speaks of: ids,
//! sections, outputs, held resources, option problems and the task a component runs.

use std::borrow::Borrow;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::yaml::PathStep;

/// Where weir keeps state unless `data_dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/weir";

/// The work of one running component.
pub type ComponentTask = BoxFuture<'static, anyhow::Result<()>>;

/// A component's id, unique across all sections of a topology.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentId(Arc<str>);

impl ComponentId {
    pub fn new(id: &str) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a shared string, for metadata and metric labels.
    pub fn as_arc(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for ComponentId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for ComponentId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl From<&str> for ComponentId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

/// The section a component is declared in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ComponentKind {
    Source,
    Transform,
    Aggregator,
    Sink,
    Action,
}

impl ComponentKind {
    pub const ALL: [ComponentKind; 5] = [
        Self::Source,
        Self::Transform,
        Self::Aggregator,
        Self::Sink,
        Self::Action,
    ];

    /// The YAML section name: `sources`, `transforms`, ...
    pub fn section(self) -> &'static str {
        match self {
            Self::Source => "sources",
            Self::Transform => "transforms",
            Self::Aggregator => "aggregators",
            Self::Sink => "sinks",
            Self::Action => "actions",
        }
    }

    /// The singular noun: `source`, `transform`, ...
    pub fn noun(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Transform => "transform",
            Self::Aggregator => "aggregator",
            Self::Sink => "sink",
            Self::Action => "action",
        }
    }

    pub fn from_section(section: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.section() == section)
    }

    pub fn is_source(self) -> bool {
        self == Self::Source
    }

    pub fn is_sink(self) -> bool {
        self == Self::Sink
    }

    /// Whether components of this kind read from `inputs`.
    pub fn takes_inputs(self) -> bool {
        self != Self::Source
    }

    /// Whether components of this kind have a default output others can read.
    pub fn has_default_output(self) -> bool {
        !matches!(self, Self::Sink | Self::Action)
    }
}

/// A named output of a component (`route.hot`, `decode.errors`), besides its default one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutputName(pub String);

impl OutputName {
    /// Events a component could not handle: the dead-letter output every fallible component has.
    pub const ERRORS: &'static str = "errors";

    pub fn errors() -> Self {
        Self(Self::ERRORS.into())
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
