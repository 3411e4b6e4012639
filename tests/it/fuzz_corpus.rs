//! The fuzzers' committed corpora (`fuzz/corpus/<target>/`), replayed through the same entry
//! points the fuzz targets call (`weir::fuzzing`), on the stable toolchain: every input a
//! fuzzer once found interesting, including each crash it found (kept after the fix), must
//! still go through without a panic. CI has no nightly; this is how it catches a regression.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

/// Far above what any corpus input takes (milliseconds): a hang is a failure too.
const PER_INPUT: Duration = Duration::from_secs(5);

#[test]
fn every_corpus_input_goes_through_every_target_without_a_panic_or_a_hang() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failures = Vec::new();
    for (name, target) in weir::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("corpus {}: {err}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "corpus {} is empty", dir.display());
        for file in &files {
            let input = std::fs::read(file).expect("corpus file");
            let started = Instant::now();
            if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
                failures.push(format!("{name}: {} panicked", file.display()));
            } else if started.elapsed() > PER_INPUT {
                failures.push(format!(
                    "{name}: {} took {:?}",
                    file.display(),
                    started.elapsed()
                ));
            }
        }
        eprintln!("{name}: {} inputs replayed", files.len());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fuzz_target_has_a_corpus_and_an_entry_point() {
    // A target added to fuzz/ without one in weir::fuzzing (or the other way round) would
    // never be replayed here.
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut on_disk: Vec<String> = std::fs::read_dir(&fuzz)
        .expect("fuzz/fuzz_targets")
        .map(|entry| {
            let path = entry.expect("entry").path();
            path.file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = weir::fuzzing::TARGETS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    known.sort();
    assert_eq!(on_disk, known);
}
