//! The catalogue of this build: every component type and service weir ships, in the
//! order `validate` lists them and `weir schema` describes them.
//!
//! A new component type is a file in its section's directory plus one line in that
//! section's `TYPES`; a new service with settings is a module with a
//! [`ServiceType`](crate::config::ServiceType) plus one line here.

use crate::config::Catalogue;

/// Every component type and service of this build.
pub static CATALOGUE: Catalogue = Catalogue {
    sources: crate::sources::TYPES,
    transforms: crate::transforms::TYPES,
    aggregators: crate::aggregators::TYPES,
    sinks: crate::sinks::TYPES,
    actions: crate::actions::TYPES,
    services: &[crate::registry::SERVICE],
};
