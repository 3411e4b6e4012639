//! `file`: appends events to a local file as NDJSON, rotating by size.
//!
//! The active file keeps its configured name so `tail -f` works; when it would grow past
//! `rotate_bytes` it is renamed to `<path>.1`, `<path>.2`, ... (highest is newest) and a new
//! one is started. A failed write is retried with backoff rather than dropped: the sink
//! stalls, backpressure holds the sources, and nothing is lost. The retry first cuts the
//! file back to the end of the last complete write, and opening the file cuts off a last
//! line without its newline (a crash mid-write), so no line is ever torn or doubled.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

use super::{SinkComponent, SinkContext, TextFormat};
use crate::config::{ByteSize, FieldProblem, Resource};
use crate::telemetry::events::{BytesSent, ComponentError, ErrorType, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
use crate::topology::ComponentTask;

/// Appends events to `path`, one per line.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file to append to; parent directories are created.
    pub path: PathBuf,
    /// Rotate when the file would grow past this size (e.g. `64MiB`); default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_bytes: Option<ByteSize>,
    /// Call fsync after every batch, so a written batch survives a power loss.
    #[serde(default)]
    pub fsync: bool,
    #[serde(default)]
    pub format: TextFormat,
}

impl SinkComponent for FileConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push(FieldProblem::at(["path"], "expected a file path"));
        }
        if self.rotate_bytes.is_some_and(|size| size.get() == 0) {
            problems.push(FieldProblem::at(
                ["rotate_bytes"],
                "expected a size above zero",
            ));
        }
        problems
    }

    fn resources(&self) -> Vec<Resource> {
        vec![Resource::File(self.path.clone())]
    }

    fn build(&self, cx: SinkContext) -> anyhow::Result<ComponentTask> {
        let config = self.clone();
        let SinkContext {
            mut input,
            telemetry,
            ..
        } = cx;
        Ok(Box::pin(async move {
            let mut writer = RotatingFile::open(config.path.clone(), config.rotate_bytes).await?;
            let sent = telemetry.sent_events("default");
            let mut buffer = Vec::with_capacity(64 * 1024);
            while let Some(batch) = input.recv().await {
                buffer.clear();
                for event in &batch.events {
                    // Encoding a JSON value into memory cannot fail for finite numbers.
                    let _ = config.format.write(event, &mut buffer);
                }
                write_with_retry(&mut writer, &buffer, config.fsync, &telemetry).await;
                sent.inc_by(batch.len() as u64);
                BytesSent {
                    bytes: buffer.len(),
                }
                .emit(&telemetry);
            }
            writer.close().await?;
            Ok(())
        }))
    }
}

/// Writes `bytes`, retrying with exponential backoff until the write succeeds.
async fn write_with_retry(
    writer: &mut RotatingFile,
    bytes: &[u8],
    fsync: bool,
    telemetry: &ComponentTelemetry,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match writer.write(bytes, fsync).await {
            Ok(()) => return,
            Err(err) => {
                let message = format!(
                    "cannot write {}: {err}; retrying in {backoff:?}",
                    writer.path.display()
                );
                ComponentError {
                    error_type: ErrorType::Io,
                    stage: Stage::Sending,
                    message: &message,
                    count: 1,
                }
                .emit(telemetry);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                writer.reopen().await;
            }
        }
    }
}

struct RotatingFile {
    path: PathBuf,
    rotate_bytes: Option<u64>,
    file: Option<File>,
    /// Bytes of the active file that are whole lines from complete writes.
    size: u64,
    /// A write failed part-way: what follows `size` may be a torn or partial batch, to be
    /// cut off before the retry (so the retry neither tears nor doubles a line).
    dirty: bool,
    next_index: u64,
}

