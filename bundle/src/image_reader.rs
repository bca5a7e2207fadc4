//! Streaming one image: stored chunks are read on the calling thread, verified and
//! decompressed on worker threads in runs of consecutive chunks (a hand-off per 64 KiB chunk
//! costs more in wake-ups than the hashing it spreads), and handed out in order, each only
//! after its checks.

use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::chunk::{
    check_stored_run, fit_length, image_bytes, run_length, stored_run_length, verify_prefixed_run,
    verify_run, ChunkChecks, RunError,
};
use crate::digest::Sha256Digest;
use crate::error::{Error, Part, Result};
use crate::manifest::{Compression, ImageEntry};
use crate::pool::OrderedPool;
use crate::reader::{ReadOptions, VerifiedManifest};

/// Consecutive chunks of image bytes that passed their checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRun {
    /// Indexes of the chunks in the image's chunk table.
    pub chunks: Range<usize>,
    /// Offset of `data` in the image.
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Where workers write verified image bytes themselves, at their image offsets: positioned
/// writes need no order, so each worker writes the run it verified without waiting for the
/// runs before it, and no thread only copies bytes.
pub trait PositionedSink: Send + Sync {
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
}

impl PositionedSink for std::fs::File {
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, data, offset)
    }
}

/// A run the workers verified and wrote to the [`PositionedSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenRun {
    /// Indexes of the chunks in the image's chunk table.
    pub chunks: Range<usize>,
    /// Image offset just past the run's bytes.
    pub end: u64,
}

struct RunJob {
    sink: Option<Arc<dyn PositionedSink>>,
    verified: VerifiedManifest,
    image: usize,
    chunks: Range<usize>,
    stored: Vec<u8>,
    /// A buffer to decompress into.
    scratch: Vec<u8>,
    checks: ChunkChecks,
    /// Prefixed zstd frames: only check the stored bytes; the reading thread decompresses
    /// them in order, and writes them.
    stored_only: bool,
}

/// Verified image bytes of a run's first chunks (all of them, unless `error` says why not),
/// and a buffer the job no longer needs.
struct RunResult {
    chunks: Range<usize>,
    data: Vec<u8>,
    spare: Vec<u8>,
    error: Option<Error>,
}

fn verify_job(job: RunJob) -> RunResult {
    let RunJob {
        sink,
        verified,
        image,
        chunks,
        stored,
        mut scratch,
        checks,
        stored_only,
    } = job;
    let entry = &verified.manifest().images[image];
    if stored_only {
        let (chunks, error) = match check_stored_run(entry, chunks.clone(), &stored) {
            Ok(()) => (chunks, None),
            Err(RunError { verified, error }) => {
                (chunks.start..chunks.start + verified, Some(error))
            }
        };
        return RunResult {
            chunks,
            data: stored,
            spare: scratch,
            error,
        };
    }
    let outcome = verify_run(entry, chunks.clone(), &stored, &mut scratch, checks);
    let (mut data, spare) = image_bytes(entry.compression, stored, scratch);
    let (good, error) = match outcome {
        Ok(()) => (chunks, None),
        Err(RunError { verified, error }) => {
            let good = chunks.start..chunks.start + verified;
            data.truncate(run_length(entry, good.clone()));
            (good, Some(error))
        }
    };
    if let (Some(sink), false) = (&sink, good.is_empty()) {
        if let Err(write_error) = sink.write_all_at(&data, entry.chunks[good.start].offset) {
            // Nothing of this run counts as written.
            return RunResult {
                chunks: good.start..good.start,
                data,
                spare,
                error: Some(Error::Write(write_error)),
            };
        }
    }
    RunResult {
        chunks: good,
        data,
        spare,
        error,
    }
}

