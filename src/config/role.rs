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

/// Device tags a role is limited to, e.g. `{ site: plant-3 }`: a device is in scope when
/// each of its tags named here has this value (compared as text). Empty: every device.
pub type Scope = std::collections::BTreeMap<String, String>;

/// A role, on every device, or only on the devices whose tags match a scope.
///
/// A scoped role reaches the device routes only (`GET /v1/devices` lists the devices in
/// scope; the others answer 404 for a device out of it); every other route needs a role
/// without a scope. `admin` cannot be scoped: an admin makes tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Scope::is_empty")]
    pub scope: Scope,
}

impl Grant {
    pub fn everywhere(role: Role) -> Self {
        Self {
            role,
            scope: Scope::new(),
        }
    }

    /// Why this grant cannot be given, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.role == Role::Admin && !self.scope.is_empty() {
            return Err("`admin` cannot be limited to a scope (an admin makes tokens)".into());
        }
        if self.scope.keys().any(|key| key.is_empty()) {
            return Err("a scope names tags: `{ site: plant-3 }`".into());
        }
        Ok(())
    }

    /// `operator` or `operator for site=plant-3`, for messages and the audit log.
    pub fn describe(&self) -> String {
        match self.scope.is_empty() {
            true => self.role.to_string(),
            false => format!("{} for {}", self.role, describe_scope(&self.scope)),
        }
    }
}

/// `site=plant-3,line=2`.
pub fn describe_scope(scope: &Scope) -> String {
    scope
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What `api.auth.jwt.role_map` maps a claim value to: a role (`operator`), or a role
/// limited to devices by tag (`{ role: operator, scope: { site: plant-3 } }`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RoleBinding {
    Role(Role),
    Scoped(Grant),
}

impl RoleBinding {
    pub fn grant(&self) -> Grant {
        match self {
            RoleBinding::Role(role) => Grant::everywhere(*role),
            RoleBinding::Scoped(grant) => grant.clone(),
        }
    }
}
