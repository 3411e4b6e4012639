//! Device twins: a device's desired and reported properties with their `$version`s,
//! changed by JSON merge patches (RFC 7386: an object merges into an object, `null`
//! deletes, anything else replaces), as an IoT hub's device protocol and service API
//! change them.
//!
//! Every change that alters `desired` or `reported` (a patch here, or a device `PATCH`
//! that replaces them) gives that side one more version ([`bump_versions`]); a change of
//! `desired` carries what changed to the change feed, where device gateways pick it up
//! and push it to the connected device.

use serde_json::{Map, Value};

use super::{ChangeKind, Device, Properties, Registry, RegistryError};

/// Which side of a twin a patch changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Desired,
    Reported,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desired => "desired",
            Self::Reported => "reported",
        }
    }
}

/// Deepest nesting of a twin patch, as an IoT hub allows (deeper is refused).
const MAX_DEPTH: usize = 10;

impl Registry {
    /// Merges `patch` into device `id`'s `side` properties (honouring `if_match`); the
    /// device after the change, with that side's new version (a patch that changes
    /// nothing leaves the version as it was).
    pub fn patch_twin(
        &self,
        id: &str,
        side: Side,
        patch: Properties,
        if_match: Option<&str>,
    ) -> Result<Device, RegistryError> {
        check_patch(&patch).map_err(RegistryError::Invalid)?;
        self.modify(id, if_match, |device| {
            let target = match side {
                Side::Desired => &mut device.desired,
                Side::Reported => &mut device.reported,
            };
            merge(target, &patch);
            Ok(ChangeKind::Updated)
        })
    }
}

/// Gives `new` one more desired (reported) version than `old` where its desired
/// (reported) properties differ; what changed in `desired`, as a merge patch, if it did.
pub(super) fn bump_versions(old: &Device, new: &mut Device) -> Option<Properties> {
    if old.reported != new.reported {
        new.reported_version = old.reported_version.max(1) + 1;
    }
    if old.desired == new.desired {
        return None;
    }
    new.desired_version = old.desired_version.max(1) + 1;
    Some(diff(&old.desired, &new.desired))
}

/// Applies merge patch `patch` to `target`: `null` removes, an object merges into an
/// object, anything else replaces.
pub fn merge(target: &mut Properties, patch: &Properties) {
    for (name, value) in patch {
        match value {
            Value::Null => {
                target.remove(name);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(slot) = slot {
                    merge(slot, inner);
                }
            }
            other => {
                target.insert(name.clone(), other.clone());
            }
        }
    }
}

/// The merge patch that turns `old` into `new` (a property `new` lacks is `null`).
pub fn diff(old: &Properties, new: &Properties) -> Properties {
    let mut patch = Map::new();
    for (name, was) in old {
        match new.get(name) {
            None => {
                patch.insert(name.clone(), Value::Null);
            }
            Some(Value::Object(now)) => match was {
                Value::Object(was) if was != now => {
                    patch.insert(name.clone(), Value::Object(diff(was, now)));
                }
                Value::Object(_) => {}
                _ => {
                    patch.insert(name.clone(), Value::Object(now.clone()));
                }
            },
            Some(now) if now != was => {
                patch.insert(name.clone(), now.clone());
            }
            Some(_) => {}
        }
    }
    for (name, now) in new {
        if !old.contains_key(name) {
            patch.insert(name.clone(), now.clone());
        }
    }
    patch
}

/// Refuses what a twin cannot hold: names starting with `$` (the hub's own, such as
/// `$version`), and nesting deeper than [`MAX_DEPTH`].
pub fn check_patch(patch: &Properties) -> Result<(), String> {
    fn check(map: &Properties, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "a twin patch may nest objects {MAX_DEPTH} levels deep at most"
            ));
        }
        for (name, value) in map {
            if name.starts_with('$') {
                return Err(format!(
                    "twin property `{name}`: names starting with `$` are reserved"
                ));
            }
            if let Value::Object(inner) = value {
                check(inner, depth + 1)?;
            }
        }
        Ok(())
    }
    check(patch, 1)
}

/// `properties` with `"$version": version`, as a twin shows one side.
pub fn versioned(properties: &Properties, version: u64) -> Value {
    let mut shown = properties.clone();
    shown.insert("$version".into(), version.into());
    Value::Object(shown)
}

