//! Who may call which route: the one table the router consults ([`ACCESS`]).
//!
//! Every route is added through [`Routes`], which records it with its OpenAPI description
//! ([`super::openapi`]), and a unit test holds the
//! recorded routes and the table to the same set: a route without a row fails it. At run
//! time a route that has no row is refused to everyone (500), never served.
//! `README.md` shows the same table; the integration test `api_auth` calls every row with
//! every role.
//!
//! One route changes several kinds of thing: `PATCH /v1/devices/{id}` needs `operator`
//! for status and properties and `admin` for keys ([`patch_field_role`]); and
//! `GET /v1/devices/{id}` shows the keys to `admin` only.

use std::sync::Arc;

use axum::Router;
use axum::http::Method;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa_axum::router::UtoipaMethodRouter;

use super::ApiState;
use crate::tokens::Role;

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (load balancers, systemd).
    Public,
    /// Public when `api.auth.public_metrics` says so, else `viewer`.
    Metrics,
    /// A token (or JWT) with at least this role on every device.
    Role(Role),
    /// A device route: at least this role on the device, which a role limited to devices
    /// by tag (`operator` for `site=plant-3`) may give. Out of a caller's scope a device is
    /// not disclosed: 404, as if it did not exist; the list shows only devices in scope.
    Device(Role),
}

use Access::{Device as OnDevice, Metrics, Public, Role as Needs};
use Role::{Admin, Operator, Viewer};

/// Every route, with what it asks of its caller.
pub const ACCESS: &[(Method, &str, Access)] = &[
    (Method::GET, "/health", Public),
    (Method::GET, "/ready", Public),
    (Method::GET, "/metrics", Metrics),
    (Method::POST, "/v1/reload", Needs(Admin)),
    (Method::GET, "/v1/alarms", Needs(Viewer)),
    (Method::GET, "/v1/alarms/{id}", Needs(Viewer)),
    (Method::POST, "/v1/alarms/{id}/ack", Needs(Operator)),
    (Method::GET, "/v1/devices", OnDevice(Viewer)),
    (Method::POST, "/v1/devices", Needs(Admin)),
    (Method::POST, "/v1/devices/import", Needs(Admin)),
    (Method::GET, "/v1/devices/{id}", OnDevice(Viewer)),
    (Method::PATCH, "/v1/devices/{id}", OnDevice(Operator)),
    (Method::DELETE, "/v1/devices/{id}", Needs(Admin)),
    (Method::POST, "/v1/devices/{id}/enable", OnDevice(Operator)),
    (Method::POST, "/v1/devices/{id}/disable", OnDevice(Operator)),
    (Method::POST, "/v1/devices/{id}/rotate-key", Needs(Admin)),
    (
        Method::POST,
        "/v1/devices/{id}/sas-token",
        OnDevice(Operator),
    ),
    (
        Method::POST,
        "/v1/devices/{id}/messages/devicebound",
        Needs(Operator),
    ),
    (
        Method::POST,
        "/v1/devices/{id}/methods/{name}",
        OnDevice(Operator),
    ),
    (Method::GET, "/v1/devices/{id}/twin", OnDevice(Viewer)),
    (
        Method::PATCH,
        "/v1/devices/{id}/twin/desired",
        OnDevice(Operator),
    ),
    (Method::GET, "/v1/enrollment-groups", Needs(Admin)),
    (Method::POST, "/v1/enrollment-groups", Needs(Admin)),
    (Method::GET, "/v1/enrollment-groups/{id}", Needs(Admin)),
    (Method::PATCH, "/v1/enrollment-groups/{id}", Needs(Admin)),
    (Method::DELETE, "/v1/enrollment-groups/{id}", Needs(Admin)),
    (Method::GET, "/v1/audit", Needs(Admin)),
    (Method::GET, "/v1/tokens", Needs(Admin)),
    (Method::POST, "/v1/tokens", Needs(Admin)),
    (Method::DELETE, "/v1/tokens/{name}", Needs(Admin)),
    (Method::GET, "/v1/openapi.json", Needs(Viewer)),
    // Live readings: operators, not dashboards; a scoped operator sees its devices' only.
    (Method::GET, "/v1/tap", OnDevice(Operator)),
];

/// The fields of a device patch that need more than the route's `operator`.
const ADMIN_PATCH_FIELDS: &[&str] = &["primary_key", "secondary_key", "x509_thumbprint"];

/// The role a `PATCH /v1/devices/{id}` field needs.
pub fn patch_field_role(field: &str) -> Role {
    match ADMIN_PATCH_FIELDS.contains(&field) {
        true => Admin,
        false => Operator,
    }
}

