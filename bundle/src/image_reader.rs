//! Streaming one image: stored chunks are read on the calling thread, verified and
//! decompressed on worker threads, and handed out in order, each only after its checks.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::chunk::{fit_length, verify_stored_chunk_into};
use crate::digest::Sha256Digest;
use crate::error::{Error, Part, Result};
use crate::manifest::ImageEntry;
use crate::pool::OrderedPool;
use crate::reader::{ReadOptions, VerifiedManifest};

/// One chunk of image bytes that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChunk {
    pub index: usize,
    /// Offset of `data` in the image.
    pub offset: u64,
    pub data: Vec<u8>,
}

struct ChunkJob {
    verified: VerifiedManifest,
    image: usize,
    index: usize,
    stored: Vec<u8>,
    /// A buffer to decompress into.
    scratch: Vec<u8>,
}

/// Verified image bytes, and a buffer the job no longer needs.
type ChunkResult = Result<(Vec<u8>, Vec<u8>)>;

/// Yields an image's bytes, verified. Use [`Self::next_chunk`] for whole verified chunks
/// (no copy) or the `Read` impl; after an error every later call fails too.
///
/// With [`ReadOptions::check_image_sha256`] the last chunk is held back until the
/// whole-image digest matched, so a caller that sees end-of-image has every byte checked.
pub struct ImageReader<'a> {
    source: &'a mut dyn Read,
    verified: VerifiedManifest,
    image: usize,
    next_to_read: usize,
    next_to_deliver: usize,
    read_ahead: usize,
    pool: OrderedPool<ChunkJob, ChunkResult>,
    /// Buffers to reuse: allocating two fresh ones per chunk costs page faults that show
    /// up next to SHA-256 in a profile.
    spare_buffers: Vec<Vec<u8>>,
    image_hasher: Option<Sha256>,
    current: Vec<u8>,
    current_position: usize,
    failed: bool,
}

impl<'a> ImageReader<'a> {
    pub(crate) fn new(
        verified: VerifiedManifest,
        image: usize,
        first_chunk: usize,
        source: &'a mut dyn Read,
        options: &ReadOptions,
    ) -> Self {
        ImageReader {
            source,
            image,
            next_to_read: first_chunk,
            next_to_deliver: first_chunk,
            read_ahead: options.read_ahead.max(1),
            pool: OrderedPool::new(options.workers, |job: ChunkJob| {
                let entry = &job.verified.manifest().images[job.image];
                verify_stored_chunk_into(entry, job.index, job.stored, job.scratch)
            }),
            spare_buffers: Vec::new(),
            image_hasher: (options.check_image_sha256 && first_chunk == 0).then(Sha256::new),
            verified,
            current: Vec::new(),
            current_position: 0,
            failed: false,
        }
    }

    /// The manifest entry of this image.
    pub fn entry(&self) -> &ImageEntry {
        &self.verified.manifest().images[self.image]
    }

    /// Position of this image in the manifest.
    pub fn image_index(&self) -> usize {
        self.image
    }

    /// The next verified chunk, or `None` once the whole image was handed out.
    pub fn next_chunk(&mut self) -> Result<Option<VerifiedChunk>> {
        if self.failed {
            return Err(Error::ImageReaderFailed {
                image: self.entry().name.clone(),
            });
        }
        let result = self.next_chunk_inner();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn next_chunk_inner(&mut self) -> Result<Option<VerifiedChunk>> {
        let chunk_count = self.entry().chunks.len();
        if self.next_to_deliver >= chunk_count {
            // Only an empty image gets here with the digest unchecked.
            if self.image_hasher.is_some() {
                self.check_image_digest()?;
            }
            return Ok(None);
        }
        self.fill_read_ahead()?;
        let (data, spare) = match self.pool.next() {
            Some(Ok(result)) => result?,
            Some(Err(())) | None => return Err(Error::WorkerLost),
        };
        self.recycle(spare);
        let index = self.next_to_deliver;
        self.next_to_deliver += 1;
        if let Some(hasher) = &mut self.image_hasher {
            hasher.update(&data);
            if self.next_to_deliver == chunk_count {
                self.check_image_digest()?;
            }
        }
        let offset = self.entry().chunks[index].offset;
        Ok(Some(VerifiedChunk {
            index,
            offset,
            data,
        }))
    }

    /// Reads stored chunks from the source and queues them until the window is full.
    fn fill_read_ahead(&mut self) -> Result<()> {
        let chunk_count = self.entry().chunks.len();
        while self.pool.in_flight() < self.read_ahead && self.next_to_read < chunk_count {
            let index = self.next_to_read;
            let length = self.entry().chunks[index].stored_length as usize;
            let mut stored = self.spare_buffers.pop().unwrap_or_default();
            fit_length(&mut stored, length);
            if let Err(e) = self.source.read_exact(&mut stored) {
                // Chunks already queued are valid on their own, but handing them out first
                // would only delay the verdict: the image cannot be completed.
                let part = Part::Chunk {
                    image: self.entry().name.clone(),
                    index,
                };
                return Err(Error::read(part, e));
            }
            self.pool.submit(ChunkJob {
                verified: self.verified.clone(),
                image: self.image,
                index,
                stored,
                scratch: self.spare_buffers.pop().unwrap_or_default(),
            });
            self.next_to_read += 1;
        }
        Ok(())
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

    /// Gives a buffer (such as a [`VerifiedChunk`]'s data, once used) back for reuse.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        // Enough for every chunk in flight, its scratch buffer, and the one being read.
        if self.spare_buffers.len() < 2 * self.read_ahead + 2 && buffer.capacity() > 0 {
            self.spare_buffers.push(buffer);
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
        while let Some(chunk) = self.next_chunk()? {
            out.write_all(&chunk.data).map_err(Error::Write)?;
            written += chunk.data.len() as u64;
            self.recycle(chunk.data);
        }
        Ok(written)
    }
}

impl Read for ImageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.current_position == self.current.len() {
            match self.next_chunk().map_err(io::Error::other)? {
                Some(chunk) => {
                    let used = std::mem::replace(&mut self.current, chunk.data);
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