/// The worker threads that verify and decompress chunks, and the buffers they hand back, kept
/// across image readers: a caller that reads many ranges of an image (a delta install, one
/// request per run of missing chunks) starts threads and allocates buffers once, which keeps
/// its peak memory down (each new thread's allocator arena kept freed buffers).
pub struct VerifyPool {
    pool: OrderedPool<RunJob, RunResult>,
    /// Buffers to reuse: allocating two fresh ones per run costs page faults that show up
    /// next to SHA-256 in a profile.
    spare_buffers: Vec<Vec<u8>>,
    /// Prefixed zstd frames: the image bytes decoded last, at least the `prefix_window` before
    /// the next chunk (all of them near the image start), which its frame refers to. One
    /// allocation for every reader the pool is lent to.
    window: Vec<u8>,
}

impl VerifyPool {
    /// `workers` threads (0: on the reading thread).
    pub fn new(workers: usize) -> VerifyPool {
        VerifyPool {
            pool: OrderedPool::new(workers, verify_job),
            spare_buffers: Vec::new(),
            window: Vec::new(),
        }
    }

    /// The pool's decoding window as a buffer to use between readers (a caller rebuilding
    /// chunks some other way): no reader counts on what it holds, as each refills it.
    pub fn spare_window(&mut self) -> &mut Vec<u8> {
        &mut self.window
    }
}

/// An image reader's workers: its own, or a pool lent to it.
enum Workers<'a> {
    Own(VerifyPool),
    Lent(&'a mut VerifyPool),
}

impl Workers<'_> {
    fn get(&mut self) -> &mut VerifyPool {
        match self {
            Workers::Own(pool) => pool,
            Workers::Lent(pool) => pool,
        }
    }

    fn pool(&mut self) -> &mut OrderedPool<RunJob, RunResult> {
        &mut self.get().pool
    }
}

/// Yields an image's bytes, verified. Use [`Self::next_run`] for whole verified runs of
/// chunks (no copy) or the `Read` impl; after an error every later call fails too. A chunk
/// that fails its checks ends the image right before it: every chunk before it is handed out.
/// So does a read error of the source: every chunk that arrived whole is verified and handed
/// out first, and the error names the first chunk that did not (where a resumed read
/// continues, e.g. with [`VerifiedManifest::chunk_file_range`]).
///
/// With [`ReadOptions::check_image_sha256`] the last run is held back until the
/// whole-image digest matched, so a caller that sees end-of-image has every byte checked.
pub struct ImageReader<'a> {
    source: &'a mut dyn Read,
    verified: VerifiedManifest,
    image: usize,
    next_to_read: usize,
    next_to_deliver: usize,
    /// One past the last chunk to read: the image's chunk count, or less for a range.
    end: usize,
    read_ahead: usize,
    run_bytes: usize,
    checks: ChunkChecks,
    sink: Option<Arc<dyn PositionedSink>>,
    workers: Workers<'a>,
    image_hasher: Option<Sha256>,
    /// A verification failure to report once the chunks before it were handed out.
    pending_error: Option<Error>,
    /// A read failure of the source, to report once every chunk that arrived before it was
    /// verified and handed out; nothing more is read after it.
    read_error: Option<Error>,
    current: Vec<u8>,
    current_position: usize,
    failed: bool,
    /// Prefixed zstd frames only: whether the pool's `window` holds the image bytes right
    /// before the next chunk to read (from the start; or after [`Self::read_history`]).
    window_ready: bool,
}

