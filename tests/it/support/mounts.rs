//! Faults made with mounts, for tests that run as root (where `chmod` does not stop a
//! write): a directory made read-only in place ([`ReadOnly`]) and a small filesystem that
//! fills up ([`Tmpfs`]). Both undo themselves when dropped, also when the test panics, so
//! a failed test leaves no mount behind.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `dir` under a read-only bind mount of itself: every write into it fails with EROFS
/// (root included) until the guard is released or dropped.
#[must_use = "the mount is removed when the guard is dropped"]
pub struct ReadOnly {
    dir: PathBuf,
    mounted: bool,
}

impl ReadOnly {
    pub fn mount(dir: &Path) -> ReadOnly {
        let dir = dir.to_path_buf();
        run(Command::new("mount").arg("--bind").arg(&dir).arg(&dir));
        // From here on the guard removes the bind mount, even if the remount fails.
        let guard = ReadOnly { dir, mounted: true };
        run(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&guard.dir));
        guard
    }

    /// Makes the directory writable again.
    pub fn release(mut self) {
        unmount(&self.dir);
        self.mounted = false;
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.mounted {
            unmount(&self.dir);
        }
    }
}

/// A tmpfs of `size` bytes mounted on `dir` (created if absent), unmounted when dropped.
#[must_use = "the mount is removed when the guard is dropped"]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir));
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(&self.dir);
    }
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Unmounts `dir`; lazily if something still has it open (a process being killed), so
/// the mount is gone from the tree either way.
fn unmount(dir: &Path) {
    let done = Command::new("umount")
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !done {
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    }
}
