//! The command line: exit codes and output of `validate`, `graph` and `schema`.

use std::process::Command;

fn weir(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .expect("run weir")
}

#[test]
fn validate_reports_every_error_with_position_and_fails() {
    let out = weir(&["validate", "tests/fixtures/invalid/several_errors.yaml"]);
    assert_eq!(
        out.status.code(),
        Some(78),
        "invalid config exits with EX_CONFIG"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr
            .matches("error: tests/fixtures/invalid/several_errors.yaml:")
            .count(),
        5,
        "{stderr}"
    );
    assert!(stderr.contains("5 errors"), "{stderr}");
}

#[test]
fn validate_accepts_a_directory_of_pipelines() {
    let out = weir(&["validate", "pipelines"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("valid: "));
}

#[test]
fn run_refuses_an_invalid_pipeline_before_starting_anything() {
    let out = weir(&["run", "tests/fixtures/invalid/port_conflict.yaml"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already used by"));
}

#[test]
fn graph_renders_dot_and_mermaid() {
    let dot = weir(&["graph", "pipelines/quickstart.yaml"]);
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(dot.starts_with("digraph weir {"), "{dot}");
    assert!(
        dot.contains("\"by_heat\" -> \"hot\" [label=\"hot\"];"),
        "{dot}"
    );
    let mermaid = weir(&["graph", "--format", "mermaid", "pipelines/quickstart.yaml"]);
    let mermaid = String::from_utf8_lossy(&mermaid.stdout);
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    assert!(mermaid.contains("  fleet --> shaped"), "{mermaid}");
}

#[test]
fn schema_is_json_with_every_section() {
    let out = weir(&["schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("schema is JSON");
    for section in ["sources", "transforms", "aggregators", "sinks", "actions"] {
        assert!(schema["properties"][section].is_object(), "{section}");
    }
    let sources = schema["properties"]["sources"]["additionalProperties"]["oneOf"]
        .as_array()
        .unwrap();
    assert!(
        sources
            .iter()
            .any(|s| s["properties"]["type"]["const"] == "http")
    );
}
