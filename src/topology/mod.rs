//! Running a [`TopologyConfig`](crate::config::TopologyConfig): one task per component,
//! wired by bounded channels, and rewired in place when the configuration changes.
//!
//! Starting is a reload from nothing, so there is one way to bring components up. A reload
//! ([`RunningTopology::reload`]) goes:
//!
//! 1. **diff** the running and the new configuration ([`diff::Diff`]); refuse changes to
//!    globals that cannot change at run time;
//! 2. **stop** the sources being removed or rebuilt and wait for them, so their ports are
//!    free for whoever takes them next;
//! 3. **build** every new or changed component; if one fails, restart the stopped sources
//!    as they were and report the error: nothing half-applied remains;
//! 4. **rewire**: every running output's consumer list is swapped for the new one;
//!    unchanged components keep running with their state (connections, open windows);
//! 5. **retire** the old instances of removed or rebuilt components: nothing sends to them
//!    any more, so they drain what they hold into the consumers they had and finish.
//!
//! A sink that holds a file starts writing only after its old instance finished, so two
//! instances never write one file. Shutdown is the same drain for everything: sources stop
//! reading and return, channels close behind them, each transform and sink finishes its
//! input. Nothing in flight is dropped.

mod build;
pub mod channel;
pub mod diff;
pub mod graph;
pub mod instance;
pub mod leftovers;
mod running;
pub mod services;
pub mod tap;

use crate::config::component::ComponentId;
pub use crate::config::component::ComponentTask;
pub use crate::config::service::Services;
pub use diff::Diff;
pub use instance::{InstanceId, InstanceIdentity};
pub use running::RunningTopology;

/// Why a topology could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    NotReloadable(String),
    #[error("component `{component}` could not start: {error:#}")]
    Build {
        component: ComponentId,
        error: anyhow::Error,
    },
    /// A shared service could not start (its own error says which and why).
    #[error("{error:#}")]
    Service { error: anyhow::Error },
    /// Disk buffers the new configuration drops still hold events (see [`leftovers`]).
    #[error("{0}")]
    BuffersNotEmpty(String),
}

impl ReloadError {
    /// The `reason` label of `config_reload_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotReloadable(_) => "not_reloadable",
            Self::Build { .. } => "build_failed",
            Self::Service { .. } => "service_unavailable",
            Self::BuffersNotEmpty(_) => "buffers_not_empty",
        }
    }
}

/// How a component's task ended.
#[derive(Debug)]
pub struct TaskOutcome {
    pub component: ComponentId,
    pub result: anyhow::Result<()>,
}
