//! Reading pipeline files into a [`TopologyConfig`].
//!
//! Loading goes file by file, then component by component, and keeps going after an error
//! so one run of `weir validate` reports every mistake it can find:
//!
//! 1. parse each file into a located [`Node`] tree;
//! 2. merge the files: sections by component id (unique across sections and files),
//!    globals by key (each set once);
//! 3. per component: substitute `${VAR}`s, split off `type` and `inputs`, deserialize the
//!    remaining options into the type's config struct, run its own checks;
//! 4. check the graph (see [`super::validate`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::common::{COMMON_KEYS, common_options};
use super::diagnostic::{Diagnostic, Diagnostics, Location, did_you_mean, list};
use super::unit_test::is_test_file;
use super::validate::{self, RawInput, TypedComponent};
use super::yaml::{Key, Node, NodeKind, PathStep};
use super::{
    Catalogue, ComponentKind, FieldProblem, GlobalConfig, OptionsError, ServiceConfigs,
    TopologyConfig,
};

/// The top-level key of a pipeline's unit tests (see [`super::unit_test`]).
pub const TESTS_KEY: &str = "tests";

/// Top-level keys that are not sections: the engine's settings, with the catalogue's
/// services between the settings of the process (`data_dir`, `api`, `log`) and `watch`,
/// `channel_max_events`.
fn global_keys(catalogue: &Catalogue) -> Vec<&'static str> {
    let services = catalogue.services.iter().map(|s| s.key);
    ["data_dir", "api", "log"]
        .into_iter()
        .chain(services)
        .chain(["watch", "channel_max_events", "telemetry"])
        .collect()
}

/// Loads and validates the pipeline files and directories in `paths`.
///
/// On success, returns the topology and any warnings; on failure, every error found.
pub fn load(
    catalogue: &Catalogue,
    paths: &[PathBuf],
) -> Result<(TopologyConfig, Diagnostics), Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    let mut files = Vec::new();
    for path in expand(paths, &mut diagnostics) {
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((Arc::from(path.as_path()), text)),
            Err(err) => diagnostics.push(Diagnostic::error(
                None,
                format!("cannot read {}: {err}", path.display()),
            )),
        }
    }
    if files.is_empty() && !diagnostics.has_errors() {
        diagnostics.push(Diagnostic::error(
            None,
            "no pipeline files given: expected YAML files or directories holding them",
        ));
    }
    load_files(
        catalogue,
        files,
        &|name| std::env::var(name).ok(),
        diagnostics,
    )
}

/// Loads one pipeline from text (tests, `POST /v1/reload` bodies).
///
/// ```
/// let text = "
/// sources:
///   fleet: { type: simulator, devices: 3 }
/// sinks:
///   out: { type: blackhole, inputs: [flet] }
/// ";
/// let errors = weir::config::load_str(&weir::CATALOGUE, "demo.yaml", text, &|_| None)
///     .unwrap_err();
/// assert_eq!(
///     errors.to_string(),
///     "error: demo.yaml:5:36: component `out`: input `flet` names no component \
///      (did you mean `fleet`?)\n1 error"
/// );
/// ```
pub fn load_str(
    catalogue: &Catalogue,
    name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(TopologyConfig, Diagnostics), Diagnostics> {
    load_files(
        catalogue,
        vec![(Arc::from(Path::new(name)), text.to_owned())],
        env,
        Diagnostics::default(),
    )
}

/// The pipeline files `paths` name: files as given, directories as their
/// `*.yaml`/`*.yml` files (not `*.test.yaml`) in name order.
pub fn pipeline_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    let files = expand(paths, &mut diagnostics);
    match diagnostics.has_errors() {
        true => Err(diagnostics),
        false => Ok(files),
    }
}

/// Files as given, directories as their `*.yaml`/`*.yml` files in name order.
fn expand(paths: &[PathBuf], diagnostics: &mut Diagnostics) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.is_file()
                                && matches!(
                                    p.extension().and_then(|e| e.to_str()),
                                    Some("yaml" | "yml")
                                )
                                && !is_test_file(p)
                        })
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        diagnostics.push(Diagnostic::error(
                            None,
                            format!("directory {} holds no .yaml or .yml files", path.display()),
                        ));
                    }
                    files.extend(found);
                }
                Err(err) => diagnostics.push(Diagnostic::error(
                    None,
                    format!("cannot read directory {}: {err}", path.display()),
                )),
            }
        } else {
            files.push(path.clone());
        }
    }
    files
}

