//! The alarm event journal: one JSON line per state change, appended and fsync'd before
//! the event counts as recorded, so that `kill -9` or a power cut loses no completed
//! event. A line cut short by a crash is detected when the journal is reopened, reported,
//! and truncated away before new events are appended.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use oodmon_protocol::{AlarmState, Reason};
use serde::{Deserialize, Serialize};

/// One journalled state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub state: String,
    pub reason: String,
    /// Score of the frame that caused the change (`null` when none did).
    pub score: Option<f64>,
    /// Frame sequence number at the change (`null` before the first frame).
    pub frame: Option<u64>,
    /// Journal sequence number, +1 per event across restarts.
    pub sequence: u64,
}

impl JournalEvent {
    pub fn new(
        time_ms: u64,
        state: AlarmState,
        reason: Reason,
        score: f64,
        frame: Option<u64>,
        sequence: u64,
    ) -> Self {
        Self {
            time_ms,
            state: state.name().into(),
            reason: reason.name().into(),
            score: score.is_finite().then_some(score),
            frame,
            sequence,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "journal {path}, line {line}: not a journal event ({problem}); refusing to append to it"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// What reopening found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// Complete events already in the journal.
    pub events: usize,
    /// Bytes of a torn last line that were cut off.
    pub torn_bytes: usize,
    pub last_sequence: Option<u64>,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    next_sequence: u64,
    line: Vec<u8>,
}

impl Journal {
    /// Opens (or creates) the journal, checks every complete line and cuts off a torn
    /// last line. A corrupt line in the middle is an error: something else wrote there.
    pub fn open(path: &Path) -> Result<(Self, Recovery), JournalError> {
        let io = |source| JournalError::Io {
            path: path.into(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut recovery = Recovery {
            torn_bytes: text.len() - complete,
            ..Default::default()
        };
        for (i, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let event: JournalEvent =
                serde_json::from_slice(line).map_err(|e| JournalError::Corrupt {
                    path: path.into(),
                    line: i + 1,
                    problem: e.to_string(),
                })?;
            recovery.events += 1;
            recovery.last_sequence = Some(event.sequence);
        }
        if recovery.torn_bytes > 0 {
            log::warn!(
                "journal {}: cut off a torn last line of {} bytes (the process stopped while writing it)",
                path.display(),
                recovery.torn_bytes
            );
            file.set_len(complete as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok((
            Self {
                path: path.into(),
                file,
                next_sequence: recovery.last_sequence.map_or(0, |s| s + 1),
                line: Vec::with_capacity(256),
            },
            recovery,
        ))
    }

    /// The sequence number the next event gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Appends one event (its `sequence` is set here) and waits until it is on disk.
    pub fn append(&mut self, mut event: JournalEvent) -> Result<(), JournalError> {
        event.sequence = self.next_sequence;
        self.line.clear();
        serde_json::to_writer(&mut self.line, &event).expect("events serialise");
        self.line.push(b'\n');
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&self.line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.next_sequence += 1;
        Ok(())
    }

    /// Every complete event in a journal file (for tools and tests).
    pub fn read(path: &Path) -> Result<Vec<JournalEvent>, JournalError> {
        let text = std::fs::read(path).map_err(|source| JournalError::Io {
            path: path.into(),
            source,
        })?;
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        text[..complete]
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, l)| {
                serde_json::from_slice(l).map_err(|e| JournalError::Corrupt {
                    path: path.into(),
                    line: i + 1,
                    problem: e.to_string(),
                })
            })
            .collect()
    }
}
