//! Finding the tests of the pipelines given and checking them against the pipeline: a
//! [`Suite`] is one pipeline and its tests, each planned as a [`PlannedTest`] whose
//! references are resolved to the pipeline's components.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::events::{InputEvent, input_events};
use crate::config::unit_test::{DeviceFixture, LocatedTest, parse_tests};
use crate::config::yaml::{Node, PathStep};
use crate::config::{
    self, ComponentId, ComponentKind, Diagnostic, Diagnostics, Location, OutputRef, TopologyConfig,
    did_you_mean,
};
use crate::template::Condition;

/// One pipeline and its tests.
pub struct Suite {
    /// What reports call it: its pipeline file(s).
    pub name: String,
    pub config: TopologyConfig,
    pub tests: Vec<PlannedTest>,
}

/// A test whose references name the pipeline's components.
pub struct PlannedTest {
    pub name: String,
    pub location: Location,
    pub devices: Vec<DeviceFixture>,
    /// Events per component they enter, each component once, in the order written.
    pub inputs: Vec<(ComponentId, Vec<InputEvent>)>,
    pub outputs: Vec<PlannedOutput>,
    /// Outputs that must emit nothing (`no_outputs_from`), as written and resolved.
    pub silent: Vec<(String, OutputRef)>,
    pub timeout: std::time::Duration,
}

/// One entry of a test's `outputs`.
pub struct PlannedOutput {
    /// The outputs taken, as written and resolved.
    pub refs: Vec<(String, OutputRef)>,
    pub location: Location,
    pub conditions: Vec<Condition>,
    pub expect: Option<Vec<Map<String, Value>>>,
    pub count: Option<usize>,
    pub ordered: bool,
}

impl PlannedOutput {
    /// `a` or `a, b.errors`, for messages.
    pub fn label(&self) -> String {
        let names: Vec<&str> = self.refs.iter().map(|(text, _)| text.as_str()).collect();
        names.join(", ")
    }
}

/// The suites of `paths`: each pipeline file on its own (a directory's files one by one),
/// or, with `merge`, all of them as one topology (as `weir validate` reads them). A
/// pipeline's tests are its `tests:` and those of `<name>.test.yaml` beside it.
pub fn load(paths: &[PathBuf], merge: bool) -> (Vec<Suite>, Diagnostics) {
    let mut diagnostics = Diagnostics::default();
    // A test file given by name stands for its pipeline.
    let paths: Vec<PathBuf> = paths
        .iter()
        .map(|p| match config::is_test_file(p) {
            true => pipeline_of(p),
            false => p.clone(),
        })
        .collect();
    let files = match config::pipeline_files(&paths) {
        Ok(files) => files,
        Err(errors) => return (Vec::new(), errors),
    };
    let groups: Vec<Vec<PathBuf>> = match merge {
        true => vec![files],
        false => files.into_iter().map(|f| vec![f]).collect(),
    };
    let mut suites = Vec::new();
    for group in groups {
        if let Some(suite) = load_suite(&group, &mut diagnostics) {
            suites.push(suite);
        }
    }
    (suites, diagnostics)
}

/// `dir/x.yaml` for `dir/x.test.yaml`.
fn pipeline_of(test_file: &Path) -> PathBuf {
    let name = test_file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let pipeline = name
        .strip_suffix(".test.yaml")
        .map(|stem| format!("{stem}.yaml"))
        .or_else(|| {
            name.strip_suffix(".test.yml")
                .map(|stem| format!("{stem}.yml"))
        })
        .unwrap_or_else(|| name.to_owned());
    test_file.with_file_name(pipeline)
}

/// The test files beside a pipeline file: `x.test.yaml` or `x.test.yml` for `x.yaml`.
fn test_files_of(pipeline: &Path) -> Vec<PathBuf> {
    let Some(stem) = pipeline.file_stem().and_then(|s| s.to_str()) else {
        return Vec::new();
    };
    ["yaml", "yml"]
        .iter()
        .map(|ext| pipeline.with_file_name(format!("{stem}.test.{ext}")))
        .filter(|p| p.is_file())
        .collect()
}

