//! The roles of the admin API, as settings name them (`api.auth.jwt.role_map`) and tokens
//! carry them.

use serde::{Deserialize, Serialize};

/// What a caller may do; each role may do everything the ones below it may.
///
/// The routes each role reaches are one table, `api::access::ACCESS`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads devices (without keys), alarms and metrics.
    Viewer,
    /// And enables and disables devices, acknowledges alarms, issues device SAS tokens.
    Operator,
    /// And creates and deletes devices and enrollment groups, reads and rotates keys,
    /// reloads, manages API tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