/// A component as written, before its options are typed.
struct RawComponent {
    kind: ComponentKind,
    key: Key,
    node: Node,
}

fn load_files(
    catalogue: &Catalogue,
    files: Vec<(Arc<Path>, String)>,
    env: &dyn Fn(&str) -> Option<String>,
    mut diagnostics: Diagnostics,
) -> Result<(TopologyConfig, Diagnostics), Diagnostics> {
    let mut globals: Vec<(Key, Node)> = Vec::new();
    let mut raw: Vec<RawComponent> = Vec::new();
    let mut seen: HashMap<String, Location> = HashMap::new();
    let global_keys = global_keys(catalogue);

    for (file, text) in &files {
        let root = match Node::parse(file, text) {
            Ok(root) => root,
            Err(diagnostic) => {
                diagnostics.push(diagnostic);
                continue;
            }
        };
        let Some(entries) = root.as_map() else {
            diagnostics.push(Diagnostic::error(
                Some(root.location.clone()),
                format!("the file holds {}: expected a mapping with `sources`, `transforms`, `sinks`, ...", root.kind_name()),
            ));
            continue;
        };
        for (key, value) in entries {
            if key.name == TESTS_KEY {
                // Unit tests beside the pipeline: `weir test` reads them, nothing runs them.
                continue;
            }
            if let Some(kind) = ComponentKind::from_section(&key.name) {
                collect_section(kind, value, &mut raw, &mut seen, &mut diagnostics);
            } else if global_keys.contains(&key.name.as_str()) {
                if let Some((first, _)) = globals.iter().find(|(k, _)| k.name == key.name) {
                    diagnostics.push(Diagnostic::error(
                        Some(key.location.clone()),
                        format!(
                            "`{}` is already set at {}: set each global once",
                            key.name, first.location
                        ),
                    ));
                } else {
                    globals.push((key.clone(), value.clone()));
                }
            } else {
                let expected: Vec<&str> = global_keys
                    .iter()
                    .copied()
                    .chain(ComponentKind::ALL.iter().map(|k| k.section()))
                    .chain([TESTS_KEY])
                    .collect();
                diagnostics.push(Diagnostic::error(
                    Some(key.location.clone()),
                    format!(
                        "unknown top-level key `{}`{}: expected one of {}",
                        key.name,
                        did_you_mean(&key.name, &expected),
                        list(&expected)
                    ),
                ));
            }
        }
    }

    let globals = typed_globals(catalogue, globals, env, &mut diagnostics);
    let typed: Vec<TypedComponent> = raw
        .into_iter()
        .map(|component| typed_component(catalogue, component, env, &mut diagnostics))
        .collect();
    let components = validate::resolve(catalogue, typed, &globals, &mut diagnostics);

    diagnostics.sort();
    if diagnostics.has_errors() {
        Err(diagnostics)
    } else {
        Ok((
            TopologyConfig {
                globals,
                components,
            },
            diagnostics,
        ))
    }
}

fn collect_section(
    kind: ComponentKind,
    section: &Node,
    raw: &mut Vec<RawComponent>,
    seen: &mut HashMap<String, Location>,
    diagnostics: &mut Diagnostics,
) {
    let entries = match &section.kind {
        NodeKind::Map(entries) => entries,
        NodeKind::Null => return,
        _ => {
            diagnostics.push(Diagnostic::error(
                Some(section.location.clone()),
                format!(
                    "`{}` holds {}: expected a mapping of component id to component",
                    kind.section(),
                    section.kind_name()
                ),
            ));
            return;
        }
    };
    for (key, node) in entries {
        if let Err(message) = validate::check_id(&key.name) {
            diagnostics.push(
                Diagnostic::error(Some(key.location.clone()), message).in_component(&key.name),
            );
            continue;
        }
        if let Some(first) = seen.get(&key.name) {
            diagnostics.push(
                Diagnostic::error(
                    Some(key.location.clone()),
                    format!("duplicate id: already declared at {first} (ids are unique across all sections and files)"),
                )
                .in_component(&key.name),
            );
            continue;
        }
        seen.insert(key.name.clone(), key.location.clone());
        raw.push(RawComponent {
            kind,
            key: key.clone(),
            node: node.clone(),
        });
    }
}