impl<'a> ImageReader<'a> {
    pub(crate) fn new(
        verified: VerifiedManifest,
        image: usize,
        chunks: Range<usize>,
        source: &'a mut dyn Read,
        options: &ReadOptions,
    ) -> Self {
        let whole_image =
            chunks.start == 0 && chunks.end == verified.manifest().images[image].chunks.len();
        ImageReader {
            source,
            image,
            next_to_read: chunks.start,
            next_to_deliver: chunks.start,
            end: chunks.end,
            // Prefixed frames: one run checked ahead while the previous one is decompressed is
            // all the reading thread can use; more would only hold buffers.
            read_ahead: match verified.manifest().images[image]
                .compression
                .prefix_window()
            {
                0 => options.read_ahead.max(1),
                _ => options.read_ahead.clamp(1, 2),
            },
            run_bytes: match verified.manifest().images[image].compression {
                Compression::None => options.run_bytes,
                Compression::Zstd | Compression::ZstdPrefixed { .. } => {
                    options.compressed_run_bytes.unwrap_or(options.run_bytes)
                }
            },
            checks: ChunkChecks {
                decompressed_sha256: options.check_decompressed_sha256,
            },
            sink: None,
            workers: Workers::Own(VerifyPool::new(options.workers)),
            image_hasher: (options.check_image_sha256 && whole_image).then(Sha256::new),
            verified,
            pending_error: None,
            read_error: None,
            current: Vec::new(),
            current_position: 0,
            failed: false,
            window_ready: false,
        }
    }

    /// Verifies with `pool`'s workers instead of starting its own.
    pub(crate) fn lend(mut self, pool: &'a mut VerifyPool) -> Self {
        self.workers = Workers::Lent(pool);
        self
    }

    /// The chunks whose image bytes this reader needs before its first one, given with
    /// [`Self::read_history`]: for an image of prefixed zstd frames, those that the first
    /// chunk's prefix reaches into; otherwise none.
    pub fn history_chunks(&self) -> Range<usize> {
        let first = self.next_to_read;
        let entry = self.entry();
        let reach = entry.compression.prefix_window() as u64;
        let Some(chunk) = entry.chunks.get(first).filter(|_| reach > 0) else {
            return first..first;
        };
        let from = chunk.offset.saturating_sub(reach);
        // The last chunk that starts at or before `from`.
        let start = entry.chunks[..first].partition_point(|chunk| chunk.offset <= from);
        start.saturating_sub(1).min(first)..first
    }

    /// Reads the image bytes of [`Self::history_chunks`] with `read_at(buffer, image_offset)`
    /// from wherever the caller has them (a slot it wrote them to, say), and checks each chunk
    /// against the manifest: everything decompressed after them builds on them.
    pub fn read_history(
        &mut self,
        read_at: &mut dyn FnMut(&mut [u8], u64) -> io::Result<()>,
    ) -> Result<()> {
        let history = self.history_chunks();
        let verified = self.verified.clone();
        let entry = &verified.manifest().images[self.image];
        let reach = entry.compression.prefix_window();
        let length = run_length(entry, history.clone());
        let window = &mut self.workers.get().window;
        window.clear();
        reserve_window(window, length, reach, self.run_bytes);
        window.resize(length, 0);
        if let Some(first) = entry.chunks.get(history.start).filter(|_| length > 0) {
            read_at(window, first.offset).map_err(|e| {
                Error::read(
                    Part::Chunk {
                        image: entry.name.clone(),
                        index: history.start,
                    },
                    e,
                )
            })?;
        }
        let mut at = 0;
        for index in history {
            let chunk = &entry.chunks[index];
            let bytes = &window[at..at + chunk.length as usize];
            if Sha256Digest::of(bytes) != chunk.sha256 {
                return Err(Error::ChunkHashMismatch {
                    image: entry.name.clone(),
                    index,
                });
            }
            at += chunk.length as usize;
        }
        // Only what the prefix reaches stays: the first chunk was there whole to be checked.
        window.drain(..window.len().saturating_sub(reach));
        self.window_ready = true;
        Ok(())
    }

    /// The manifest entry of this image.
    pub fn entry(&self) -> &ImageEntry {
        &self.verified.manifest().images[self.image]
    }

    /// Position of this image in the manifest.
    pub fn image_index(&self) -> usize {
        self.image
    }

    /// The next verified run of chunks, or `None` once the whole image (or range) was handed out.
    pub fn next_run(&mut self) -> Result<Option<VerifiedRun>> {
        let run = self.next_result()?;
        Ok(run.map(|(chunks, data)| VerifiedRun {
            offset: self.entry().chunks[chunks.start].offset,
            chunks,
            data,
        }))
    }

