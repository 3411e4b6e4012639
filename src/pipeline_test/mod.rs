//! `weir test`: unit tests written beside a pipeline, run through its real transforms and
//! aggregators.
//!
//! A pipeline's tests are its `tests:` list and that of `<name>.test.yaml` beside it (the
//! language is [`crate::config::unit_test`]). [`suite`] finds them and resolves what they
//! name, [`harness`] runs each one through a [`RunningTopology`] whose sources and sinks
//! are replaced by the test's inputs and outputs, [`verdict`] judges what came out, and
//! [`junit`] writes the report CI reads. The exit status is 0 when every test passed, 1
//! when one failed or could not run, 78 when a pipeline or test file is invalid.
//!
//! [`RunningTopology`]: crate::topology::RunningTopology

mod events;
mod harness;
mod junit;
mod suite;
mod verdict;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Location;

/// Exit code for invalid pipeline or test files (as `weir validate`: `EX_CONFIG`).
const EXIT_CONFIG: u8 = 78;

/// `weir test`'s arguments.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Pipeline files or directories; each pipeline file is tested on its own, with its
    /// `tests:` and its `<name>.test.yaml`.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Also write a JUnit XML report to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Test all the files given as one topology, merged as `weir validate` reads them.
    #[arg(long)]
    pub merge: bool,
}

/// How one test ended.
pub struct Outcome {
    pub suite: String,
    pub name: String,
    pub location: Location,
    pub elapsed: Duration,
    pub verdict: Verdict,
}

pub enum Verdict {
    Passed,
    /// Assertions that failed, one paragraph each.
    Failed(Vec<String>),
    /// The test could not run to the end: why.
    Broken(String),
}

impl Verdict {
    fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_))
    }

    fn is_error(&self) -> bool {
        matches!(self, Self::Broken(_))
    }
}

/// Runs `weir test`.
pub fn main(args: TestArgs) -> ExitCode {
    let (suites, diagnostics) = suite::load(&args.paths, args.merge);
    if diagnostics.has_errors() {
        eprintln!("{diagnostics}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let total: usize = suites.iter().map(|s| s.tests.len()).sum();
    if total == 0 {
        let paths: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "error: no tests in {}: add `tests:` to a pipeline, or a `<name>.test.yaml` beside it",
            paths.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir-test")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = runtime.block_on(run_all(&suites));
    print_failures(&outcomes);
    let failed = outcomes
        .iter()
        .filter(|o| !matches!(o.verdict, Verdict::Passed))
        .count();
    println!(
        "\nresult: {}. {} passed, {failed} failed ({} pipeline{})",
        if failed == 0 { "ok" } else { "FAILED" },
        outcomes.len() - failed,
        suites.len(),
        if suites.len() == 1 { "" } else { "s" }
    );
    if let Some(path) = &args.junit
        && let Err(err) = std::fs::write(path, junit::report(&outcomes))
    {
        eprintln!(
            "error: cannot write the JUnit report to {}: {err}",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    match failed {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

async fn run_all(suites: &[suite::Suite]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for suite in suites.iter().filter(|s| !s.tests.is_empty()) {
        println!(
            "{}: {} test{}",
            suite.name,
            suite.tests.len(),
            if suite.tests.len() == 1 { "" } else { "s" }
        );
        for test in &suite.tests {
            let started = Instant::now();
            let verdict = match harness::run(&suite.config, test).await {
                harness::Run::Broken(why) => Verdict::Broken(why),
                harness::Run::Drained(taken) => match verdict::judge(test, &taken) {
                    failures if failures.is_empty() => Verdict::Passed,
                    failures => Verdict::Failed(failures),
                },
            };
            let elapsed = started.elapsed();
            let word = match verdict {
                Verdict::Passed => "ok",
                Verdict::Failed(_) => "FAILED",
                Verdict::Broken(_) => "ERROR",
            };
            println!("  {} ... {word} ({} ms)", test.name, elapsed.as_millis());
            outcomes.push(Outcome {
                suite: suite.name.clone(),
                name: test.name.clone(),
                location: test.location.clone(),
                elapsed,
                verdict,
            });
        }
    }
    outcomes
}

fn print_failures(outcomes: &[Outcome]) {
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !matches!(o.verdict, Verdict::Passed))
        .collect();
    if failed.is_empty() {
        return;
    }
    println!("\nfailures:");
    for outcome in failed {
        println!(
            "\n--- {}: test `{}` ({})",
            outcome.suite, outcome.name, outcome.location
        );
        match &outcome.verdict {
            Verdict::Failed(failures) => {
                for failure in failures {
                    println!("{failure}");
                }
            }
            Verdict::Broken(why) => println!("could not run: {why}"),
            Verdict::Passed => {}
        }
    }
}
