//! Evidence: the frames around each alarm, kept on disk next to the journal, so that the
//! first question after an alarm ("what did it see?") has an answer.
//!
//! - [`EvidenceTap`] wraps the frame source and copies every frame into a ring of
//!   preallocated slots ([`EvidenceRing`]): the original JPEG for MJPEG sources, the raw
//!   pixels otherwise. A slot's buffer grows to the largest frame once; after that the
//!   frame loop allocates nothing for evidence, and memory is `slots x largest frame`.
//! - [`EvidenceWriter`] is a thread that follows the journal: for each event entering OOD or
//!   FAULT (not the service's own start and stop) it waits until `frames_after` more frames were captured (or the source stops),
//!   copies the frames from `frames_before` before to `frames_after` after the event's frame
//!   out of the ring and writes them, JPEG-encoding raw frames, into
//!   `DIR/event-SEQUENCE/` atomically (a temporary directory renamed when complete), with a
//!   `meta.json`. The journal line names that directory (`evidence`). When the directory
//!   grows past `max_mb`, the oldest events' evidence is deleted first. The frame loop never
//!   waits for it: frames the writer could not take in time (the ring moved on) are counted
//!   as missed in `meta.json`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oodmon_calibration::preprocess::to_rgb8;
use serde::{Deserialize, Serialize};

use crate::error::{EdgeError, Result, SourceError};
use crate::output::journal::{JournalEvent, JournalTail};
use crate::source::frame::{Frame, FrameFormat};
use crate::source::FrameSource;

/// `[evidence]`: where and how much.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// Directory of the evidence (`--evidence DIR`); none: no evidence.
    pub dir: Option<PathBuf>,
    /// Frames kept from before the alarm's frame, and taken after it.
    pub frames_before: usize,
    pub frames_after: usize,
    /// Size cap of the directory, MiB: the oldest events' evidence goes first.
    pub max_mb: u64,
    /// JPEG quality for raw frames (MJPEG frames are kept as the camera sent them).
    pub jpeg_quality: u8,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            dir: None,
            frames_before: 30,
            frames_after: 30,
            max_mb: 500,
            jpeg_quality: 85,
        }
    }
}

impl EvidenceConfig {
    pub fn validate(&self) -> Result<()> {
        if self.frames_before + self.frames_after == 0
            || self.frames_before + self.frames_after > 3000
        {
            return Err(EdgeError::invalid(
                "evidence",
                "frames_before + frames_after must be in 1..=3000",
            ));
        }
        if self.max_mb == 0 {
            return Err(EdgeError::invalid("evidence.max_mb", "must be at least 1"));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(EdgeError::invalid(
                "evidence.jpeg_quality",
                "must be in 1..=100",
            ));
        }
        Ok(())
    }

    /// Ring slots: the window and a second of slack for the writer to come round.
    pub fn slots(&self) -> usize {
        self.frames_before + self.frames_after + 30
    }
}

/// The directory name of an event's evidence, as the journal names it.
pub fn evidence_name(sequence: u64) -> String {
    format!("event-{sequence:06}")
}

/// One captured frame in the ring.
#[derive(Debug, Default)]
struct Slot {
    sequence: Option<u64>,
    timestamp_us: u64,
    width: usize,
    height: usize,
    stride: Option<usize>,
    format: Option<FrameFormat>,
    data: Vec<u8>,
}

/// The last frames, in slots reused round-robin.
#[derive(Debug)]
pub struct EvidenceRing {
    slots: Mutex<Vec<Slot>>,
    next: AtomicU64,
    /// Sequence of the newest frame + 1 (0: none yet).
    newest: AtomicU64,
}

impl EvidenceRing {
    pub fn new(slots: usize) -> Self {
        Self {
            slots: Mutex::new((0..slots.max(1)).map(|_| Slot::default()).collect()),
            next: AtomicU64::new(0),
            newest: AtomicU64::new(0),
        }
    }