    /// From now on the workers write each run they verified to `sink` at its image offset
    /// (call it before reading anything); [`Self::next_written_run`] then reports, in order,
    /// the runs that are verified and written. Each byte reaches the sink only after its chunk
    /// passed; the whole-image digest, when enabled, is known only at the end, so a sink such
    /// as a slot must count as unusable until the image ended without an error.
    pub fn write_to(&mut self, sink: Arc<dyn PositionedSink>) {
        self.sink = Some(sink);
    }

    /// The next run that was verified and written to the sink of [`Self::write_to`] (in image
    /// order: every run before it was too), or `None` once the whole image was.
    pub fn next_written_run(&mut self) -> Result<Option<WrittenRun>> {
        let run = self.next_result()?;
        Ok(run.map(|(chunks, data)| {
            let last = &self.entry().chunks[chunks.end - 1];
            let end = last.offset + u64::from(last.length);
            self.recycle(data);
            WrittenRun { chunks, end }
        }))
    }

    fn next_result(&mut self) -> Result<Option<(Range<usize>, Vec<u8>)>> {
        if self.failed {
            return Err(Error::ImageReaderFailed {
                image: self.entry().name.clone(),
            });
        }
        let result = self.next_result_inner();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn next_result_inner(&mut self) -> Result<Option<(Range<usize>, Vec<u8>)>> {
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        let chunk_count = self.end;
        if self.next_to_deliver >= chunk_count {
            // Only an empty image gets here with the digest unchecked.
            if self.image_hasher.is_some() {
                self.check_image_digest()?;
            }
            return Ok(None);
        }
        if self.entry().compression.prefix_window() > 0 {
            return self.next_prefixed_run();
        }
        let result = self.next_checked_run()?;
        let chunks = result.chunks;
        self.next_to_deliver = chunks.end;
        if let Some(hasher) = &mut self.image_hasher {
            hasher.update(&result.data);
            if self.next_to_deliver == chunk_count {
                self.check_image_digest()?;
            }
        }
        Ok(Some((chunks, result.data)))
    }

    /// The workers' next result, in order, after queueing what the read-ahead window has room
    /// for: at least one chunk that passed, with any error after it kept for the next call.
    fn next_checked_run(&mut self) -> Result<RunResult> {
        self.fill_read_ahead();
        if self.workers.pool().in_flight() == 0 {
            if let Some(error) = self.read_error.take() {
                return Err(error);
            }
        }
        let result = self
            .workers
            .pool()
            .next()
            .ok_or(Error::WorkerLost)?
            .map_err(|()| Error::WorkerLost)?;
        self.recycle(result.spare);
        if let Some(error) = result.error {
            if result.chunks.is_empty() {
                self.recycle(result.data);
                return Err(error);
            }
            self.pending_error = Some(error);
        }
        Ok(RunResult {
            spare: Vec::new(),
            error: None,
            ..result
        })
    }

    /// The next run of an image of prefixed zstd frames. The workers check stored bytes ahead
    /// (as for other images); each chunk needs the one before it decompressed, so decompressing
    /// and writing happen here, in order.
    fn next_prefixed_run(&mut self) -> Result<Option<(Range<usize>, Vec<u8>)>> {
        if !self.window_ready {
            if self.next_to_deliver > 0 {
                return Err(Error::NeedsPrecedingBytes {
                    image: self.entry().name.clone(),
                    index: self.next_to_deliver,
                });
            }
            self.workers.get().window.clear();
            self.window_ready = true;
        }
        let checked = self.next_checked_run()?;
        let run = checked.chunks;
        let mut stored = checked.data;
        stored.truncate(stored_run_length(self.entry(), run.clone()));
        let verified = self.verified.clone();
        let entry = &verified.manifest().images[self.image];
        let reach = entry.compression.prefix_window();
        let window = &mut self.workers.get().window;
        let start = window.len();
        reserve_window(
            window,
            start + run_length(entry, run.clone()),
            reach,
            self.run_bytes,
        );
        let outcome = verify_prefixed_run(entry, run.clone(), &stored, window, self.checks, true);
        self.recycle(stored);
        let good = match outcome {
            Ok(()) => run,
            Err(RunError { verified, error }) => {
                if verified == 0 {
                    return Err(error);
                }
                // Before any error the workers found further on.
                self.pending_error = Some(error);
                run.start..run.start + verified
            }
        };
        let mut copy = match self.sink {
            Some(_) => Vec::new(),
            None => self.workers.get().spare_buffers.pop().unwrap_or_default(),
        };
        let window = &mut self.workers.get().window;
        let data = &window[start..];
        if let Some(hasher) = &mut self.image_hasher {
            hasher.update(data);
        }
        match &self.sink {
            Some(sink) => sink
                .write_all_at(data, entry.chunks[good.start].offset)
                .map_err(Error::Write)?,
            None => {
                copy.clear();
                copy.extend_from_slice(data);
            }
        }
        // Keep what the next prefix reaches; moving it down once per `reach` bytes decoded
        // costs one copy of the image.
        let window = &mut self.workers.get().window;
        if window.len() > 2 * reach {
            window.drain(..window.len() - reach);
        }
        self.next_to_deliver = good.end;
        if self.image_hasher.is_some() && self.next_to_deliver == self.end {
            self.check_image_digest()?;
        }
        Ok(Some((good, copy)))
    }

    /// The chunks from `first` on that make one job: at least one, then as many as fit in
    /// `run_bytes` (stored or decompressed, whichever is larger).
    fn run_from(&self, first: usize) -> Range<usize> {
        let chunks = &self.entry().chunks;
        let size = |index: usize| chunks[index].length.max(chunks[index].stored_length) as usize;
        let mut end = first + 1;
        let mut bytes = size(first);
        while end < self.end && bytes + size(end) <= self.run_bytes {
            bytes += size(end);
            end += 1;
        }
        first..end
    }

    /// Reads runs of stored chunks from the source and queues them until the window is full.
    fn fill_read_ahead(&mut self) {
        let chunk_count = self.end;
        while self.workers.pool().in_flight() < self.read_ahead
            && self.next_to_read < chunk_count
            && self.read_error.is_none()
        {
            let run = self.run_from(self.next_to_read);
            let mut stored = self.workers.get().spare_buffers.pop().unwrap_or_default();
            fit_length(&mut stored, stored_run_length(self.entry(), run.clone()));
            // A run's stored chunks are contiguous in the payload: one read for all of them.
            let run = match read_fully(self.source, &mut stored) {
                Ok(()) => run,
                Err((arrived, e)) => {
                    // Every chunk that arrived whole is still verified and handed out (the
                    // runs in flight, and the complete chunks of this one) before the error:
                    // a resumable source continues right after them instead of fetching them
                    // again.
                    let failed_at = self.chunk_at(run.clone(), arrived);
                    self.read_error = Some(Error::read(
                        Part::Chunk {
                            image: self.entry().name.clone(),
                            index: failed_at,
                        },
                        e,
                    ));
                    if failed_at == run.start {
                        self.recycle(stored);
                        return;
                    }
                    stored.truncate(stored_run_length(self.entry(), run.start..failed_at));
                    run.start..failed_at
                }
            };
            self.submit(run.clone(), stored);
            self.next_to_read = run.end;
        }
    }

    fn submit(&mut self, chunks: Range<usize>, stored: Vec<u8>) {
        let job = RunJob {
            sink: self.sink.clone(),
            verified: self.verified.clone(),
            image: self.image,
            chunks,
            stored,
            // Uncompressed chunks are handed out in their stored buffer: a second buffer
            // per run in flight would only add to peak memory.
            scratch: match self.entry().compression {
                Compression::None | Compression::ZstdPrefixed { .. } => Vec::new(),
                Compression::Zstd => self.workers.get().spare_buffers.pop().unwrap_or_default(),
            },
            checks: self.checks,
            stored_only: self.entry().compression.prefix_window() > 0,
        };
        self.workers.pool().submit(job);
    }

    /// The chunk of `run` that holds stored byte `position` of the run.
    fn chunk_at(&self, run: Range<usize>, position: usize) -> usize {
        let chunks = &self.entry().chunks;
        let mut end = 0;
        for index in run.clone() {
            end += chunks[index].stored_length as usize;
            if position < end {
                return index;
            }
        }
        run.end - 1
    }

    fn check_image_digest(&mut self) -> Result<()> {
        let hasher = self.image_hasher.take().expect("checked by caller");
        if Sha256Digest::from_hasher(hasher) != self.entry().sha256 {
            return Err(Error::ImageHashMismatch {
                image: self.entry().name.clone(),
            });
        }
        Ok(())
    }

    /// Gives a buffer (such as a [`VerifiedRun`]'s data, once used) back for reuse.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        // Enough for every run in flight, its scratch buffer, and the one being read.
        let limit = 2 * self.read_ahead + 2;
        let spare = &mut self.workers.get().spare_buffers;
        if spare.len() < limit && buffer.capacity() > 0 {
            spare.push(buffer);
        }
    }

