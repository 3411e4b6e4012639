//! The JUnit XML report (`weir test --junit report.xml`) CI systems read: one
//! `<testsuite>` per pipeline, one `<testcase>` per test, a `<failure>` for failed
//! assertions and an `<error>` for a test that could not run.

use std::fmt::Write;

use super::{Outcome, Verdict};

/// The report of `outcomes`, grouped by suite in the order they ran.
pub fn report(outcomes: &[Outcome]) -> String {
    let mut suites: Vec<(&str, Vec<&Outcome>)> = Vec::new();
    for outcome in outcomes {
        match suites.iter_mut().find(|(name, _)| *name == outcome.suite) {
            Some((_, list)) => list.push(outcome),
            None => suites.push((&outcome.suite, vec![outcome])),
        }
    }
    let count =
        |list: &[&Outcome], f: fn(&Verdict) -> bool| list.iter().filter(|o| f(&o.verdict)).count();
    let seconds = |list: &[&Outcome]| list.iter().map(|o| o.elapsed.as_secs_f64()).sum::<f64>();
    let all: Vec<&Outcome> = outcomes.iter().collect();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"weir test\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3}\">",
        all.len(),
        count(&all, Verdict::is_failure),
        count(&all, Verdict::is_error),
        seconds(&all)
    );
    for (name, list) in &suites {
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3}\">",
            escape(name),
            list.len(),
            count(list, Verdict::is_failure),
            count(list, Verdict::is_error),
            seconds(list)
        );
        for outcome in list {
            let _ = write!(
                xml,
                "    <testcase name=\"{}\" classname=\"{}\" file=\"{}\" line=\"{}\" time=\"{:.3}\"",
                escape(&outcome.name),
                escape(name),
                escape(&outcome.location.file.display().to_string()),
                outcome.location.line,
                outcome.elapsed.as_secs_f64()
            );
            match &outcome.verdict {
                Verdict::Passed => xml.push_str("/>\n"),
                Verdict::Failed(failures) => {
                    let text = failures.join("\n\n");
                    let _ = writeln!(
                        xml,
                        ">\n      <failure message=\"{}\" type=\"assertion\">{}</failure>\n    </testcase>",
                        escape(first_line(&text)),
                        escape(&text)
                    );
                }
                Verdict::Broken(why) => {
                    let _ = writeln!(
                        xml,
                        ">\n      <error message=\"{}\" type=\"run\">{}</error>\n    </testcase>",
                        escape(first_line(why)),
                        escape(why)
                    );
                }
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Text for XML content and attribute values; control characters XML 1.0 cannot hold are
/// dropped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline_test::{Outcome, Verdict};

    fn outcome(name: &str, verdict: Verdict) -> Outcome {
        Outcome {
            suite: "p.yaml".into(),
            name: name.into(),
            location: crate::config::Location {
                file: std::sync::Arc::from(std::path::Path::new("p.yaml")),
                line: 7,
                column: 5,
            },
            elapsed: std::time::Duration::from_millis(12),
            verdict,
        }
    }

    #[test]
    fn failures_and_errors_are_counted_apart() {
        let xml = report(&[
            outcome("fine", Verdict::Passed),
            outcome("wrong", Verdict::Failed(vec!["a\nb".into(), "c".into()])),
            outcome("stuck", Verdict::Broken("did not drain".into())),
        ]);
        assert!(
            xml.contains("<testsuites name=\"weir test\" tests=\"3\" failures=\"1\" errors=\"1\" time=\"0.036\">"),
            "{xml}"
        );
        assert!(
            xml.contains("<testcase name=\"fine\" classname=\"p.yaml\" file=\"p.yaml\" line=\"7\" time=\"0.012\"/>"),
            "{xml}"
        );
        assert!(
            xml.contains("<failure message=\"a\" type=\"assertion\">a\nb\n\nc</failure>"),
            "{xml}"
        );
        assert!(
            xml.contains("<error message=\"did not drain\" type=\"run\">did not drain</error>"),
            "{xml}"
        );
    }

    #[test]
    fn markup_in_names_and_messages_is_escaped() {
        assert_eq!(
            escape("a < b && \"c\"\u{1}"),
            "a &lt; b &amp;&amp; &quot;c&quot;"
        );
    }
}
