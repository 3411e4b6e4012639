//! Opening a buffer directory: creating it with its incarnation id, or recovering what a
//! previous run left — the ack position, the segments, and where the unacknowledged
//! records start.
//!
//! Recovery trusts nothing it has not checked: every frame of every segment at or after
//! the ack position is verified; a torn or corrupt record ends its segment there (the file
//! is cut back, the cut counted and logged at error); a file that is not a segment of a
//! format this weir reads is moved aside as `*.corrupt`; an unreadable ack position means
//! everything still on disk is delivered again (at least once, never lost).
//!
//! Sequence numbers are never given out twice within an incarnation, even when recovery
//! throws records away. The records after a cut (or in a segment moved aside) were durable
//! once, so a sink may have committed them and recorded their positions (a Delta commit's
//! `txn` version): were the next appends numbered from the cut, that sink would take them
//! for records it already holds and skip them. So recovery bounds the sequence numbers the
//! unreadable bytes can have held (a frame is at least [`MIN_FRAME`] bytes) and makes the
//! next segment at once past that bound, an empty one whose name keeps the mark on disk
//! until something is appended to it. The sequence numbers in between belong to no record;
//! the reader steps over them as over any gap.

use std::collections::VecDeque;
use std::path::Path;

use super::format::{FRAME_LEN, HEADER_LEN};
use super::{ReadPos, SegmentInfo, ack, segment};
use crate::telemetry::events::BufferRecordsCorrupted;
use crate::telemetry::{ComponentTelemetry, InternalEvent, SinkBufferMetrics};

const INCARNATION_FILE: &str = "incarnation";

/// The smallest frame: its length and checksum, and a payload of at least one byte.
const MIN_FRAME: u64 = FRAME_LEN as u64 + 1;

/// How many records `bytes` of frames can have held at most.
fn most_records(bytes: u64) -> u64 {
    bytes / MIN_FRAME
}

/// What a start found on disk.
#[derive(Debug)]
pub struct Recovered {
    pub incarnation: String,
    pub segments: VecDeque<SegmentInfo>,
    pub bytes: u64,
    /// Everything below is acknowledged (as far as the ack file knew).
    pub position: u64,
    /// Where the first unacknowledged record is.
    pub start: ReadPos,
    /// The sequence number of the first unacknowledged record (`position`, or the first
    /// record after a gap).
    pub start_seq: u64,
    pub next_seq: u64,
    /// Unacknowledged records.
    pub events: u64,
}

/// Creates `dir` (with a new incarnation id) or recovers it.
pub fn open(
    dir: &Path,
    metrics: &SinkBufferMetrics,
    telemetry: &ComponentTelemetry,
) -> std::io::Result<Recovered> {
    let incarnation = incarnation(dir)?;
    let position = match ack::read_position(dir)? {
        Ok(position) => position.unwrap_or(0),
        Err(problem) => {
            BufferRecordsCorrupted {
                records: 0,
                buffer: metrics,
                message: &format!("{problem}; delivering everything still in the buffer again"),
            }
            .emit(telemetry);
            0
        }
    };
    let mut segments = VecDeque::new();
    let mut start = None;
    let mut events = 0;
    // One past every sequence number a record read or thrown away here may have had.
    let mut assigned = position;
    for (first, path) in segment::list(dir)? {
        let scan = match segment::scan(&path, position)? {
            Ok(scan) => scan,
            Err(err) => {
                // Named by its first record (the writer names them so); its bytes bound
                // how many followed.
                let len = std::fs::metadata(&path)?.len();
                assigned =
                    assigned.max(first + most_records(len.saturating_sub(HEADER_LEN as u64)));
                let mut aside = path.clone().into_os_string();
                aside.push(".corrupt");
                std::fs::rename(&path, &aside)?;
                BufferRecordsCorrupted {
                    records: 1,
                    buffer: metrics,
                    message: &format!(
                        "{} is unusable ({err}); moved aside as *.corrupt",
                        path.display()
                    ),
                }
                .emit(telemetry);
                continue;
            }
        };
        if scan.first_seq != first {
            tracing::warn!(segment = %path.display(), header = scan.first_seq, "segment name and header disagree; the header wins");
        }
        assigned = assigned.max(scan.end_seq());
        if let Some((err, bytes)) = &scan.bad_tail {
            // A torn tail was never durable, so never handed out; but a flipped bit in a
            // length looks torn too, so every cut counts as if records followed.
            assigned = assigned.max(scan.end_seq() + most_records(*bytes));
            segment::truncate(&path, scan.len)?;
            BufferRecordsCorrupted {
                records: 1,
                buffer: metrics,
                message: &format!(
                    "{}: record {} is bad ({err}); cut off {bytes} bytes from there",
                    path.display(),
                    scan.end_seq()
                ),
            }
            .emit(telemetry);
        }
        if scan.end_seq() <= position {
            // Every record in it is acknowledged.
            std::fs::remove_file(&path)?;
            continue;
        }
        if start.is_none() {
            start = Some(match scan.from_offset {
                Some(offset) => (
                    ReadPos {
                        segment: scan.first_seq,
                        offset,
                    },
                    position,
                ),
                None => (
                    ReadPos {
                        segment: scan.first_seq,
                        offset: HEADER_LEN as u64,
                    },
                    scan.first_seq.max(position),
                ),
            });
        }
        events += scan.end_seq() - scan.first_seq.max(position);
        segments.push_back(SegmentInfo {
            first_seq: scan.first_seq,
            end_seq: scan.end_seq(),
            len: scan.len,
        });
    }
    let next_seq = segments
        .back()
        .map_or(position, |s| s.end_seq.max(position));
    let next_seq = match assigned > next_seq {
        true => {
            // Records were thrown away past the end of what is left: mark the first
            // number no record can have had by making its segment now (see the top).
            segment::create(dir, assigned)?;
            segments.push_back(SegmentInfo {
                first_seq: assigned,
                end_seq: assigned,
                len: HEADER_LEN as u64,
            });
            assigned
        }
        false => next_seq,
    };
    segment::sync_dir(dir)?;
    let (start, start_seq) = start.unwrap_or((
        ReadPos {
            segment: next_seq,
            offset: HEADER_LEN as u64,
        },
        next_seq,
    ));
    Ok(Recovered {
        incarnation,
        bytes: segments.iter().map(|s| s.len).sum(),
        segments,
        position,
        start,
        start_seq,
        next_seq,
        events,
    })
}

/// The directory's incarnation id, creating the directory with a new one if it is absent.
/// The directory appears whole (by a rename) or not at all.
fn incarnation(dir: &Path) -> std::io::Result<String> {
    let file = dir.join(INCARNATION_FILE);
    match std::fs::read_to_string(&file) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let id = format!("{:032x}", rand::random::<u128>());
    if dir.exists() {
        // A directory without an id (made by hand, or its id lost): give it a new one, so
        // positions recorded against an old id are never taken for this buffer's.
        write_durably(&file, &id)?;
        segment::sync_dir(dir)?;
        return Ok(id);
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp)?;
    write_durably(&tmp.join(INCARNATION_FILE), &id)?;
    segment::sync_dir(&tmp)?;
    std::fs::rename(&tmp, dir)?;
    segment::sync_dir(parent)?;
    Ok(id)
}

fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
