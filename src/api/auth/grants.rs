//! What a caller may do: the roles its token grants, each on every device or on the
//! devices whose tags match a scope.
//!
//! An API token grants one role (`--role operator`, maybe `--scope site=plant-3`); a JWT
//! grants the role of every value of its roles claim that `role_map` maps. A route of the
//! access table that needs a role ([`super::access::Access::Role`]) is reached by a grant
//! without a scope; a device route ([`super::access::Access::Device`]) by any grant, and
//! the handler then asks [`Grants::on_device`] about the device itself.

use crate::config::{Grant, Role};
use crate::registry::{Properties, tags_match};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants(Vec<Grant>);

impl Grants {
    pub fn new(grants: Vec<Grant>) -> Self {
        Self(grants)
    }

    /// The highest role on every device and route: that of the grants without a scope.
    pub fn everywhere(&self) -> Option<Role> {
        self.0
            .iter()
            .filter(|g| g.scope.is_empty())
            .map(|g| g.role)
            .max()
    }

    /// The highest role of any grant, whatever its scope.
    pub fn highest(&self) -> Option<Role> {
        self.0.iter().map(|g| g.role).max()
    }

    /// The highest role on a device with `tags`; `None`: the device is out of reach.
    pub fn on_device(&self, tags: &Properties) -> Option<Role> {
        self.0
            .iter()
            .filter(|g| tags_match(tags, g.scope.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
            .map(|g| g.role)
            .max()
    }

    /// `admin`, or `viewer, operator for site=plant-3`: for messages and the audit log.
    pub fn describe(&self) -> String {
        let mut shown: Vec<String> = self
            .everywhere()
            .map(|r| r.to_string())
            .into_iter()
            .collect();
        shown.extend(
            self.0
                .iter()
                .filter(|g| !g.scope.is_empty() && Some(g.role) > self.everywhere())
                .map(Grant::describe),
        );
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Scope;

    fn scoped(role: Role, site: &str) -> Grant {
        Grant {
            role,
            scope: Scope::from([("site".to_owned(), site.to_owned())]),
        }
    }

    fn tags(value: serde_json::Value) -> Properties {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_scoped_grant_reaches_only_matching_devices() {
        let grants = Grants::new(vec![
            Grant::everywhere(Role::Viewer),
            scoped(Role::Operator, "plant-3"),
        ]);
        assert_eq!(grants.everywhere(), Some(Role::Viewer));
        assert_eq!(grants.highest(), Some(Role::Operator));
        let plant3 = tags(json!({ "site": "plant-3", "line": 2 }));
        let plant9 = tags(json!({ "site": "plant-9" }));
        assert_eq!(grants.on_device(&plant3), Some(Role::Operator));
        assert_eq!(grants.on_device(&plant9), Some(Role::Viewer));
        assert_eq!(grants.describe(), "viewer, operator for site=plant-3");

        let only = Grants::new(vec![scoped(Role::Operator, "plant-3")]);
        assert_eq!(only.everywhere(), None);
        assert_eq!(only.on_device(&plant9), None);
        assert_eq!(only.on_device(&tags(json!({}))), None, "no tag, no match");
    }
}