fn load_suite(files: &[PathBuf], diagnostics: &mut Diagnostics) -> Option<Suite> {
    let name = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let config = match config::load(&crate::CATALOGUE, files) {
        Ok((config, _warnings)) => config,
        Err(errors) => {
            diagnostics.0.extend(errors.0);
            return None;
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let mut located = Vec::new();
    let test_files: Vec<PathBuf> = files.iter().flat_map(|f| test_files_of(f)).collect();
    for (file, only_tests) in files
        .iter()
        .map(|f| (f, false))
        .chain(test_files.iter().map(|f| (f, true)))
    {
        let Some(root) = parse(file, diagnostics) else {
            continue;
        };
        for (key, value) in root.as_map().unwrap_or_default() {
            if key.name == config::TESTS_KEY {
                located.extend(parse_tests(value, &env, diagnostics));
            } else if only_tests {
                diagnostics.push(Diagnostic::error(
                    Some(key.location.clone()),
                    format!(
                        "a test file holds only `tests`, not `{}`: the pipeline is {}",
                        key.name,
                        pipeline_of(file).display()
                    ),
                ));
            }
        }
    }
    let mut tests = Vec::new();
    let mut names: Vec<(String, Location)> = Vec::new();
    for test in &located {
        let location = test.node.location.clone();
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == test.test.name) {
            diagnostics.push(test.error_at(
                &[PathStep::Key("name".into())],
                format!("another test has this name, at {first}: names are unique per pipeline"),
            ));
            continue;
        }
        names.push((test.test.name.clone(), location));
        match plan(&config, test) {
            Ok(planned) => tests.push(planned),
            Err(errors) => diagnostics.0.extend(errors),
        }
    }
    Some(Suite {
        name,
        config,
        tests,
    })
}

fn parse(file: &Path, diagnostics: &mut Diagnostics) -> Option<Node> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) => {
            diagnostics.push(Diagnostic::error(
                None,
                format!("cannot read {}: {err}", file.display()),
            ));
            return None;
        }
    };
    match Node::parse(&Arc::from(file), &text) {
        Ok(root) => Some(root),
        Err(diagnostic) => {
            diagnostics.push(diagnostic);
            None
        }
    }
}

fn key(name: &str) -> PathStep {
    PathStep::Key(name.to_owned())
}