/// What the route `method path` (the router's pattern) asks; `None` for a path the
/// table does not have with this method.
pub fn lookup(method: &Method, path: &str) -> Option<Access> {
    ACCESS
        .iter()
        .find(|(m, p, _)| m == method && *p == path)
        .map(|(_, _, access)| *access)
}

/// Whether the table has `path` with any method (a wrong method is the router's 405).
pub fn knows_path(path: &str) -> bool {
    ACCESS.iter().any(|(_, p, _)| *p == path)
}

/// The router being built, every route added to it, and their OpenAPI description.
///
/// A route is added as `routes!(handler)` of a handler with `#[utoipa::path]`: its method
/// and path come from that description, so no route can go undescribed or be described
/// at another path than the one it is served at.
pub struct Routes {
    router: Router<Arc<ApiState>>,
    added: Vec<(Method, String)>,
    openapi: OpenApi,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            router: Router::new(),
            added: Vec::new(),
            openapi: OpenApi::default(),
        }
    }
}

impl Routes {
    /// Adds the routes (and schemas) of `routes!(handler, ...)`.
    pub fn route(
        mut self,
        (schemas, paths, method_router): UtoipaMethodRouter<Arc<ApiState>>,
    ) -> Self {
        let mut path_names = paths.paths.keys();
        let (Some(path), None) = (path_names.next(), path_names.next()) else {
            panic!("routes! with handlers of more than one path");
        };
        self.router = self.router.route(path, method_router);
        for (name, item) in &paths.paths {
            for (method, operation) in operations(item) {
                if operation.is_some() {
                    self.added.push((method, name.clone()));
                }
            }
        }
        self.openapi.paths.merge(paths);
        let components = self.openapi.components.get_or_insert_with(Default::default);
        components.schemas.extend(schemas);
        self
    }

    pub fn added(&self) -> &[(Method, String)] {
        &self.added
    }

    pub fn openapi(&self) -> &OpenApi {
        &self.openapi
    }

    pub fn into_router(self) -> Router<Arc<ApiState>> {
        self.router
    }
}

/// The operations of a path item, by method.
pub fn operations(item: &PathItem) -> [(Method, Option<&Operation>); 4] {
    [
        (Method::GET, item.get.as_ref()),
        (Method::POST, item.post.as_ref()),
        (Method::PATCH, item.patch.as_ref()),
        (Method::DELETE, item.delete.as_ref()),
    ]
}

/// The operations of a path item, by method, to change.
pub fn operations_mut(item: &mut PathItem) -> [(Method, Option<&mut Operation>); 4] {
    [
        (Method::GET, item.get.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_has_exactly_one_row_and_every_row_a_route() {
        let routes = super::super::routes();
        let added: BTreeSet<(String, &str)> = routes
            .added()
            .iter()
            .map(|(m, p)| (m.to_string(), p.as_str()))
            .collect();
        assert_eq!(added.len(), routes.added().len(), "a route added twice");
        let table: BTreeSet<(String, &str)> =
            ACCESS.iter().map(|(m, p, _)| (m.to_string(), *p)).collect();
        assert_eq!(table.len(), ACCESS.len(), "a route with two rows");
        let without_row: Vec<_> = added.difference(&table).collect();
        assert!(
            without_row.is_empty(),
            "routes without a role: {without_row:?}"
        );
        let without_route: Vec<_> = table.difference(&added).collect();
        assert!(
            without_route.is_empty(),
            "rows without a route: {without_route:?}"
        );
    }

    #[test]
    fn every_v1_route_needs_a_role() {
        for (method, path, access) in ACCESS {
            if path.starts_with("/v1/") {
                assert!(matches!(access, Needs(_) | OnDevice(_)), "{method} {path}");
            }
        }
    }

    #[test]
    fn the_readme_shows_the_table() {
        let readme = include_str!("../../README.md");
        for (method, path, access) in ACCESS {
            let who = match access {
                Public => "public".to_owned(),
                Metrics => "viewer, or public with `api.auth.public_metrics`".to_owned(),
                Needs(role) => role.to_string(),
                OnDevice(role) => format!("{role} on the device"),
            };
            let row = format!("| `{method} {path}` | {who} |");
            assert!(readme.contains(&row), "README.md lacks the row\n{row}");
        }
    }

    #[test]
    fn keys_in_a_patch_need_admin() {
        assert_eq!(patch_field_role("primary_key"), Admin);
        assert_eq!(patch_field_role("status"), Operator);
        assert_eq!(patch_field_role("desired"), Operator);
    }
}