fn typed_globals(
    catalogue: &Catalogue,
    entries: Vec<(Key, Node)>,
    env: &dyn Fn(&str) -> Option<String>,
    diagnostics: &mut Diagnostics,
) -> GlobalConfig {
    let location = entries
        .first()
        .map(|(k, _)| k.location.clone())
        .unwrap_or_else(|| Location {
            file: Arc::from(Path::new("<globals>")),
            line: 1,
            column: 1,
        });
    let node = Node {
        location,
        kind: NodeKind::Map(entries),
    };
    let mut errors = Vec::new();
    let json = node.to_json(env, &mut errors);
    diagnostics.0.extend(errors);
    let Value::Object(mut json) = json else {
        return GlobalConfig::default();
    };

    // Each service reads its own key; the engine reads the rest. Serde reports the first
    // error in a mapping, so of several, only the one written first is reported, as if
    // the globals were one struct.
    let mut failed: Vec<Diagnostic> = Vec::new();
    let mut services = Vec::new();
    for service in catalogue.services {
        match json.remove(service.key) {
            None | Some(Value::Null) => {}
            Some(options) => match service.parse(options) {
                Ok(config) => services.push((service.key, config)),
                Err(err) => failed.push(nested_serde_diagnostic(&node, service.key, err)),
            },
        }
    }
    let globals = match serde_path_to_error::deserialize::<_, GlobalConfig>(Value::Object(json)) {
        Ok(globals) => Some(globals),
        Err(err) => {
            failed.push(serde_diagnostic(&node, err));
            None
        }
    };
    match (
        globals,
        failed
            .into_iter()
            .min_by(|a, b| a.location.cmp(&b.location)),
    ) {
        (Some(globals), None) => GlobalConfig {
            services: ServiceConfigs::new(services),
            ..globals
        },
        (_, first_error) => {
            diagnostics.0.extend(first_error);
            GlobalConfig::default()
        }
    }
}

fn typed_component(
    catalogue: &Catalogue,
    raw: RawComponent,
    env: &dyn Fn(&str) -> Option<String>,
    diagnostics: &mut Diagnostics,
) -> TypedComponent {
    let RawComponent { kind, key, node } = raw;
    let id = key.name.clone();
    let error = |location: &Location, message: String| {
        Diagnostic::error(Some(location.clone()), message).in_component(&id)
    };
    let types = &catalogue.type_names(kind);

    let Some(entries) = node.as_map() else {
        diagnostics.push(error(
            &node.location,
            format!(
                "{} {} holds {}: expected a mapping with `type`",
                kind.noun(),
                id,
                node.kind_name()
            ),
        ));
        return TypedComponent::failed(id.as_str().into(), key.location);
    };

    let type_name = match node.get("type").map(|n| &n.kind) {
        Some(NodeKind::String(t)) => t.clone(),
        Some(_) => {
            diagnostics.push(error(
                node.locate(&[PathStep::Key("type".into())]),
                format!("`type` must be a string: expected one of {}", list(types)),
            ));
            return TypedComponent::failed(id.as_str().into(), key.location);
        }
        None => {
            diagnostics.push(error(
                &key.location,
                format!("missing `type`: expected one of {}", list(types)),
            ));
            return TypedComponent::failed(id.as_str().into(), key.location);
        }
    };

    let inputs = match (kind.takes_inputs(), node.get("inputs")) {
        (false, Some(inputs)) => {
            diagnostics.push(error(
                &inputs.location,
                format!(
                    "{}s take no `inputs`: they read from outside weir",
                    kind.noun()
                ),
            ));
            Vec::new()
        }
        (false, None) => Vec::new(),
        (true, None) => {
            diagnostics.push(error(
                &key.location,
                "missing `inputs`: expected a list of component ids, e.g. `inputs: [my_source]`"
                    .into(),
            ));
            Vec::new()
        }
        (true, Some(inputs)) => raw_inputs(inputs, &id, diagnostics),
    };

    let options = Node {
        location: node.location.clone(),
        kind: NodeKind::Map(
            entries
                .iter()
                .filter(|(k, _)| {
                    k.name != "type"
                        && k.name != "inputs"
                        && !COMMON_KEYS.contains(&k.name.as_str())
                })
                .cloned()
                .collect(),
        ),
    };
    let common = common_options(kind, &node, env, diagnostics, &id);
    let mut env_errors = Vec::new();
    let json = options.to_json(env, &mut env_errors);
    let had_env_errors = !env_errors.is_empty();
    diagnostics
        .0
        .extend(env_errors.into_iter().map(|d| d.in_component(&id)));

    if had_env_errors {
        return TypedComponent::failed(id.as_str().into(), key.location);
    }
    let typed = match catalogue.parse(kind, &type_name, json) {
        None => {
            let at = node.locate(&[PathStep::Key("type".into())]);
            diagnostics.push(error(
                at,
                format!(
                    "unknown {} type `{type_name}`{}: expected one of {}",
                    kind.noun(),
                    did_you_mean(&type_name, types),
                    list(types)
                ),
            ));
            return TypedComponent::failed(id.as_str().into(), key.location);
        }
        Some(Err(err)) => {
            diagnostics.push(serde_diagnostic(&options, err).in_component(&id));
            return TypedComponent::failed(id.as_str().into(), key.location);
        }
        Some(Ok(config)) => config.with_common(common),
    };
    let field_message = |problem: FieldProblem| match path_text(&problem.path) {
        path if path.is_empty() => problem.message,
        path => format!("`{path}`: {}", problem.message),
    };
    for problem in typed.check().into_iter().chain(typed.common().check()) {
        let at = options.locate(&problem.path);
        diagnostics.push(error(at, field_message(problem)));
    }
    for problem in typed.warnings() {
        let at = options.locate(&problem.path).clone();
        diagnostics.push(Diagnostic::warning(Some(at), field_message(problem)).in_component(&id));
    }
    TypedComponent {
        id: id.as_str().into(),
        config: Some(typed),
        inputs,
        location: key.location,
    }
}

