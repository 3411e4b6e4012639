//! Aggregators: event-time windows (`tumbling`, `hopping`, `sliding`, `session`, `absence`).
//!
//! The section is part of the pipeline language already, so files that use it get a clear
//! "unknown aggregator type" until the window engine lands; no type is built in yet.

use crate::config::component::component_types;

component_types! {
    /// Every aggregator type.
    pub enum AggregatorConfig: AggregatorComponent {}
}

/// What every aggregator type provides.
pub trait AggregatorComponent: Send + Sync {}
