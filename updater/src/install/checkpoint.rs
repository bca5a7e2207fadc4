//! Durable progress: which chunks are in the slot, recorded only after they are flushed.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use rota_bundle::ImageEntry;

use super::sink::{SinkError, SlotWriter};
use super::InstallError;
use crate::failpoint;
use crate::state::{InstallProgress, Sha256Digest, State};
use crate::store::StoreLock;

/// The first chunk whose bytes in the slot do not match the chunk table. Chunks written before
/// a restart are trusted only after reading them back; the scan goes past the last checkpoint
/// (`checkpointed`, a hint) because chunks written after it often survived too.
pub(super) fn first_unverified_chunk(
    writer: &SlotWriter,
    entry: &ImageEntry,
    checkpointed: u64,
) -> u64 {
    for (index, chunk) in entry.chunks.iter().enumerate() {
        let intact = writer
            .read_at(chunk.offset, chunk.length as usize)
            .is_ok_and(|data| Sha256Digest::of(&data) == chunk.sha256);
        if !intact {
            if (index as u64) < checkpointed {
                log::warn!(
                    "chunk {index} in the slot changed since it was written: resuming from there"
                );
            }
            return index as u64;
        }
    }
    entry.chunks.len() as u64
}

/// Where the stream stands and how to save it.
pub(super) struct Checkpointer<'a> {
    pub(super) store: &'a StoreLock,
    pub(super) state: State,
    pub(super) slot: Arc<File>,
    pub(super) slot_path: PathBuf,
    pub(super) image: u32,
    pub(super) every: u64,
    pub(super) since_last: u64,
    pub(super) next_chunk: u64,
    pub(super) done: u64,
    /// The fsync in flight on its own thread, and the progress it makes durable: the workers
    /// go on verifying and writing while the medium catches up.
    pub(super) syncing: Option<(JoinHandle<io::Result<()>>, InstallProgress)>,
}

impl Checkpointer<'_> {
    /// Chunks before `next_chunk` (image bytes before `end`) are verified and written: every
    /// `every` bytes, an fsync starts, and the progress it covers is recorded once it is done.
    pub(super) fn run_written(&mut self, next_chunk: usize, end: u64) -> Result<(), InstallError> {
        self.next_chunk = next_chunk as u64;
        self.since_last += end - self.done.min(end);
        self.done = end;
        failpoint::hit("after-run-written");
        let finished = self
            .syncing
            .as_ref()
            .is_some_and(|(sync, _)| sync.is_finished());
        let due = self.since_last >= self.every;
        if finished || due {
            // Due with the previous fsync still running: wait for it (with checkpoints this
            // far apart it finished long ago; only tiny test checkpoints ever wait).
            self.record_sync()?;
        }
        if due {
            let slot = self.slot.clone();
            let sync = std::thread::spawn(move || slot.sync_data());
            self.syncing = Some((sync, self.progress()));
            self.since_last = 0;
        }
        Ok(())
    }

    pub(super) fn progress(&self) -> InstallProgress {
        InstallProgress {
            image: self.image,
            next_chunk: self.next_chunk,
            bytes_done: self.done,
        }
    }

    /// Waits for the fsync in flight, then records its progress: durable data first, then the
    /// record that points at it.
    pub(super) fn record_sync(&mut self) -> Result<(), InstallError> {
        if let Some(progress) = self.wait_for_sync()? {
            self.state.record_progress(progress)?;
            self.store.save(&self.state)?;
            failpoint::hit("after-progress-saved");
        }
        Ok(())
    }

    /// The fsync in flight, finished. Its error counts: Linux reports a failed writeback to
    /// one fsync only, so a later one may succeed over lost data.
    pub(super) fn wait_for_sync(&mut self) -> Result<Option<InstallProgress>, SinkError> {
        let Some((sync, progress)) = self.syncing.take() else {
            return Ok(None);
        };
        sync.join()
            .unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked")))
            .map_err(|source| self.slot_error("fsync", source))?;
        Ok(Some(progress))
    }

    /// Every byte written so far is durable.
    pub(super) fn sync_all(&mut self) -> Result<(), InstallError> {
        // Its progress is not recorded: the state saved after this supersedes it at once.
        self.wait_for_sync()?;
        self.slot
            .sync_data()
            .map_err(|source| self.slot_error("fsync", source))?;
        Ok(())
    }

    pub(super) fn slot_error(&self, op: &'static str, source: io::Error) -> SinkError {
        SinkError::Io {
            op,
            path: self.slot_path.clone(),
            source,
        }
    }
}