    /// Writes the rest of the image to `out`; returns the bytes written.
    pub fn copy_to(&mut self, out: &mut dyn io::Write) -> Result<u64> {
        let mut written = 0u64;
        if self.current_position < self.current.len() {
            out.write_all(&self.current[self.current_position..])
                .map_err(Error::Write)?;
            written += (self.current.len() - self.current_position) as u64;
            self.current_position = self.current.len();
        }
        while let Some(run) = self.next_run()? {
            out.write_all(&run.data).map_err(Error::Write)?;
            written += run.data.len() as u64;
            self.recycle(run.data);
        }
        Ok(written)
    }
}

impl Drop for ImageReader<'_> {
    /// A lent pool goes back with nothing in flight, whatever stopped the reader early.
    fn drop(&mut self) {
        if let Workers::Lent(pool) = &mut self.workers {
            while let Some(Ok(result)) = pool.pool.next() {
                for buffer in [result.spare, result.data] {
                    if buffer.capacity() > 0 && pool.spare_buffers.len() < 16 {
                        pool.spare_buffers.push(buffer);
                    }
                }
            }
        }
    }
}

impl Read for ImageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.current_position == self.current.len() {
            match self.next_run().map_err(io::Error::other)? {
                Some(run) => {
                    let used = std::mem::replace(&mut self.current, run.data);
                    self.recycle(used);
                    self.current_position = 0;
                }
                None => return Ok(0),
            }
        }
        let available = &self.current[self.current_position..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.current_position += n;
        Ok(n)
    }
}

/// Makes room in `window` for `needed` bytes, and at once for what later runs add before it is
/// trimmed back to `reach`: growing by doubling would touch pages no run needs.
fn reserve_window(window: &mut Vec<u8>, needed: usize, reach: usize, run_bytes: usize) {
    if window.capacity() < needed {
        window.reserve_exact(needed.max(2 * reach + run_bytes) - window.len());
    }
}

/// Fills `buffer` from `source`; on failure, also says how many bytes arrived before it.
fn read_fully(
    source: &mut dyn Read,
    buffer: &mut [u8],
) -> std::result::Result<(), (usize, io::Error)> {
    let mut arrived = 0;
    while arrived < buffer.len() {
        match source.read(&mut buffer[arrived..]) {
            Ok(0) => return Err((arrived, io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => arrived += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((arrived, e)),
        }
    }
    Ok(())
}
