//! Crash points for tests that must kill weir at one exact moment.
//!
//! `kill -9` from outside lands anywhere; some promises are about one precise window
//! ("a crash between writing files and committing them loses and duplicates nothing").
//! Setting `WEIR_CRASH_AT=<name>` makes the process abort, as abruptly as `kill -9`, the
//! first time it reaches the crash point of that name. Unset, a crash point costs one
//! relaxed load.
//!
//! Only builds with the `crash-points` feature have them: the tests turn it on (weir is its
//! own dev-dependency with that feature, so `cargo test` builds the library and the binary
//! with it); in any other build, the shipped binary included, a crash point is nothing and
//! `WEIR_CRASH_AT` is ignored (`packaging/check-packages.sh` checks).

/// Aborts the process here if `WEIR_CRASH_AT` names this point.
#[cfg(feature = "crash-points")]
pub fn crash_point(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("WEIR_CRASH_AT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("weir: crash point `{name}` reached; aborting as WEIR_CRASH_AT asks");
        std::process::abort();
    }
}

/// Without the `crash-points` feature, crash points are compiled out.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}
