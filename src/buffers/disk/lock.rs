//! Holding a buffer directory exclusively.
//!
//! A reload builds a sink's new instance while the old one still drains into the same
//! directory, and two weir processes may be pointed at one `data_dir` by mistake. The
//! [`DirLock`] makes the second opener wait: inside the process on an async mutex per
//! directory (so the new instance starts right after the old one let go), across processes
//! on an advisory `flock` of `<dir>.lock`. Every part of a running buffer (writer, reader,
//! acknowledger) holds an `Arc` of it, so the directory is free only when all are done.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

/// The exclusive hold of one buffer directory; released on drop.
pub struct DirLock {
    _file: File,
    _guard: OwnedMutexGuard<()>,
}

fn in_process(dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = Mutex::new(None);
    let key = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut locks = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(
        locks
            .get_or_insert_with(HashMap::new)
            .entry(key)
            .or_default(),
    )
}

/// Waits until `dir` is free, then holds it. `on_busy` is called (once per wait) when
/// another process holds it.
pub async fn acquire(dir: &Path, mut on_busy: impl FnMut(&str)) -> std::io::Result<DirLock> {
    let guard = in_process(dir).lock_owned().await;
    let mut name = dir.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => {
                return Ok(DirLock {
                    _file: file,
                    _guard: guard,
                });
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                if !told {
                    on_busy(&format!(
                        "{} is locked by another process (two weir instances on one data_dir?); waiting",
                        path.display()
                    ));
                    told = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffers").join("s");
        let first = acquire(&path, |_| {}).await.unwrap();
        let second = tokio::spawn({
            let path = path.clone();
            async move { acquire(&path, |_| {}).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the directory is held");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second holder got it")
            .unwrap()
            .unwrap();
    }
}
