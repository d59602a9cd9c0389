//! The alarm event journal: one JSON line per state change, appended and fsync'd before
//! the event counts as recorded, so that `kill -9` or a power cut loses no completed
//! event. When the journal is reopened, a line cut short by a crash is reported and
//! truncated away before new events are appended; a last event that is complete but lacks
//! only its newline is kept (the newline is added); a corrupt line elsewhere is reported and
//! skipped, and every event around it is kept.

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
    /// The directory (under the evidence directory) the frames around this event go to,
    /// when evidence is kept and the event enters OOD or FAULT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
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
            evidence: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// What reopening found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// Complete events already in the journal.
    pub events: usize,
    /// Bytes of a torn last line that were cut off.
    pub torn_bytes: usize,
    /// A complete last event without its newline, kept (the newline was added).
    pub completed_last_line: bool,
    /// Lines (1-based) that are not journal events: reported and skipped.
    pub corrupt_lines: Vec<usize>,
    /// Highest event sequence number found.
    pub last_sequence: Option<u64>,
}

/// The events of a journal's text, line by line: complete lines that parse, the numbers of
/// those that do not, and whether the unterminated tail is one whole event.
fn parse_journal(text: &[u8]) -> (Vec<JournalEvent>, Vec<usize>, usize, bool) {
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut events = Vec::new();
    let mut corrupt = Vec::new();
    for (i, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<JournalEvent>(line) {
            Ok(event) => events.push(event),
            Err(_) => corrupt.push(i + 1),
        }
    }
    let tail = &text[complete..];
    let tail_event = serde_json::from_slice::<JournalEvent>(tail).ok();
    let tail_is_event = !tail.is_empty() && tail_event.is_some();
    events.extend(tail_event);
    (events, corrupt, complete, tail_is_event)
}

pub struct Journal {
    path: PathBuf,
    file: File,
    next_sequence: u64,
    line: Vec<u8>,
    name_evidence: bool,
}

impl Journal {
    /// Opens (or creates) the journal, checks every line, cuts off a torn last line (or
    /// completes a last event that lacks only its newline) and reports corrupt lines, which
    /// are skipped: something else wrote there, and the events around them still count.
    pub fn open(path: &Path) -> Result<(Self, Recovery), JournalError> {
        let io = |cause| JournalError::Io {
            path: path.into(),
            cause,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        let (events, corrupt_lines, complete, tail_is_event) = parse_journal(&text);
        let recovery = Recovery {
            events: events.len(),
            torn_bytes: if tail_is_event {
                0
            } else {
                text.len() - complete
            },
            completed_last_line: tail_is_event,
            last_sequence: events.iter().map(|e| e.sequence).max(),
            corrupt_lines,
        };
        for line in &recovery.corrupt_lines {
            log::warn!(
                "journal {}, line {line}: not a journal event; skipped (the events around it are kept)",
                path.display()
            );
        }
        if tail_is_event {
            log::warn!(
                "journal {}: the last event lacked its newline (the process stopped after writing it); newline added",
                path.display()
            );
            file.write_all(b"\n").map_err(io)?;
            file.sync_data().map_err(io)?;
        } else if recovery.torn_bytes > 0 {
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
                name_evidence: false,
            },
            recovery,
        ))
    }

    /// The sequence number the next event gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Name, in each event entering OOD or FAULT, the evidence directory its frames go to
    /// (`crate::output::evidence`).
    pub fn name_evidence(&mut self, on: bool) {
        self.name_evidence = on;
    }

    /// Appends one event (its `sequence` is set here) and waits until it is on disk.
    pub fn append(&mut self, mut event: JournalEvent) -> Result<(), JournalError> {
        event.sequence = self.next_sequence;
        // the service's own start and stop are no alarm about what the camera saw
        let lifecycle = matches!(event.reason.as_str(), "starting" | "stopping");
        if self.name_evidence && event.state != "OK" && event.frame.is_some() && !lifecycle {
            event.evidence = Some(format!("event-{:06}", event.sequence));
        }
        self.line.clear();
        #[allow(clippy::expect_used)] // a plain struct into a Vec: serde_json cannot fail
        serde_json::to_writer(&mut self.line, &event).expect("events serialise");
        self.line.push(b'\n');
        let io = |cause| JournalError::Io {
            path: self.path.clone(),
            cause,
        };
        self.file.write_all(&self.line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.next_sequence += 1;
        Ok(())
    }

    /// Every event in a journal file (for tools and tests): corrupt lines and a torn last
    /// line are skipped, as [`Journal::open`] skips them.
    pub fn read(path: &Path) -> Result<Vec<JournalEvent>, JournalError> {
        let text = std::fs::read(path).map_err(|cause| JournalError::Io {
            path: path.into(),
            cause,
        })?;
        Ok(parse_journal(&text).0)
    }
}

/// Follows a journal file as the alarm service appends to it: each [`poll`](Self::poll)
/// returns the events completed since the last one. What publishes from the journal (the
/// MQTT forwarder) reads it this way, so that it never holds up the service that writes it.
#[derive(Debug)]
pub struct JournalTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl JournalTail {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// Events whose lines were completed since the last call; corrupt lines are skipped. A
    /// file that shrank (rewritten) is read again from its start.
    pub fn poll(&mut self) -> Result<Vec<JournalEvent>, JournalError> {
        let io = |cause| JournalError::Io {
            path: self.path.clone(),
            cause,
        };
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let len = file.metadata().map_err(io)?.len();
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh).map_err(io)?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let complete = self
            .partial
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let events = self.partial[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice::<JournalEvent>(l).ok())
            .collect();
        self.partial.drain(..complete);
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64) -> JournalEvent {
        JournalEvent::new(
            1000 + sequence,
            AlarmState::Ok,
            Reason::Cleared,
            0.5,
            Some(sequence),
            sequence,
        )
    }

    #[test]
    fn the_tail_returns_completed_lines_once_and_rereads_a_rewritten_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut tail = JournalTail::new(&path);
        assert!(tail.poll().unwrap().is_empty(), "no file yet");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append(event(0)).unwrap();
        journal.append(event(0)).unwrap();
        let got: Vec<u64> = tail.poll().unwrap().iter().map(|e| e.sequence).collect();
        assert_eq!(got, [0, 1]);
        assert!(tail.poll().unwrap().is_empty());
        // half a line: nothing until it is complete
        let line = serde_json::to_string(&JournalEvent {
            sequence: 2,
            ..event(2)
        })
        .unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&line.as_bytes()[..10]).unwrap();
        assert!(tail.poll().unwrap().is_empty());
        f.write_all(&line.as_bytes()[10..]).unwrap();
        f.write_all(b"\nnot an event\n").unwrap();
        assert_eq!(tail.poll().unwrap().len(), 1);
        // rewritten shorter: read again from the start
        std::fs::write(&path, format!("{line}\n")).unwrap();
        assert_eq!(tail.poll().unwrap()[0].sequence, 2);
    }
}