/// Resolves a test's references against the pipeline; every mistake is reported.
fn plan(config: &TopologyConfig, located: &LocatedTest) -> Result<PlannedTest, Vec<Diagnostic>> {
    let test = &located.test;
    let mut errors = Vec::new();
    let mut inputs: Vec<(ComponentId, Vec<InputEvent>)> = Vec::new();
    for (i, input) in test.inputs.iter().enumerate() {
        let at = [key("inputs"), PathStep::Index(i)];
        let insert_at = [key("inputs"), PathStep::Index(i), key("insert_at")];
        let id = match runnable(config, &input.insert_at) {
            Ok(id) => id,
            Err(message) => {
                errors.push(located.error_at(&insert_at, format!("`insert_at`: {message}")));
                continue;
            }
        };
        match input_events(input) {
            Ok(events) => match inputs.iter_mut().find(|(known, _)| *known == id) {
                Some((_, known)) => known.extend(events),
                None => inputs.push((id, events)),
            },
            Err(message) => errors.push(located.error_at(&at, format!("input {i}: {message}"))),
        }
    }
    let mut outputs = Vec::new();
    for (i, output) in test.outputs.iter().enumerate() {
        let at = [key("outputs"), PathStep::Index(i), key("extract_from")];
        let mut refs = Vec::new();
        for text in output.extract_from.items() {
            match output_ref(config, text) {
                Ok(reference) => refs.push((text.to_owned(), reference)),
                Err(message) => {
                    errors.push(located.error_at(&at, format!("`extract_from`: {message}")))
                }
            }
        }
        let mut expect = None;
        if let Some(items) = &output.expect {
            let mut events = Vec::new();
            for (j, item) in items.iter().enumerate() {
                match item {
                    Value::Object(object) => events.push(object.clone()),
                    other => errors.push(located.error_at(
                        &[
                            key("outputs"),
                            PathStep::Index(i),
                            key("expect"),
                            PathStep::Index(j),
                        ],
                        format!("expected event {j} is `{other}`: expected a mapping of fields"),
                    )),
                }
            }
            expect = Some(events);
        }
        if let (Some(count), Some(events)) = (output.count, &expect)
            && count != events.len()
        {
            errors.push(located.error_at(
                &[key("outputs"), PathStep::Index(i), key("count")],
                format!(
                    "`count: {count}` contradicts `expect`, which lists {} events",
                    events.len()
                ),
            ));
        }
        outputs.push(PlannedOutput {
            refs,
            location: located.node.locate(&at).clone(),
            conditions: output.conditions.items().to_vec(),
            expect,
            count: output.count,
            ordered: output.ordered,
        });
    }
    let mut silent = Vec::new();
    for (i, text) in test.no_outputs_from.iter().enumerate() {
        match output_ref(config, text) {
            Ok(reference) => silent.push((text.clone(), reference)),
            Err(message) => errors.push(located.error_at(
                &[key("no_outputs_from"), PathStep::Index(i)],
                format!("`no_outputs_from`: {message}"),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PlannedTest {
        name: test.name.clone(),
        location: located.node.location.clone(),
        devices: test
            .registry
            .as_ref()
            .map(|r| r.devices.clone())
            .unwrap_or_default(),
        inputs,
        outputs,
        silent,
        timeout: test.timeout.get(),
    })
}

/// The transform or aggregator `id` names: what a test can run.
fn runnable(config: &TopologyConfig, id: &str) -> Result<ComponentId, String> {
    let Some(component) = config.components.get(id) else {
        let candidates: Vec<&str> = config
            .components
            .values()
            .filter(|c| is_runnable(c.config.kind()))
            .map(|c| c.id.as_str())
            .collect();
        return Err(format!(
            "`{id}` names no component{}: expected a transform or aggregator",
            did_you_mean(id, &candidates)
        ));
    };
    let kind = component.config.kind();
    match is_runnable(kind) {
        true => Ok(component.id.clone()),
        false => Err(format!(
            "`{id}` is a {}: tests run transforms and aggregators only (sources and sinks do not run)",
            kind.noun()
        )),
    }
}

fn is_runnable(kind: ComponentKind) -> bool {
    matches!(kind, ComponentKind::Transform | ComponentKind::Aggregator)
}

/// The output `text` names (`id` or `id.output`) of a transform or aggregator.
fn output_ref(config: &TopologyConfig, text: &str) -> Result<OutputRef, String> {
    let (id, output) = match text.split_once('.') {
        Some((id, output)) => (id, Some(output)),
        None => (text, None),
    };
    let id = runnable(config, id)?;
    let component = &config.components[&id];
    let named: Vec<String> = component
        .config
        .named_outputs()
        .into_iter()
        .map(|n| n.0)
        .collect();
    let all = || {
        let mut all: Vec<String> = Vec::new();
        if component.config.has_default_output() {
            all.push(id.to_string());
        }
        all.extend(named.iter().map(|n| format!("{id}.{n}")));
        all.join(", ")
    };
    match output {
        None if !component.config.has_default_output() => Err(format!(
            "`{id}` has no default output: take one of {}",
            all()
        )),
        Some(name) if !named.iter().any(|n| n == name) => {
            let names: Vec<&str> = named.iter().map(String::as_str).collect();
            Err(format!(
                "`{id}` has no output `{name}`{}: its outputs are {}",
                did_you_mean(name, &names),
                all()
            ))
        }
        _ => Ok(OutputRef {
            component: id,
            output: output.map(str::to_owned),
        }),
    }
}
