//! Golden tests for `weir validate`: one fixture per kind of mistake, with the exact
//! message and position a user sees. `UPDATE_GOLDEN=1 cargo test --test it validate::`
//! rewrites the `.expected` files; review the diff before committing it.

use std::path::{Path, PathBuf};

const FIXTURES: &str = "tests/fixtures/invalid";

fn check_golden(fixture: &Path) {
    let expected_path = fixture.with_extension("expected");
    let errors = match weir::config::load(&weir::CATALOGUE, &[fixture.to_path_buf()]) {
        Ok(_) => panic!("{} should not validate", fixture.display()),
        Err(errors) => errors,
    };
    let actual = format!("{errors}\n");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
        panic!(
            "missing {}; run with UPDATE_GOLDEN=1",
            expected_path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "diagnostics for {} changed",
        fixture.display()
    );
}

macro_rules! golden {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_golden(&PathBuf::from(FIXTURES).join(concat!(stringify!($name), ".yaml")));
            }
        )*
    };
}

golden!(
    invalid_yaml,
    unknown_type,
    unknown_field,
    wrong_type,
    missing_input,
    unknown_output,
    cycle,
    duplicate_id,
    bad_expression,
    bad_duration,
    missing_env,
    port_conflict,
    unknown_top_level,
    several_errors,
    redis_options,
    registry_missing,
);

#[test]
fn merge_conflict_between_files() {
    check_golden(&PathBuf::from(FIXTURES).join("merge_conflict"));
}

#[test]
fn every_fixture_has_a_test() {
    let source = include_str!("validate.rs");
    for entry in std::fs::read_dir(FIXTURES).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            assert!(
                source.contains(&format!("    {stem},")),
                "fixture {stem}.yaml has no golden test"
            );
        }
    }
}

#[test]
fn shipped_pipelines_validate_without_warnings() {
    for entry in std::fs::read_dir("pipelines").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") && !weir::config::is_test_file(&path) {
            let (_, warnings) = weir::config::load(&weir::CATALOGUE, std::slice::from_ref(&path))
                .unwrap_or_else(|errors| panic!("{} is invalid:\n{errors}", path.display()));
            assert!(
                warnings.0.is_empty(),
                "{} has warnings:\n{warnings}",
                path.display()
            );
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("# yaml-language-server: $schema=../schemas/pipeline.schema.json"),
                "{} lacks the yaml-language-server modeline",
                path.display()
            );
        }
    }
}

#[test]
fn a_sink_slower_to_commit_than_an_http_source_waits_is_a_warning() {
    let pipeline = |timeout: &str| {
        format!(
            "sources:
  devices: {{ type: http, listen: 127.0.0.1:9999, ack_timeout: 30s }}
transforms:
  valid: {{ type: filter, inputs: [devices], condition: 'true' }}
sinks:
  lake: {{ type: delta_lake, inputs: [valid], uri: /tmp/lake, batch: {{ timeout: {timeout} }}, buffer: {{ type: memory }} }}
"
        )
    };
    let (_, warnings) =
        weir::config::load_str(&weir::CATALOGUE, "slow.yaml", &pipeline("60s"), &|_| None)
            .unwrap_or_else(|errors| panic!("valid:\n{errors}"));
    let text = warnings.to_string();
    assert!(
        text.contains("slow.yaml:6:3")
            && text.contains("`lake`")
            && text.contains("after 30s (`ack_timeout`)"),
        "{text}"
    );
    let (_, warnings) =
        weir::config::load_str(&weir::CATALOGUE, "fast.yaml", &pipeline("10s"), &|_| None)
            .unwrap_or_else(|errors| panic!("valid:\n{errors}"));
    assert!(warnings.0.is_empty(), "{warnings}");
}

#[test]
fn a_delta_sink_has_a_disk_buffer_by_default_so_its_batching_is_no_warning() {
    // DESIGN's first example: http into redis and delta_lake, nothing about buffers written.
    let text = "sources:
  devices: { type: http, listen: 127.0.0.1:9999, ack_timeout: 30s }
sinks:
  warm: { type: redis, inputs: [devices], url: redis://127.0.0.1:6379/0, key: 'device:{{ device_id }}' }
  lake: { type: delta_lake, inputs: [devices], uri: /tmp/lake, batch: { timeout: 60s } }
";
    let (config, warnings) =
        weir::config::load_str(&weir::CATALOGUE, "default.yaml", text, &|_| None)
            .unwrap_or_else(|errors| panic!("valid:\n{errors}"));
    assert!(warnings.0.is_empty(), "{warnings}");
    let data_dir = std::path::Path::new("/var/lib/weir");
    let holds_buffer = |id: &str| {
        config.components[id]
            .resources(data_dir)
            .contains(&weir::config::Resource::File(
                data_dir.join("buffers").join(id),
            ))
    };
    assert!(
        holds_buffer("lake"),
        "delta_lake buffers on disk by default"
    );
    assert!(!holds_buffer("warm"), "redis keeps its memory buffer");
}

#[test]
fn committed_schema_is_current() {
    let committed = std::fs::read_to_string("schemas/pipeline.schema.json").unwrap_or_default();
    let generated = weir::config::schema::pipeline_schema_json(&weir::CATALOGUE);
    assert!(
        committed == generated,
        "schemas/pipeline.schema.json is stale: run `cargo run -- schema -o schemas/pipeline.schema.json`"
    );
}

#[test]
fn env_vars_are_substituted_with_their_yaml_type() {
    let text = "api: { listen: '127.0.0.1:${API_PORT}' }\nsources:\n  devices:\n    type: http\n    listen: 127.0.0.1:9400\n    max_body: ${MAX_BODY}\nsinks:\n  out: { type: blackhole, inputs: [devices] }\n";
    let env = |name: &str| match name {
        "API_PORT" => Some("9401".to_owned()),
        "MAX_BODY" => Some("2MiB".to_owned()),
        _ => None,
    };
    let (config, _) = weir::config::load_str(&weir::CATALOGUE, "env.yaml", text, &env).unwrap();
    assert_eq!(config.globals.api.listen.port(), 9401);
}
