//! Graph checks: inputs that exist, no cycles, one owner per port or file.

use std::collections::{BTreeMap, BTreeSet};

use globset::Glob;

use super::diagnostic::{Diagnostic, Diagnostics, Location, did_you_mean, list};
use super::{
    Catalogue, Component, ComponentConfig, ComponentId, ComponentKind, GlobalConfig, OutputRef,
    Resource,
};

/// An input as written: `id`, `id.output` or a glob such as `plant_*`.
pub(super) struct RawInput {
    pub text: String,
    pub location: Location,
}

/// A component whose options are typed but whose inputs are not yet resolved.
pub(super) struct TypedComponent {
    pub id: ComponentId,
    /// `None` when its options had errors: the id still exists, so inputs naming it are
    /// not reported again, but it takes no further part in checks.
    pub config: Option<ComponentConfig>,
    pub inputs: Vec<RawInput>,
    pub location: Location,
}

impl TypedComponent {
    pub fn failed(id: ComponentId, location: Location) -> Self {
        Self {
            id,
            config: None,
            inputs: Vec::new(),
            location,
        }
    }
}

/// Ids are names in expressions, metrics and file names: keep them plain.
pub(super) fn check_id(id: &str) -> Result<(), String> {
    let plain = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "`{id}` cannot be a component id: expected letters, digits, `_` and `-` (a `.` separates a component from its named output)"
        ))
    }
}

/// What can be read from each component.
struct Outputs {
    has_default: bool,
    named: Vec<String>,
}

/// Resolves inputs and checks the graph; returns the components that resolved.
pub(super) fn resolve(
    catalogue: &Catalogue,
    typed: Vec<TypedComponent>,
    globals: &GlobalConfig,
    diagnostics: &mut Diagnostics,
) -> BTreeMap<ComponentId, Component> {
    let outputs: BTreeMap<ComponentId, Option<Outputs>> = typed
        .iter()
        .map(|c| {
            let outputs = c.config.as_ref().map(|config| Outputs {
                has_default: config.has_default_output(),
                named: config.named_outputs().into_iter().map(|o| o.0).collect(),
            });
            (c.id.clone(), outputs)
        })
        .collect();

    let mut components = BTreeMap::new();
    for component in typed {
        let Some(config) = component.config else {
            continue;
        };
        let mut inputs: Vec<OutputRef> = Vec::new();
        for raw in &component.inputs {
            for resolved in resolve_input(raw, &component.id, &outputs, diagnostics) {
                if !inputs.contains(&resolved) {
                    inputs.push(resolved);
                }
            }
        }
        components.insert(
            component.id.clone(),
            Component {
                id: component.id,
                config,
                inputs,
                location: component.location,
            },
        );
    }

    check_cycles(&components, diagnostics);
    check_resources(&components, globals, diagnostics);
    check_services(catalogue, &components, globals, diagnostics);
    // With errors, a consumer may be missing only because it failed: warnings would be noise.
    if !diagnostics.has_errors() {
        check_unread_outputs(&components, diagnostics);
        check_commit_delays(&components, diagnostics);
    }
    components
}