fn raw_inputs(node: &Node, id: &str, diagnostics: &mut Diagnostics) -> Vec<RawInput> {
    let items: Vec<&Node> = match &node.kind {
        NodeKind::Seq(items) => items.iter().collect(),
        NodeKind::String(_) => vec![node],
        _ => {
            diagnostics.push(
                Diagnostic::error(
                    Some(node.location.clone()),
                    format!(
                        "`inputs` holds {}: expected a list of component ids",
                        node.kind_name()
                    ),
                )
                .in_component(id),
            );
            return Vec::new();
        }
    };
    let mut inputs = Vec::new();
    for item in items {
        match &item.kind {
            NodeKind::String(text) => inputs.push(RawInput { text: text.clone(), location: item.location.clone() }),
            _ => diagnostics.push(
                Diagnostic::error(Some(item.location.clone()), format!("an input is {}: expected a component id such as `my_source` or `my_route.hot`", item.kind_name()))
                    .in_component(id),
            ),
        }
    }
    if inputs.is_empty() && !diagnostics.has_errors() {
        diagnostics.push(
            Diagnostic::error(
                Some(node.location.clone()),
                "`inputs` is empty: expected at least one component id",
            )
            .in_component(id),
        );
    }
    inputs
}

/// Turns a serde error at a path inside `node` into a positioned diagnostic.
pub(super) fn serde_diagnostic(node: &Node, err: OptionsError) -> Diagnostic {
    path_diagnostic(node, serde_path(&err), err.inner().to_string())
}

/// The diagnostic for options read from the value under `key` of `node`.
fn nested_serde_diagnostic(node: &Node, key: &str, err: OptionsError) -> Diagnostic {
    let mut path = vec![PathStep::Key(key.to_owned())];
    path.extend(serde_path(&err));
    path_diagnostic(node, path, err.inner().to_string())
}

fn serde_path(err: &OptionsError) -> Vec<PathStep> {
    use serde_path_to_error::Segment;
    err.path()
        .iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(PathStep::Key(key.clone())),
            Segment::Seq { index } => Some(PathStep::Index(*index)),
            _ => None,
        })
        .collect()
}

/// A serde error at `path` under `node`, located at the field it is about.
fn path_diagnostic(node: &Node, path: Vec<PathStep>, mut message: String) -> Diagnostic {
    let target = node.find(&path);
    let mut location = target.location.clone();
    if let Some(field) = between(&message, "unknown field `", "`") {
        let field = field.to_owned();
        if let Some(key) = target.key(&field).or_else(|| node.key(&field)) {
            location = key.location.clone();
        }
        let expected: Vec<String> = message
            .split_once("expected ")
            .map(|(_, rest)| {
                rest.split(", ")
                    .filter_map(|s| between(s, "`", "`"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        let hint = did_you_mean(&field, &expected);
        if !hint.is_empty() {
            message = format!(
                "unknown field `{field}`{hint}: expected one of {}",
                list(&expected)
            );
        }
    }
    let field_path = path_text(&path);
    if !field_path.is_empty() && !message.contains("unknown field") {
        message = format!("`{field_path}`: {message}");
    }
    Diagnostic::error(Some(location), message)
}

/// `set.temp_f`, `layout.0.name`
fn path_text(path: &[PathStep]) -> String {
    path.iter()
        .map(|step| match step {
            PathStep::Key(k) => k.clone(),
            PathStep::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}
