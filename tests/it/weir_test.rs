//! `weir test` through the real binary: a passing and a failing test of each kind of
//! assertion (`conditions`, `expect`, `count`, `no_outputs_from`), the failure texts, the
//! exit status, the JUnit report read back with an XML parser, and mistakes in a test named
//! by file, line and test.

use std::path::Path;
use std::process::{Command, Output};

use quick_xml::events::Event as Xml;

/// A pipeline with a filter, a route and a tumbling window; its source and sink never run
/// under `weir test`.
const PIPELINE: &str = "sources:
  readings: { type: http, listen: '127.0.0.1:9' }
transforms:
  valid: { type: filter, inputs: [readings], condition: 'temperature is number and temperature < 200' }
  split: { type: route, inputs: [valid], routes: { hot: 'temperature > 90' } }
aggregators:
  minute: { type: tumbling, inputs: [valid], size: 1m, aggregates: { n: count(), top: max(temperature) } }
sinks:
  out: { type: blackhole, inputs: [minute, split.hot, split._unmatched] }
";

/// One test per kind of assertion; `fail` turns each into one that must fail.
fn tests(fail: bool) -> String {
    let at = |s: u32| format!("{{ event_time: '2026-01-01T00:00:{s:02}Z' }}");
    let (first, second) = if fail { (95, 50) } else { (50, 95) };
    let condition = if fail {
        "temperature > 90"
    } else {
        "temperature < 200"
    };
    let n = if fail { 3 } else { 2 };
    let count = if fail { 2 } else { 1 };
    let silent = if fail { "split.hot" } else { "valid" };
    format!(
        "tests:
  - name: conditions
    inputs:
      - insert_at: valid
        events:
          - {{ device_id: d1, temperature: {first}, meta: {t10} }}
          - {{ device_id: d1, temperature: {second}, meta: {t30} }}
    outputs:
      - extract_from: valid
        conditions: ['{condition}', \"device_id == 'd1'\"]
  - name: expect
    inputs:
      - insert_at: minute
        events:
          - {{ device_id: d1, temperature: 70, meta: {t10} }}
          - {{ device_id: d1, temperature: 80, meta: {t30} }}
    outputs:
      - extract_from: minute
        expect:
          - {{ device_id: d1, n: {n}, top: 80, window_start: '2026-01-01T00:00:00Z', window_end: '2026-01-01T00:01:00Z' }}
  - name: count
    inputs:
      - insert_at: split
        events:
          - {{ device_id: d1, temperature: 95, meta: {t10} }}
          - {{ device_id: d2, temperature: 20, meta: {t10} }}
    outputs:
      - extract_from: split.hot
        count: {count}
  - name: no outputs
    inputs:
      - insert_at: valid
        value: {{ device_id: d3, temperature: {hot}, meta: {t10} }}
    no_outputs_from: [{silent}]
",
        t10 = at(10),
        t30 = at(30),
        hot = if fail { 120 } else { 300 },
    )
}

/// Writes `dir/p.yaml` and `dir/p.test.yaml` and runs `weir test dir/p.yaml` with `args`.
fn run_tests(dir: &Path, tests: &str, args: &[&str]) -> (Output, String) {
    std::fs::write(dir.join("p.yaml"), PIPELINE).expect("write the pipeline");
    std::fs::write(dir.join("p.test.yaml"), tests).expect("write the tests");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("test")
        .arg(dir.join("p.yaml"))
        .args(args)
        .output()
        .expect("run weir test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

#[test]
fn passing_tests_of_every_kind_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stdout) = run_tests(dir.path(), &tests(false), &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["conditions", "expect", "count", "no outputs"] {
        assert!(stdout.contains(&format!("  {name} ... ok (")), "{stdout}");
    }
    assert!(
        stdout.contains("result: ok. 4 passed, 0 failed"),
        "{stdout}"
    );
}

#[test]
fn failing_tests_of_every_kind_say_what_was_expected_and_what_came() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.xml");
    let report_arg = report.to_str().unwrap();
    let (out, stdout) = run_tests(dir.path(), &tests(true), &["--junit", report_arg]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for name in ["conditions", "expect", "count", "no outputs"] {
        assert!(
            stdout.contains(&format!("  {name} ... FAILED (")),
            "{stdout}"
        );
    }
    let file = dir.path().join("p.test.yaml");
    let file = file.display();
    // Strict conditions: the first event satisfies them, the second does not, and that
    // fails the test (Vector's conditions pass when any one event matches).
    let conditions = format!(
        "output `valid` ({file}:9:23): 1 failed condition (every event must satisfy every condition):
  event 2 of 2: condition `temperature > 90` is false
    {{\"device_id\":\"d1\",\"temperature\":50,\"meta\":{{\"event_time\":\"2026-01-01T00:00:30Z\"}}}}"
    );
    assert!(stdout.contains(&conditions), "{stdout}");
    let expect = format!(
        "output `minute` ({file}:18:23): `expect` does not match (1 expected, 1 got):
- {{\"device_id\":\"d1\",\"n\":3,\"top\":80,\"window_start\":\"2026-01-01T00:00:00Z\",\"window_end\":\"2026-01-01T00:01:00Z\"}}
    closest event got: `n` expected 3, got 2
+ {{\"device_id\":\"d1\",\"window_start\":\"2026-01-01T00:00:00Z\",\"window_end\":\"2026-01-01T00:01:00Z\",\"n\":2,\"top\":80.0,\"meta\":{{\"event_time\":\"2026-01-01T00:01:00Z\"}}}}"
    );
    assert!(stdout.contains(&expect), "{stdout}");
    let count = format!(
        "output `split.hot` ({file}:28:23): expected 2 events, got 1:
    {{\"device_id\":\"d1\",\"temperature\":95,\"meta\":{{\"event_time\":\"2026-01-01T00:00:10Z\"}}}}"
    );
    assert!(stdout.contains(&count), "{stdout}");
    let silent = "`split.hot` emitted 1 event, expected none (no_outputs_from):
    {\"device_id\":\"d3\",\"temperature\":120,\"meta\":{\"event_time\":\"2026-01-01T00:00:10Z\"}}";
    assert!(stdout.contains(silent), "{stdout}");
    assert!(
        stdout.contains("result: FAILED. 0 passed, 4 failed"),
        "{stdout}"
    );

    // The JUnit report, read back with an XML parser.
    let xml = std::fs::read_to_string(&report).expect("the JUnit report");
    let report = junit(&xml);
    assert_eq!(report.suites, 1, "{xml}");
    assert_eq!((report.tests, report.failures), (Some(4), Some(4)), "{xml}");
    let names: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["conditions", "expect", "count", "no outputs"]);
    let conditions_case = &report.cases[0];
    assert_eq!(conditions_case.line.as_deref(), Some("2"));
    assert!(
        conditions_case
            .failure
            .as_deref()
            .is_some_and(|text| text.contains("condition `temperature > 90` is false")),
        "{xml}"
    );
    assert!(report.cases.iter().all(|c| c.failure.is_some()), "{xml}");
}

#[test]
fn a_mistake_in_a_test_names_its_file_line_and_test_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tests = "tests:
  - name: typo
    inputs:
      - insert_at: vaild
        value: { temperature: 1 }
    outputs:
      - extract_from: split.cold
        count: 1
";
    let (out, stdout) = run_tests(dir.path(), tests, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stdout}{stderr}");
    let file = dir.path().join("p.test.yaml");
    let file = file.display();
    assert!(
        stderr.contains(&format!(
            "error: {file}:4:20: test `typo`: `insert_at`: `vaild` names no component (did you mean `valid`?)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "error: {file}:7:23: test `typo`: `extract_from`: `split` has no output `cold`"
        )),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "nothing ran: {stdout}");
}

/// What a JUnit report holds.
#[derive(Debug, Default)]
struct Junit {
    suites: usize,
    tests: Option<usize>,
    failures: Option<usize>,
    cases: Vec<Case>,
}

#[derive(Debug, Default)]
struct Case {
    name: String,
    line: Option<String>,
    failure: Option<String>,
}

fn junit(xml: &str) -> Junit {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut report = Junit::default();
    let mut in_failure = false;
    loop {
        match reader.read_event().expect("well-formed XML") {
            Xml::Start(tag) | Xml::Empty(tag) => {
                let attribute = |name: &str| {
                    tag.attributes()
                        .map(|a| a.expect("an attribute"))
                        .find(|a| a.key.as_ref() == name.as_bytes())
                        .map(|a| a.unescape_value().expect("text").into_owned())
                };
                match tag.name().as_ref() {
                    b"testsuites" => {
                        report.tests = attribute("tests").and_then(|t| t.parse().ok());
                        report.failures = attribute("failures").and_then(|t| t.parse().ok());
                    }
                    b"testsuite" => report.suites += 1,
                    b"testcase" => report.cases.push(Case {
                        name: attribute("name").unwrap_or_default(),
                        line: attribute("line"),
                        failure: None,
                    }),
                    b"failure" => in_failure = true,
                    _ => {}
                }
            }
            Xml::Text(text) if in_failure => {
                let text = text.decode().expect("text").into_owned();
                let text = quick_xml::escape::unescape(&text)
                    .expect("text")
                    .into_owned();
                if let Some(case) = report.cases.last_mut() {
                    case.failure.get_or_insert_default().push_str(&text);
                }
            }
            Xml::GeneralRef(reference) if in_failure => {
                let name = reference.decode().expect("a reference").into_owned();
                let text = quick_xml::escape::unescape(&format!("&{name};"))
                    .expect("a known entity")
                    .into_owned();
                if let Some(case) = report.cases.last_mut() {
                    case.failure.get_or_insert_default().push_str(&text);
                }
            }
            Xml::End(tag) if tag.name().as_ref() == b"failure" => in_failure = false,
            Xml::Eof => break,
            _ => {}
        }
    }
    report
}

#[test]
fn the_shipped_pipelines_pass_their_own_tests_alone_and_merged() {
    for args in [
        &["test", "pipelines/"][..],
        &["test", "--merge", "pipelines/"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .output()
            .expect("run weir test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // quickstart, engine-alarms and device-sessions carry tests.
        let passed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("result: ok. "))
            .and_then(|rest| rest.split(' ').next()?.parse::<usize>().ok());
        assert!(passed.is_some_and(|n| n >= 13), "{args:?}: {stdout}");
    }
}

#[test]
fn a_directory_of_pipelines_leaves_test_files_to_weir_test() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), PIPELINE).unwrap();
    // Not a pipeline (nor even YAML): `validate` and `run` never read it.
    std::fs::write(dir.path().join("p.test.yaml"), "tests: [unclosed").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("validate")
        .arg(dir.path())
        .output()
        .expect("run weir validate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("test")
        .arg(dir.path())
        .output()
        .expect("run weir test");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("p.test.yaml:2:1: invalid YAML"), "{stderr}");
}
