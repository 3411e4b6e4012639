//! Programs the tests run that the machine may lack (Azurite, schemathesis), installed on
//! first use under `$HOME/.cache/weir-test-tools` from their registries (npm, PyPI), under
//! a file lock so that two tests (or two test processes) never install at once. A failed
//! install fails the test: it never skips.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// schemathesis, pinned: its checks and its command line change between releases.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// `prefix/bin` (e.g. `node_modules/.bin/azurite-blob`) under the tools' prefix, after
/// `install(prefix)` if it is not there yet.
pub fn installed(bin: &str, install: impl FnOnce(&Path)) -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let prefix = Path::new(&home).join(".cache/weir-test-tools");
    let bin = prefix.join(bin);
    std::fs::create_dir_all(&prefix)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", prefix.display()));
    // Another test process may be installing right now: wait for it.
    let lock = std::fs::File::create(prefix.join(".install.lock")).expect("the install lock");
    // SAFETY: flock(2) on a descriptor we own; released when `lock` is closed.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0, "cannot lock {}", prefix.display());
    if !bin.exists() {
        install(&prefix);
    }
    assert!(bin.exists(), "the install left no {}", bin.display());
    drop(lock);
    bin
}

/// The `schemathesis` executable, in a virtual environment of its own.
pub fn schemathesis() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let venv = SCHEMATHESIS.replace("==", "-");
        installed(&format!("{venv}/bin/schemathesis"), |prefix| {
            let venv = prefix.join(&venv);
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            run(Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(SCHEMATHESIS));
        })
    })
}

/// Runs `command`, failing the test with its stderr if it fails.
pub fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
