//! Image files (a folder, or a glob such as `frames/*.png`), in name order, once or looped.

use std::path::PathBuf;

use crate::error::SourceError;
use crate::source::frame::{now_us, Frame, FrameFormat};
use crate::source::FrameSource;

#[derive(Debug)]
pub struct ImageFiles {
    pattern: String,
    paths: Vec<PathBuf>,
    next: usize,
    looped: bool,
    sequence: u64,
    bytes: Vec<u8>,
}

impl ImageFiles {
    /// Lists the files; a folder means every file in it. No files is an error.
    pub fn open(pattern: &str, looped: bool) -> Result<Self, SourceError> {
        let open_err = |problem: String| SourceError::Open {
            source_name: format!("images:{pattern}"),
            problem,
        };
        let path = std::path::Path::new(pattern);
        let mut paths: Vec<PathBuf> = if path.is_dir() {
            std::fs::read_dir(path)
                .map_err(|e| open_err(e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        } else {
            glob::glob(pattern)
                .map_err(|e| open_err(e.to_string()))?
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect()
        };
        paths.sort();
        if paths.is_empty() {
            return Err(open_err("no image files match".into()));
        }
        Ok(Self {
            pattern: pattern.into(),
            paths,
            next: 0,
            looped,
            sequence: 0,
            bytes: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

impl FrameSource for ImageFiles {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        if self.next == self.paths.len() {
            if !self.looped {
                return Ok(None);
            }
            self.next = 0;
        }
        let path = &self.paths[self.next];
        self.next += 1;
        self.bytes.clear();
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut self.bytes));
        if let Err(e) = read {
            return Err(SourceError::BadFrame {
                source_name: path.display().to_string(),
                problem: e.to_string(),
            });
        }
        self.sequence += 1;
        Ok(Some(Frame {
            data: &self.bytes,
            width: 0,
            height: 0,
            stride: None,
            format: FrameFormat::Encoded,
            timestamp_us: now_us(),
            // image files have no frame rate: they are timed at a nominal 30 frames/s
            media_us: Some((self.sequence - 1) * crate::source::frame::NOMINAL_FRAME_US as u64),
            sequence: self.sequence - 1,
        }))
    }

    fn describe(&self) -> String {
        format!("images:{} ({} files)", self.pattern, self.paths.len())
    }
}