/// A sink that may hold events longer than a source upstream waits for their commit makes
/// that source give up on events that will be committed (HTTP 503, then a client's retry
/// and a duplicate): warn. Windows acknowledge on their own checkpoint, so the walk up the
/// graph stops at aggregators.
fn check_commit_delays(
    components: &BTreeMap<ComponentId, Component>,
    diagnostics: &mut Diagnostics,
) {
    for sink in components.values() {
        let Some(delay) = sink.config.commit_delay() else {
            continue;
        };
        let mut seen = BTreeSet::new();
        let mut upstream: Vec<&ComponentId> = sink.inputs.iter().map(|i| &i.component).collect();
        while let Some(id) = upstream.pop() {
            let Some(component) = components.get(id).filter(|_| seen.insert(id)) else {
                continue;
            };
            match component.config.kind() {
                ComponentKind::Transform => {
                    upstream.extend(component.inputs.iter().map(|i| &i.component))
                }
                ComponentKind::Source => {
                    if let Some(timeout) = component.config.ack_timeout()
                        && timeout <= delay
                    {
                        diagnostics.push(
                            Diagnostic::warning(
                                Some(sink.location.clone()),
                                format!(
                                    "this sink may hold an event {} before committing it, but source `{id}` stops waiting for the commit after {} (`ack_timeout`): lower the sink's `batch.timeout` or raise the source's `ack_timeout`",
                                    humantime::format_duration(delay),
                                    humantime::format_duration(timeout)
                                ),
                            )
                            .in_component(sink.id.as_str()),
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

/// Components that use a service need its settings (`registry:`).
fn check_services(
    catalogue: &Catalogue,
    components: &BTreeMap<ComponentId, Component>,
    globals: &GlobalConfig,
    diagnostics: &mut Diagnostics,
) {
    for component in components.values() {
        for used in component.config.services() {
            if globals.services.contains(used.service) {
                continue;
            }
            let what = match used.option {
                "type" => format!("`{}`", component.config.type_name()),
                option => format!("`{option}` of `{}`", component.config.type_name()),
            };
            let message = match catalogue.service(used.service) {
                Some(service) => format!(
                    "{what} uses {}: add a `{}:` section (e.g. `{}`)",
                    service.describes, service.key, service.example
                ),
                None => format!(
                    "{what} uses the service `{}`, which this build of weir does not have",
                    used.service
                ),
            };
            diagnostics.push(
                Diagnostic::error(Some(component.location.clone()), message)
                    .in_component(component.id.as_str()),
            );
        }
    }
}

fn resolve_input(
    raw: &RawInput,
    consumer: &ComponentId,
    outputs: &BTreeMap<ComponentId, Option<Outputs>>,
    diagnostics: &mut Diagnostics,
) -> Vec<OutputRef> {
    let error = |message: String| {
        Diagnostic::error(Some(raw.location.clone()), message).in_component(consumer.as_str())
    };
    let text = raw.text.trim();

    if text.contains(['*', '?', '[']) {
        let matcher = match Glob::new(text) {
            Ok(glob) => glob.compile_matcher(),
            Err(err) => {
                diagnostics.push(error(format!("input `{text}` is not a valid glob: {err}")));
                return Vec::new();
            }
        };
        let names_output = text.contains('.');
        let mut matched = Vec::new();
        for (id, out) in outputs {
            let Some(out) = out.as_ref().filter(|_| id != consumer) else {
                continue;
            };
            // `plant_*` matches default outputs; a glob with a `.` (`*.errors`) matches named ones.
            if !names_output && out.has_default && matcher.is_match(id.as_str()) {
                matched.push(OutputRef {
                    component: id.clone(),
                    output: None,
                });
            }
            for name in out.named.iter().filter(|_| names_output) {
                if matcher.is_match(format!("{id}.{name}")) {
                    matched.push(OutputRef {
                        component: id.clone(),
                        output: Some(name.clone()),
                    });
                }
            }
        }
        let failed_match = outputs
            .iter()
            .any(|(id, out)| out.is_none() && matcher.is_match(id.as_str()));
        if matched.is_empty() && !failed_match {
            diagnostics.push(error(format!("input `{text}` matches no component output")));
        }
        return matched;
    }

    let (id, output) = match text.split_once('.') {
        Some((id, output)) => (id, Some(output)),
        None => (text, None),
    };
    let target = match outputs.get(id) {
        Some(Some(target)) => target,
        // The component exists but has errors of its own, already reported.
        Some(None) => return Vec::new(),
        None => {
            let ids: Vec<&str> = outputs.keys().map(ComponentId::as_str).collect();
            diagnostics.push(error(format!(
                "input `{text}` names no component{}",
                did_you_mean(id, &ids)
            )));
            return Vec::new();
        }
    };
    if id == consumer.as_str() {
        diagnostics.push(error(format!(
            "`{id}` reads its own output: a component cannot be its own input"
        )));
        return Vec::new();
    }
    let readable = || {
        let mut all: Vec<String> = Vec::new();
        if target.has_default {
            all.push(id.to_owned());
        }
        all.extend(target.named.iter().map(|n| format!("{id}.{n}")));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        list(&all)
    };
    match output {
        None if !target.has_default => {
            diagnostics.push(error(format!(
                "`{id}` has no default output: read one of {}",
                readable()
            )));
            Vec::new()
        }
        Some(name) if !target.named.iter().any(|n| n == name) => {
            let named: Vec<&str> = target.named.iter().map(String::as_str).collect();
            diagnostics.push(error(format!(
                "`{id}` has no output `{name}`{}: its outputs are {}",
                did_you_mean(name, &named),
                readable()
            )));
            Vec::new()
        }
        _ => vec![OutputRef {
            component: id.into(),
            output: output.map(str::to_owned),
        }],
    }
}

/// Reports each cycle once, as `a -> b -> a`.
fn check_cycles(components: &BTreeMap<ComponentId, Component>, diagnostics: &mut Diagnostics) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        InProgress,
        Done,
    }
    // Edges point from a component to the components it reads.
    let mut marks: BTreeMap<&ComponentId, Mark> =
        components.keys().map(|id| (id, Mark::Unvisited)).collect();
    let mut reported: BTreeSet<Vec<ComponentId>> = BTreeSet::new();

    fn visit<'a>(
        id: &'a ComponentId,
        components: &'a BTreeMap<ComponentId, Component>,
        marks: &mut BTreeMap<&'a ComponentId, Mark>,
        stack: &mut Vec<&'a ComponentId>,
        reported: &mut BTreeSet<Vec<ComponentId>>,
        diagnostics: &mut Diagnostics,
    ) {
        marks.insert(id, Mark::InProgress);
        stack.push(id);
        if let Some(component) = components.get(id) {
            for input in &component.inputs {
                let Some((next, _)) = components.get_key_value(&input.component) else {
                    continue;
                };
                match marks.get(next).copied().unwrap_or(Mark::Done) {
                    Mark::Unvisited => visit(next, components, marks, stack, reported, diagnostics),
                    Mark::InProgress => {
                        let start = stack.iter().position(|s| *s == next).unwrap_or(0);
                        let mut cycle: Vec<ComponentId> =
                            stack[start..].iter().map(|s| (*s).clone()).collect();
                        let mut key = cycle.clone();
                        key.sort();
                        if reported.insert(key) {
                            // Data flows opposite to the `inputs` edges: print it in flow order.
                            cycle.reverse();
                            let first = cycle[0].clone();
                            let path: Vec<String> = cycle
                                .iter()
                                .chain(std::iter::once(&first))
                                .map(|c| c.to_string())
                                .collect();
                            let location = components.get(&first).map(|c| c.location.clone());
                            diagnostics.push(
                                Diagnostic::error(
                                    location,
                                    format!(
                                        "cycle: {} (inputs must not loop back)",
                                        path.join(" -> ")
                                    ),
                                )
                                .in_component(first.as_str()),
                            );
                        }
                    }
                    Mark::Done => {}
                }
            }
        }
        stack.pop();
        marks.insert(id, Mark::Done);
    }

    let ids: Vec<&ComponentId> = components.keys().collect();
    for id in ids {
        if marks.get(id) == Some(&Mark::Unvisited) {
            visit(
                id,
                components,
                &mut marks,
                &mut Vec::new(),
                &mut reported,
                diagnostics,
            );
        }
    }
}

/// Two components (or a component and the API) cannot hold the same port or file.
fn check_resources(
    components: &BTreeMap<ComponentId, Component>,
    globals: &GlobalConfig,
    diagnostics: &mut Diagnostics,
) {
    let mut held: Vec<(Resource, String, Option<Location>)> = Vec::new();
    if globals.api.enabled {
        held.push((
            Resource::TcpPort(globals.api.listen),
            "the API (`api.listen`)".into(),
            None,
        ));
    }
    for component in components.values() {
        for resource in component.resources(&globals.data_dir) {
            if let Some((_, owner, _)) = held.iter().find(|(r, _, _)| r.conflicts_with(&resource)) {
                diagnostics.push(
                    Diagnostic::error(
                        Some(component.location.clone()),
                        format!("{resource} is already used by {owner}"),
                    )
                    .in_component(component.id.as_str()),
                );
            } else {
                held.push((
                    resource,
                    format!("component `{}`", component.id),
                    Some(component.location.clone()),
                ));
            }
        }
    }
}

/// A source or transform whose output nobody reads does work for nothing: warn.
fn check_unread_outputs(
    components: &BTreeMap<ComponentId, Component>,
    diagnostics: &mut Diagnostics,
) {
    let read: BTreeSet<&ComponentId> = components
        .values()
        .flat_map(|c| c.inputs.iter().map(|i| &i.component))
        .collect();
    for component in components.values() {
        let produces =
            component.config.has_default_output() || !component.config.named_outputs().is_empty();
        if produces && !read.contains(&component.id) && component.config.kind().has_default_output()
        {
            diagnostics.push(
                Diagnostic::warning(
                    Some(component.location.clone()),
                    "no component reads this component's output; its events go nowhere",
                )
                .in_component(component.id.as_str()),
            );
        }
    }
}
