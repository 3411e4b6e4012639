//! What a reload changes: the difference between two topologies, component by component.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::{ComponentId, TopologyConfig};

/// The components a reload adds, removes, rebuilds or only rewires.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Diff {
    /// New ids.
    #[schema(value_type = Vec<String>)]
    pub added: BTreeSet<ComponentId>,
    /// Ids that are gone: sources stop, the rest drain.
    #[schema(value_type = Vec<String>)]
    pub removed: BTreeSet<ComponentId>,
    /// Same id, different options (or type): rebuilt, the old instance drains.
    #[schema(value_type = Vec<String>)]
    pub changed: BTreeSet<ComponentId>,
    /// Same options, different inputs: kept running with their state, only rewired.
    #[schema(value_type = Vec<String>)]
    pub rewired: BTreeSet<ComponentId>,
}

impl Diff {
    pub fn between(old: &TopologyConfig, new: &TopologyConfig) -> Self {
        let mut diff = Diff::default();
        for (id, component) in &new.components {
            match old.components.get(id) {
                None => {
                    diff.added.insert(id.clone());
                }
                Some(before) if before.config != component.config => {
                    diff.changed.insert(id.clone());
                }
                Some(before) if before.inputs != component.inputs => {
                    diff.rewired.insert(id.clone());
                }
                Some(_) => {}
            }
        }
        diff.removed = old
            .components
            .keys()
            .filter(|id| !new.components.contains_key(*id))
            .cloned()
            .collect();
        diff
    }

    /// Components whose old instance stops (removed or rebuilt).
    pub fn retiring(&self) -> impl Iterator<Item = &ComponentId> {
        self.removed.iter().chain(&self.changed)
    }

    /// Components that need a new instance (added or rebuilt).
    pub fn building(&self) -> impl Iterator<Item = &ComponentId> {
        self.added.iter().chain(&self.changed)
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.rewired.is_empty()
    }
}

/// Global settings a running weir cannot change; `None` when there is none.
pub fn fixed_globals_changed(old: &TopologyConfig, new: &TopologyConfig) -> Option<String> {
    let (a, b) = (&old.globals, &new.globals);
    let mut changed: Vec<String> = Vec::new();
    let mut note = |differs: bool, key: &str| {
        if differs {
            changed.push(format!("`{key}`"));
        }
    };
    note(a.data_dir != b.data_dir, "data_dir");
    note(a.api != b.api, "api");
    note(a.log != b.log, "log");
    for key in a.services.changed_keys(&b.services) {
        note(true, key);
    }
    note(a.watch != b.watch, "watch");
    // Running components keep the channels they were built with.
    note(
        a.channel_max_events != b.channel_max_events,
        "channel_max_events",
    );
    note(a.telemetry != b.telemetry, "telemetry");
    (!changed.is_empty()).then(|| {
        format!(
            "{} cannot change while weir runs: restart weir to apply it",
            changed.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> TopologyConfig {
        crate::config::load_str(&crate::CATALOGUE, "t.yaml", text, &|_| None)
            .unwrap()
            .0
    }

    #[test]
    fn classifies_each_component() {
        let old = load(
            "sources:\n  s: { type: simulator }\ntransforms:\n  f: { type: filter, inputs: [s], condition: 'true' }\n  g: { type: filter, inputs: [s], condition: 'true' }\nsinks:\n  a: { type: blackhole, inputs: [f] }\n  b: { type: blackhole, inputs: [f] }\n",
        );
        let new = load(
            "sources:\n  s: { type: simulator }\ntransforms:\n  f: { type: filter, inputs: [s], condition: 'false' }\nsinks:\n  a: { type: blackhole, inputs: [f, s] }\n  b: { type: blackhole, inputs: [f] }\n  c: { type: blackhole, inputs: [s] }\n",
        );
        let diff = Diff::between(&old, &new);
        let ids =
            |set: &BTreeSet<ComponentId>| set.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(ids(&diff.added), ["c"]);
        assert_eq!(ids(&diff.removed), ["g"]);
        assert_eq!(ids(&diff.changed), ["f"]);
        assert_eq!(ids(&diff.rewired), ["a"]);
    }
}
