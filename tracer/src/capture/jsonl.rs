//! `.jsonl` output: one event per line, written as the capture runs.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use super::events::Event;
use crate::error::{Error, Result};

/// Streams events to a file, one JSON object per line.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|source| Error::Output {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 16, file),
        })
    }

    pub fn write(&mut self, event: &Event) -> Result<()> {
        serde_json::to_writer(&mut self.out, &event.json())
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(|source| self.error(source))
    }

    /// Flushes and syncs the file: every line written is complete on disk.
    pub fn finish(mut self) -> Result<()> {
        super::flush_and_sync(&mut self.out).map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> Error {
        Error::Output {
            path: self.path.clone(),
            source,
        }
    }
}