    /// Copies a frame into the next slot (reusing its buffer).
    pub fn push(&self, frame: &Frame<'_>) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let i = (self.next.fetch_add(1, Ordering::Relaxed) % slots.len() as u64) as usize;
        let slot = &mut slots[i];
        slot.data.clear();
        slot.data.extend_from_slice(frame.data);
        slot.sequence = Some(frame.sequence);
        slot.timestamp_us = frame.timestamp_us;
        slot.width = frame.width;
        slot.height = frame.height;
        slot.stride = frame.stride;
        slot.format = Some(frame.format);
        self.newest.store(frame.sequence + 1, Ordering::Release);
    }

    fn newest(&self) -> Option<u64> {
        self.newest.load(Ordering::Acquire).checked_sub(1)
    }

    /// Copies of the frames with sequence numbers in `range`, oldest first.
    fn take(&self, range: std::ops::RangeInclusive<u64>) -> Vec<Captured> {
        let Ok(slots) = self.slots.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Captured> = slots
            .iter()
            .filter_map(|s| {
                let (seq, format) = (s.sequence?, s.format?);
                range.contains(&seq).then(|| Captured {
                    sequence: seq,
                    timestamp_us: s.timestamp_us,
                    width: s.width,
                    height: s.height,
                    stride: s.stride,
                    format,
                    data: s.data.clone(),
                })
            })
            .collect();
        out.sort_by_key(|c| c.sequence);
        out
    }
}

struct Captured {
    sequence: u64,
    timestamp_us: u64,
    width: usize,
    height: usize,
    stride: Option<usize>,
    format: FrameFormat,
    data: Vec<u8>,
}

/// A frame source whose frames are also copied into an [`EvidenceRing`].
pub struct EvidenceTap<S> {
    inner: S,
    ring: Arc<EvidenceRing>,
}

impl<S: FrameSource> EvidenceTap<S> {
    pub fn new(inner: S, ring: Arc<EvidenceRing>) -> Self {
        Self { inner, ring }
    }
}