/// The twin of `device` as a device gets it:
/// `{"desired": {…, "$version": n}, "reported": {…, "$version": m}}`.
pub fn document(device: &Device) -> Value {
    serde_json::json!({
        "desired": versioned(&device.desired, device.desired_version),
        "reported": versioned(&device.reported, device.reported_version),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::DeviceSpec;

    fn props(value: Value) -> Properties {
        match value {
            Value::Object(map) => map,
            _ => panic!("an object"),
        }
    }

    #[test]
    fn merge_patches_merge_objects_replace_values_and_null_deletes() {
        let mut twin =
            props(json!({"fan": "on", "limits": {"max": 90, "min": 10}, "mode": {"a": 1}}));
        merge(
            &mut twin,
            &props(
                json!({"fan": null, "limits": {"max": 95, "min": null}, "mode": 3, "new": {"x": {"y": true}}}),
            ),
        );
        assert_eq!(
            Value::Object(twin),
            json!({"limits": {"max": 95}, "mode": 3, "new": {"x": {"y": true}}})
        );
    }

    #[test]
    fn a_diff_is_the_patch_that_makes_the_new_properties() {
        let old = props(json!({"a": 1, "gone": true, "n": {"x": 1, "y": 2}, "same": {"k": 1}}));
        let new = props(json!({"a": 2, "n": {"x": 1, "z": 3}, "same": {"k": 1}, "add": [1]}));
        let patch = diff(&old, &new);
        assert_eq!(
            Value::Object(patch.clone()),
            json!({"a": 2, "gone": null, "n": {"y": null, "z": 3}, "add": [1]})
        );
        let mut applied = old;
        merge(&mut applied, &patch);
        assert_eq!(applied, new);
    }

    #[test]
    fn reserved_names_and_deep_nesting_are_refused() {
        assert!(check_patch(&props(json!({"$version": 3}))).is_err());
        assert!(check_patch(&props(json!({"a": {"$b": 1}}))).is_err());
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!({ "d": deep });
        }
        assert!(check_patch(&props(deep.clone())).is_ok());
        assert!(check_patch(&props(json!({ "d": deep }))).is_err());
    }

    #[test]
    fn patches_bump_their_sides_version_and_feed_the_desired_change() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.redb")).unwrap();
        let mut feed = registry.subscribe();
        let spec: DeviceSpec = serde_json::from_value(json!({"id": "t1"})).unwrap();
        let made = registry.create(spec).unwrap();
        assert_eq!((made.desired_version, made.reported_version), (1, 1));
        assert!(feed.try_recv().unwrap().desired_patch.is_none());

        let reported = props(json!({"fw": "2.1", "temp": {"max": 80}}));
        let device = registry
            .patch_twin("t1", Side::Reported, reported, None)
            .unwrap();
        assert_eq!((device.desired_version, device.reported_version), (1, 2));
        let change = feed.try_recv().unwrap();
        assert_eq!(change.kind, ChangeKind::Updated);
        assert!(change.desired_patch.is_none());
        assert_eq!(change.device.device.reported["fw"], "2.1");

        let device = registry
            .patch_twin(
                "t1",
                Side::Desired,
                props(json!({"fan": "low"})),
                Some(&device.etag),
            )
            .unwrap();
        assert_eq!((device.desired_version, device.reported_version), (2, 2));
        let change = feed.try_recv().unwrap();
        assert_eq!(
            change.desired_patch.as_deref().cloned().map(Value::Object),
            Some(json!({"fan": "low"}))
        );
        assert!(matches!(
            registry.patch_twin(
                "t1",
                Side::Desired,
                props(json!({"fan": "x"})),
                Some("stale")
            ),
            Err(RegistryError::EtagMismatch { .. })
        ));

        let device = registry
            .patch_twin("t1", Side::Reported, props(json!({"fw": null})), None)
            .unwrap();
        assert_eq!(device.reported_version, 3);
        assert_eq!(
            Value::Object(device.reported.clone()),
            json!({"temp": {"max": 80}})
        );
        // A device PATCH that replaces `desired` is a desired change too: what it removed
        // goes out as `null`.
        let replace = crate::registry::DevicePatch {
            desired: Some(props(json!({"light": "on"}))),
            ..Default::default()
        };
        let replaced = registry.update("t1", replace, None).unwrap();
        assert_eq!(replaced.desired_version, 3);
        let change = feed.try_recv().unwrap();
        assert!(
            change.desired_patch.is_none(),
            "the reported patch's change"
        );
        let change = feed.try_recv().unwrap();
        assert_eq!(
            change.desired_patch.as_deref().cloned().map(Value::Object),
            Some(json!({"fan": null, "light": "on"}))
        );
        let untouched = crate::registry::DevicePatch {
            tags: Some(props(json!({"site": "a"}))),
            ..Default::default()
        };
        let tagged = registry.update("t1", untouched, None).unwrap();
        assert_eq!((tagged.desired_version, tagged.reported_version), (3, 3));
        assert_eq!(
            document(&device),
            json!({"desired": {"fan": "low", "$version": 2}, "reported": {"temp": {"max": 80}, "$version": 3}})
        );
    }
}
