//! Segment files: naming, creating, and scanning one on start.
//!
//! A buffer's log is a run of segment files, `<first sequence number, 20 digits>.seg`, each
//! a header and frames (see [`super::format`]). The writer appends to the last one and
//! starts a new one when it is full; the acknowledger deletes a segment once every record
//! in it is acknowledged. Scanning is how a start finds where each segment's good records
//! end: the first frame that is torn or fails its checksum ends the segment, and
//! everything from there is cut off (and counted by the caller).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::format::{self, FRAME_LEN, FormatError, HEADER_LEN, SegmentHeader};

const SUFFIX: &str = ".seg";

/// The file name of the segment whose first record is `first_seq`.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

pub fn path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(file_name(first_seq))
}

/// The segments in `dir`, by first sequence number.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((first, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// Creates (or empties, if a failed attempt left it) the segment starting at `first_seq`,
/// with its header durable and its name in the directory durable.
pub fn create(dir: &Path, first_seq: u64) -> std::io::Result<File> {
    let mut file = File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(path(dir, first_seq))?;
    file.write_all(&SegmentHeader { first_seq }.encode())?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes the directory's entries (a created, renamed or deleted file) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What a scan found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub first_seq: u64,
    /// Good records.
    pub records: u64,
    /// Bytes up to the end of the last good record (header included).
    pub len: u64,
    /// Where the record numbered `from` starts (when the segment holds it).
    pub from_offset: Option<u64>,
    /// Why the segment ended before the end of the file, and how many bytes follow.
    pub bad_tail: Option<(FormatError, u64)>,
}

impl Scan {
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.records
    }
}

/// Reads a segment front to back, checking every frame; notes where record `from` starts.
/// `Ok(Err(_))`: the header is unusable (not a segment, a format this weir cannot read).
pub fn scan(path: &Path, from: u64) -> std::io::Result<Result<Scan, FormatError>> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN];
    if let Err(err) = reader.read_exact(&mut header) {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => Ok(Err(FormatError::Torn)),
            _ => Err(err),
        };
    }
    let header = match SegmentHeader::decode(&header) {
        Ok(header) => header,
        Err(err) => return Ok(Err(err)),
    };
    let mut scan = Scan {
        first_seq: header.first_seq,
        records: 0,
        len: HEADER_LEN as u64,
        from_offset: None,
        bad_tail: None,
    };
    let mut frame = Vec::new();
    loop {
        if scan.first_seq + scan.records == from {
            scan.from_offset = Some(scan.len);
        }
        let left = file_len - scan.len;
        if left == 0 {
            break;
        }
        let mut head = [0u8; FRAME_LEN];
        let checked = match read_up_to(&mut reader, &mut head)? {
            n if n < FRAME_LEN => Err(FormatError::Torn),
            _ => {
                let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                if len == 0 || len > format::MAX_RECORD || (len + FRAME_LEN) as u64 > left {
                    Err(match (len + FRAME_LEN) as u64 > left {
                        true => FormatError::Torn,
                        false => FormatError::Length(len),
                    })
                } else {
                    frame.clear();
                    frame.extend_from_slice(&head);
                    frame.resize(FRAME_LEN + len, 0);
                    reader.read_exact(&mut frame[FRAME_LEN..])?;
                    format::read_frame(&frame).map(|(_, n)| n)
                }
            }
        };
        match checked {
            Ok(n) => {
                scan.records += 1;
                scan.len += n as u64;
            }
            Err(err) => {
                scan.bad_tail = Some((err, left));
                break;
            }
        }
    }
    Ok(Ok(scan))
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Cuts a segment back to `len` bytes, durably.
pub fn truncate(path: &Path, len: u64) -> std::io::Result<()> {
    let file = File::options().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::tests::batch;

    fn segment_with(dir: &Path, first: u64, events: usize) -> (PathBuf, Vec<u64>) {
        let mut file = create(dir, first).unwrap();
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for event in batch(0..events as i64) {
            format::write_frame(&event, &mut bytes);
            ends.push((HEADER_LEN + bytes.len()) as u64);
        }
        file.write_all(&bytes).unwrap();
        (path(dir, first), ends)
    }

    #[test]
    fn names_sort_by_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        for first in [100, 7, 20_000] {
            create(dir.path(), first).unwrap();
        }
        std::fs::write(dir.path().join("ack"), b"x").unwrap();
        let firsts: Vec<u64> = list(dir.path()).unwrap().into_iter().map(|s| s.0).collect();
        assert_eq!(firsts, vec![7, 100, 20_000]);
    }

    #[test]
    fn a_scan_counts_records_and_finds_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = segment_with(dir.path(), 10, 5);
        let scan = scan(&path, 12).unwrap().unwrap();
        assert_eq!(scan.records, 5);
        assert_eq!(scan.end_seq(), 15);
        assert_eq!(scan.len, ends[4]);
        assert_eq!(scan.from_offset, Some(ends[1]));
        assert_eq!(scan.bad_tail, None);
    }

    #[test]
    fn a_segment_cut_mid_record_ends_at_the_last_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = segment_with(dir.path(), 0, 5);
        for cut in [ends[3] + 1, ends[3] + 5, ends[4] - 1] {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let scan = scan(&path, 0).unwrap().unwrap();
            assert_eq!(scan.records, 4, "cut at {cut}");
            assert_eq!(scan.len, ends[3]);
            assert_eq!(scan.bad_tail, Some((FormatError::Torn, cut - ends[3])));
        }
    }

    #[test]
    fn a_corrupt_record_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = segment_with(dir.path(), 0, 5);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[ends[1] as usize + FRAME_LEN + 2] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let scan = scan(&path, 0).unwrap().unwrap();
        assert_eq!(scan.records, 2);
        assert_eq!(
            scan.bad_tail,
            Some((FormatError::Checksum, ends[4] - ends[1]))
        );
    }

    #[test]
    fn a_foreign_file_is_not_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(0));
        std::fs::write(&path, b"hello").unwrap();
        assert_eq!(scan(&path, 0).unwrap(), Err(FormatError::Torn));
        std::fs::write(&path, [7u8; 64]).unwrap();
        assert_eq!(scan(&path, 0).unwrap(), Err(FormatError::Magic));
    }
}
