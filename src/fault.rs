//! Crash points for tests that must kill weir at one exact moment.
//!
//! `kill -9` from outside lands anywhere; some promises are about one precise window
//! ("a crash between writing files and committing them loses and duplicates nothing").
//! Setting `WEIR_CRASH_AT=<name>` makes the process abort, as abruptly as `kill -9`, the
//! first time it reaches the crash point of that name. Unset, a crash point costs one
//! relaxed load.

use std::sync::OnceLock;

/// Aborts the process here if `WEIR_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("WEIR_CRASH_AT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("weir: crash point `{name}` reached; aborting as WEIR_CRASH_AT asks");
        std::process::abort();
    }
}
