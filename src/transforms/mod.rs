//! Transforms: per-event logic between sources and sinks.
//!
//! A transform is a synchronous function over a batch ([`FunctionTransform`]); the topology
//! runs it in its own task, reads its input channel and forwards what it emits to each
//! output. Keeping transforms synchronous keeps them easy to test and lets the runner batch
//! all channel work. Every transform has an `errors` output for events it could not handle.

pub mod alarm;
mod decode;
mod enrich;
mod filter;
mod remap;
mod route;

pub use alarm::AlarmConfig;
pub use decode::DecodeConfig;
pub use enrich::{Enrich, EnrichConfig, OnUnknownDevice};
pub use filter::FilterConfig;
pub use remap::RemapConfig;
pub use route::RouteConfig;

use crate::config::ComponentType;
pub use crate::config::transform::{
    FunctionTransform, TransformComponent, TransformContext, TransformOutput,
};

/// Every transform type.
pub const TYPES: &[ComponentType<dyn TransformComponent>] = &[
    ComponentType::of::<DecodeConfig>("decode"),
    ComponentType::of::<RemapConfig>("remap"),
    ComponentType::of::<FilterConfig>("filter"),
    ComponentType::of::<RouteConfig>("route"),
    ComponentType::of::<EnrichConfig>("enrich"),
    ComponentType::of::<AlarmConfig>("alarm"),
];