impl RotatingFile {
    async fn open(path: PathBuf, rotate_bytes: Option<ByteSize>) -> std::io::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await?;
        }
        let next_index = highest_rotation(&path).await + 1;
        let mut this = Self {
            path,
            rotate_bytes: rotate_bytes.map(ByteSize::get),
            file: None,
            size: 0,
            dirty: false,
            next_index,
        };
        this.open_active().await?;
        Ok(this)
    }

    /// Opens the active file for appending and cuts off what is not known good: after a
    /// failed write, everything past the last complete write; otherwise (a crash mid-write
    /// in an earlier run) a last line without its newline, whose events were never
    /// acknowledged and will be delivered again.
    async fn open_active(&mut self) -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .await?;
        let len = file.metadata().await?.len();
        let good = match self.dirty {
            true => self.size.min(len),
            false => end_of_last_line(&mut file, len).await?,
        };
        if good < len {
            file.set_len(good).await?;
            file.sync_data().await?;
            tracing::warn!(
                path = %self.path.display(),
                bytes = len - good,
                "cut off a partial write at the end of the file"
            );
        }
        self.size = good;
        self.dirty = false;
        self.file = Some(file);
        Ok(())
    }

    async fn reopen(&mut self) {
        self.file = None;
        let _ = self.open_active().await;
    }

    async fn write(&mut self, bytes: &[u8], fsync: bool) -> std::io::Result<()> {
        if self.dirty {
            self.file = None;
        }
        let written = self.write_whole(bytes, fsync).await;
        if written.is_err() {
            self.dirty = true;
        }
        written
    }

    async fn write_whole(&mut self, bytes: &[u8], fsync: bool) -> std::io::Result<()> {
        if self.file.is_none() {
            self.open_active().await?;
        }
        if let Some(limit) = self.rotate_bytes
            && self.size > 0
            && self.size + bytes.len() as u64 > limit
        {
            self.rotate().await?;
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                self.open_active().await?;
                self.file
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("file not open"))?
            }
        };
        file.write_all(bytes).await?;
        // tokio's File finishes writes in the background; flush waits for them.
        file.flush().await?;
        if fsync {
            file.sync_data().await?;
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush().await?;
            file.sync_all().await?;
        }
        let rotated = rotated_name(&self.path, self.next_index);
        tokio::fs::rename(&self.path, &rotated).await?;
        self.next_index += 1;
        self.open_active().await
    }

    async fn close(mut self) -> std::io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush().await?;
            file.sync_all().await?;
        }
        Ok(())
    }
}

/// Where the last complete line of `file` (of `len` bytes) ends: `len` when the file ends
/// with a newline (or is empty, or its last 64 KiB hold no newline at all: a line that long
/// is left alone).
async fn end_of_last_line(file: &mut File, len: u64) -> std::io::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    const TAIL: u64 = 64 * 1024;
    if len == 0 {
        return Ok(0);
    }
    let start = len.saturating_sub(TAIL);
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut tail).await?;
    Ok(match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => start + i as u64 + 1,
        None if start == 0 => 0,
        None => len,
    })
}

fn rotated_name(path: &Path, index: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// The highest `N` among existing `<path>.N` files, so a restart continues the sequence.
async fn highest_rotation(path: &Path) -> u64 {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return 0;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return 0;
    };
    let prefix = format!("{stem}.");
    let mut highest = 0;
    while let Ok(Some(entry)) = entries.next_entry().await {
        if let Some(index) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok())
        {
            highest = highest.max(index);
        }
    }
    highest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Tmpfs;

    fn lines(range: std::ops::Range<usize>) -> Vec<u8> {
        range
            .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
            .collect()
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_without_a_torn_or_doubled_line() {
        let disk = Tmpfs::mount("64k");
        let path = disk.dir.path().join("out.ndjson");
        let filler = disk.dir.path().join("filler");
        let mut file = RotatingFile::open(path.clone(), None).await.unwrap();
        file.write(&lines(0..10), true).await.unwrap();
        // Leave less room than the next batch needs: it is written in part, then fails.
        let room = 16 * 1024;
        std::fs::write(&filler, vec![0u8; 64 * 1024 - room - 4096]).unwrap();
        let batch = lines(10..3000);
        assert!(batch.len() > room);
        assert!(file.write(&batch, true).await.is_err(), "the disk is full");
        std::fs::remove_file(&filler).unwrap();
        file.reopen().await;
        file.write(&batch, true).await.unwrap();
        file.close().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), lines(0..3000));
    }

    #[tokio::test]
    async fn a_partial_last_line_from_a_crash_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let mut torn = lines(0..3);
        torn.extend_from_slice(b"{\"i\":3");
        std::fs::write(&path, &torn).unwrap();
        let mut file = RotatingFile::open(path.clone(), None).await.unwrap();
        file.write(&lines(3..5), false).await.unwrap();
        file.close().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), lines(0..5));
    }
}