impl<S: FrameSource> FrameSource for EvidenceTap<S> {
    fn next_frame(&mut self) -> std::result::Result<Option<Frame<'_>>, SourceError> {
        let frame = self.inner.next_frame()?;
        if let Some(f) = &frame {
            self.ring.push(f);
        }
        Ok(frame)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// `meta.json` of one event's evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceMeta {
    pub sequence: u64,
    pub time_ms: u64,
    pub state: String,
    pub reason: String,
    /// The frame the alarm was decided on.
    pub frame: Option<u64>,
    /// The files, oldest frame first, with their frame numbers and capture times.
    pub frames: Vec<EvidenceFrame>,
    /// Frames of the window no longer in the ring when the writer took them.
    pub missed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceFrame {
    pub file: String,
    pub frame: u64,
    pub timestamp_us: u64,
}

/// What the writer did, for logs and tests.
#[derive(Debug, Default)]
pub struct EvidenceStats {
    pub written: AtomicU64,
    pub frames: AtomicU64,
    pub deleted: AtomicU64,
    pub failed: AtomicU64,
}

/// The writer thread; stop it with [`EvidenceWriter::stop`] (it writes what is pending).
pub struct EvidenceWriter {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub stats: Arc<EvidenceStats>,
}

struct Pending {
    event: JournalEvent,
    since: Instant,
}

impl EvidenceWriter {
    /// Creates the directory and starts following `journal`.
    pub fn start(cfg: &EvidenceConfig, journal: &Path, ring: Arc<EvidenceRing>) -> Result<Self> {
        cfg.validate()?;
        let dir = cfg
            .dir
            .clone()
            .ok_or_else(|| EdgeError::invalid("evidence.dir", "not set"))?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| EdgeError::invalid("evidence.dir", format!("{}: {e}", dir.display())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(EvidenceStats::default());
        let (s, st, cfg, journal) = (
            stop.clone(),
            stats.clone(),
            cfg.clone(),
            journal.to_path_buf(),
        );
        let handle = std::thread::Builder::new()
            .name("evidence".into())
            .spawn(move || run(&cfg, &dir, &journal, &ring, &s, &st))
            .map_err(EdgeError::Io)?;
        Ok(Self {
            stop,
            handle: Some(handle),
            stats,
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for EvidenceWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    cfg: &EvidenceConfig,
    dir: &Path,
    journal: &Path,
    ring: &EvidenceRing,
    stop: &AtomicBool,
    stats: &EvidenceStats,
) {
    let mut tail = JournalTail::new(journal);
    // events already in the journal at start have had their evidence written (or missed)
    let mut skip_existing = true;
    let mut pending: Vec<Pending> = Vec::new();
    let wait_after = Duration::from_secs_f64(cfg.frames_after as f64 / 10.0 + 2.0);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        match tail.poll() {
            Ok(events) => {
                if !skip_existing {
                    pending.extend(events.into_iter().filter(|e| e.evidence.is_some()).map(
                        |event| Pending {
                            event,
                            since: Instant::now(),
                        },
                    ));
                }
                skip_existing = false;
            }
            Err(e) => log::warn!("evidence: {e}"),
        }
        let newest = ring.newest();
        let mut i = 0;
        while i < pending.len() {
            let p = &pending[i];
            let frame = p.event.frame.unwrap_or(0);
            let complete = newest.is_some_and(|n| n >= frame + cfg.frames_after as u64);
            if complete || stopping || p.since.elapsed() > wait_after {
                let p = pending.swap_remove(i);
                match write_event(cfg, dir, ring, &p.event) {
                    Ok(n) => {
                        stats.written.fetch_add(1, Ordering::Relaxed);
                        stats.frames.fetch_add(n, Ordering::Relaxed);
                        let deleted = enforce_cap(dir, cfg.max_mb * 1024 * 1024);
                        stats.deleted.fetch_add(deleted, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        log::warn!("evidence of event {}: {e}", p.event.sequence);
                    }
                }
            } else {
                i += 1;
            }
        }
        if stopping && pending.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes one event's frames into `dir/event-SEQ` (through a temporary directory renamed
/// when complete); returns the number of frames.
fn write_event(
    cfg: &EvidenceConfig,
    dir: &Path,
    ring: &EvidenceRing,
    event: &JournalEvent,
) -> std::io::Result<u64> {
    let frame = event.frame.unwrap_or(0);
    let window = frame.saturating_sub(cfg.frames_before as u64)..=frame + cfg.frames_after as u64;
    let wanted = window.end() - window.start() + 1;
    let captured = ring.take(window);
    let name = evidence_name(event.sequence);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mut frames = Vec::with_capacity(captured.len());
    let mut rgb = Vec::new();
    for c in &captured {
        let file = format!("frame-{:08}.jpg", c.sequence);
        let bytes = match c.format {
            FrameFormat::Jpeg => c.data.clone(),
            FrameFormat::Raw(pf) => {
                to_rgb8(&c.data, c.width, c.height, c.stride, pf, &mut rgb)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                jpeg(&rgb, c.width, c.height, cfg.jpeg_quality)?
            }
            FrameFormat::Encoded => {
                let img = image::load_from_memory(&c.data)
                    .map_err(|e| std::io::Error::other(e.to_string()))?
                    .to_rgb8();
                let (w, h) = (img.width() as usize, img.height() as usize);
                jpeg(img.as_raw(), w, h, cfg.jpeg_quality)?
            }
        };
        std::fs::write(tmp.join(&file), bytes)?;
        frames.push(EvidenceFrame {
            file,
            frame: c.sequence,
            timestamp_us: c.timestamp_us,
        });
    }
    let meta = EvidenceMeta {
        sequence: event.sequence,
        time_ms: event.time_ms,
        state: event.state.clone(),
        reason: event.reason.clone(),
        frame: event.frame,
        missed: wanted.saturating_sub(frames.len() as u64),
        frames,
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
    std::fs::write(tmp.join("meta.json"), json)?;
    // the files are on disk before the directory gets its name
    for entry in std::fs::read_dir(&tmp)? {
        std::fs::File::open(entry?.path())?.sync_all()?;
    }
    let target = dir.join(&name);
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&tmp, &target)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(meta.frames.len() as u64)
}

fn jpeg(rgb: &[u8], width: usize, height: usize, quality: u8) -> std::io::Result<Vec<u8>> {
    let (w, h) = (
        u16::try_from(width).map_err(std::io::Error::other)?,
        u16::try_from(height).map_err(std::io::Error::other)?,
    );
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(std::io::Error::other)?;
    Ok(out)
}

/// Deletes the oldest events' evidence (lowest sequence first) until the directory holds at
/// most `max_bytes`; returns how many were deleted.
fn enforce_cap(dir: &Path, max_bytes: u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut events: Vec<(PathBuf, u64)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("event-"))
        .map(|e| {
            let size = std::fs::read_dir(e.path())
                .map(|files| {
                    files
                        .filter_map(|f| f.ok()?.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            (e.path(), size)
        })
        .collect();
    events.sort();
    let mut total: u64 = events.iter().map(|(_, s)| s).sum();
    let mut deleted = 0;
    // the newest event's evidence is kept whatever its size
    let older = events.len().saturating_sub(1);
    for (path, size) in events.into_iter().take(older) {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            total -= size;
            deleted += 1;
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use oodmon_calibration::preprocess::PixelFormat;

    fn frame(data: &[u8], sequence: u64) -> Frame<'_> {
        Frame {
            data,
            width: 4,
            height: 2,
            stride: None,
            format: FrameFormat::Raw(PixelFormat::Rgb8),
            timestamp_us: 1000 + sequence,
            media_us: None,
            sequence,
        }
    }

    #[test]
    fn the_ring_keeps_the_last_frames_and_reuses_its_buffers() {
        let ring = EvidenceRing::new(4);
        let px = [7u8; 24];
        for s in 0..10 {
            ring.push(&frame(&px, s));
        }
        assert_eq!(ring.newest(), Some(9));
        let got: Vec<u64> = ring.take(0..=100).iter().map(|c| c.sequence).collect();
        assert_eq!(got, [6, 7, 8, 9]);
        let ptr = ring.slots.lock().unwrap()[0].data.as_ptr();
        ring.push(&frame(&px, 10));
        ring.push(&frame(&px, 11));
        ring.push(&frame(&px, 12));
        ring.push(&frame(&px, 13));
        assert_eq!(ring.slots.lock().unwrap()[0].data.as_ptr(), ptr);
    }

    #[test]
    fn events_are_written_whole_and_the_cap_deletes_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = EvidenceConfig {
            dir: Some(dir.path().into()),
            frames_before: 2,
            frames_after: 1,
            ..Default::default()
        };
        let ring = EvidenceRing::new(cfg.slots());
        let px: Vec<u8> = (0..24).collect();
        for s in 0..20 {
            ring.push(&frame(&px, s));
        }
        let event = |sequence: u64, frame: u64| JournalEvent {
            time_ms: 5,
            state: "OOD".into(),
            reason: "ood_frames".into(),
            score: Some(1.0),
            frame: Some(frame),
            sequence,
            evidence: Some(evidence_name(sequence)),
        };
        assert_eq!(
            write_event(&cfg, dir.path(), &ring, &event(3, 10)).unwrap(),
            4
        );
        let meta: EvidenceMeta = serde_json::from_slice(
            &std::fs::read(dir.path().join("event-000003/meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            meta.frames.iter().map(|f| f.frame).collect::<Vec<_>>(),
            [8, 9, 10, 11]
        );
        assert_eq!(meta.missed, 0);
        let jpg = std::fs::read(dir.path().join("event-000003/frame-00000010.jpg")).unwrap();
        assert_eq!(&jpg[..2], &[0xff, 0xd8]);
        // a window partly out of the ring counts what it missed
        assert_eq!(
            write_event(&cfg, dir.path(), &ring, &event(4, 19)).unwrap(),
            3
        );
        write_event(&cfg, dir.path(), &ring, &event(5, 15)).unwrap();
        assert!(!dir.path().join(".event-000005.tmp").exists());
        // a cap below two events' size keeps only the newest
        let deleted = enforce_cap(dir.path(), 1);
        assert_eq!(deleted, 2);
        assert!(dir.path().join("event-000005").exists());
        assert!(!dir.path().join("event-000003").exists());
    }
}
