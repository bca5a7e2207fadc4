//! Opening a bundle: header, manifest and signatures are read and the signatures checked
//! before any manifest field is decoded, let alone handed out.

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;

use crate::chunk::verify_stored_chunk;
use crate::digest::Sha256Digest;
use crate::error::{Error, Part, Result};
use crate::header::Header;
use crate::image_reader::{ImageReader, VerifyPool};
use crate::keys::{KeyId, Keyring};
use crate::manifest::{ImageEntry, Manifest};
use crate::signature::{signed_message, verify_signatures};

/// How images are read.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Threads that hash and decompress chunks; 0 does it on the reading thread.
    /// Default: one per core.
    pub workers: usize,
    /// Runs of chunks read ahead of the one being handed out (bounds memory: at most this many
    /// runs of `run_bytes`, stored plus decompressed). Default: 4 per worker.
    pub read_ahead: usize,
    /// Chunks handed to a worker at once, up to this many bytes (a run holds at least one
    /// chunk, whatever its size). Larger runs cost memory, smaller ones thread wake-ups.
    /// Default: 1 MiB.
    pub run_bytes: usize,
    /// `run_bytes` for compressed images, when it should differ: each of their runs holds a
    /// stored and a decompressed buffer, where an uncompressed run holds one. Default: `None`,
    /// the same as `run_bytes`.
    pub compressed_run_bytes: Option<usize>,
    /// Also hash each whole image and compare with the manifest's image digest. Default: on.
    ///
    /// Turning it off keeps every guarantee about the bytes handed out: each one belongs to
    /// a chunk whose SHA-256 matched the signed chunk table, and validation made the chunk
    /// table tile the image exactly. What remains is a cross-check of the writer, on the
    /// reading thread, at one core's worth of SHA-256, which bounds verification speed by
    /// a single core.
    pub check_image_sha256: bool,
    /// Also hash each decompressed chunk against its image digest. Default: on.
    ///
    /// Turning it off keeps the guarantee that matters: the stored bytes of every chunk are
    /// checked against the signed chunk table before they are decompressed, and decompression
    /// is a function of them that must fill exactly the declared length. What remains is a
    /// cross-check of the decompressor against the builder, at one SHA-256 pass over the
    /// decompressed image.
    pub check_decompressed_sha256: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        ReadOptions {
            workers,
            read_ahead: 4 * workers,
            run_bytes: 1 << 20,
            compressed_run_bytes: None,
            check_image_sha256: true,
            check_decompressed_sha256: true,
        }
    }
}

/// Entry point for reading bundles.
pub struct BundleReader;

impl BundleReader {
    /// Reads and verifies header, manifest and signatures from `reader` (which must be at
    /// the bundle's first byte), leaving it at the payload's first byte.
    pub fn open<R: Read>(reader: R, keyring: &Keyring) -> Result<VerifiedBundle<R>> {
        BundleReader::open_with(reader, keyring, ReadOptions::default())
    }

    pub fn open_with<R: Read>(
        mut reader: R,
        keyring: &Keyring,
        options: ReadOptions,
    ) -> Result<VerifiedBundle<R>> {
        let (header, header_bytes) = Header::read_from(&mut reader)?;
        let manifest_bytes = read_part(&mut reader, header.manifest_length, Part::Manifest)?;
        let signature_block = read_part(
            &mut reader,
            header.signature_block_length,
            Part::SignatureBlock,
        )?;
        let message = signed_message(&header_bytes, &manifest_bytes);
        let signed_by = verify_signatures(&signature_block, &message, keyring)?;
        // Only now, with the bytes authenticated, is the manifest parsed at all.
        let manifest = Manifest::decode(&manifest_bytes, header.version)?;
        manifest.validate(header.payload_length, header.version)?;
        let verified = VerifiedManifest {
            inner: Arc::new(VerifiedInner {
                digest: Sha256Digest::of(&manifest_bytes),
                manifest,
                signed_by,
                payload_start: header.payload_start(),
                payload_length: header.payload_length,
            }),
        };
        Ok(VerifiedBundle {
            source: CountingReader {
                inner: reader,
                count: verified.payload_start(),
            },
            verified,
            options,
            next_image: 0,
        })
    }
}

/// Reads a part of a declared length. The (not yet authenticated) header's claim is reserved
/// up front only up to 8 MiB, which spares a real manifest (a 1 GiB image's is about 1.3 MiB)
/// the doubling copies that count in a robot's peak memory; past that, memory grows with the
/// bytes that actually arrive.
fn read_part(reader: &mut dyn Read, length: u32, part: Part) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity((length as usize).min(8 << 20));
    let got = reader
        .take(length.into())
        .read_to_end(&mut bytes)
        .map_err(|e| Error::read(part.clone(), e))?;
    if got != length as usize {
        return Err(Error::Truncated { part });
    }
    Ok(bytes)
}

struct VerifiedInner {
    digest: Sha256Digest,
    manifest: Manifest,
    signed_by: Vec<KeyId>,
    payload_start: u64,
    payload_length: u64,
}

/// A manifest whose signature checked out, with where things sit in the bundle file. Only
/// [`BundleReader::open`] makes one. Cheap to clone; keep it to resume a download: fetch
/// [`Self::chunk_file_range`] with an HTTP Range request and check it with
/// [`Self::verify_chunk`], or stream the rest of an image with [`Self::image_reader`].
#[derive(Clone)]
pub struct VerifiedManifest {
    inner: Arc<VerifiedInner>,
}

impl std::fmt::Debug for VerifiedManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedManifest")
            .field("signed_by", &self.inner.signed_by)
            .field("manifest", &self.inner.manifest)
            .finish()
    }
}

impl VerifiedManifest {
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// SHA-256 of the manifest bytes as signed: the bundle's identity, pinning every image
    /// byte through the image and chunk digests.
    pub fn digest(&self) -> Sha256Digest {
        self.inner.digest
    }

    /// Trusted keys whose signatures verified (at least one).
    pub fn signed_by(&self) -> &[KeyId] {
        &self.inner.signed_by
    }

    /// Offset of the payload in the bundle file.
    pub fn payload_start(&self) -> u64 {
        self.inner.payload_start
    }

    /// Length of the whole bundle file.
    pub fn bundle_length(&self) -> u64 {
        self.inner.payload_start + self.inner.payload_length
    }

    pub fn image(&self, image: usize) -> Result<&ImageEntry> {
        let images = &self.inner.manifest.images;
        images.get(image).ok_or(Error::NoSuchImageIndex {
            image,
            count: images.len(),
        })
    }

    /// Position of the image called `name` in the manifest (= payload order).
    pub fn image_index(&self, name: &str) -> Result<usize> {
        self.inner
            .manifest
            .image_index(name)
            .ok_or_else(|| Error::NoSuchImage { image: name.into() })
    }

    /// Byte range in the bundle file of chunk `index`'s stored bytes.
    pub fn chunk_file_range(&self, image: usize, index: usize) -> Result<Range<u64>> {
        let entry = self.image(image)?;
        let chunk = entry.chunks.get(index).ok_or_else(|| Error::NoSuchChunk {
            image: entry.name.clone(),
            index,
            count: entry.chunks.len(),
        })?;
        let start = self.inner.payload_start + chunk.stored_offset;
        Ok(start..start + u64::from(chunk.stored_length))
    }

    /// Byte range in the bundle file of the stored bytes of image `image`.
    pub fn image_file_range(&self, image: usize) -> Result<Range<u64>> {
        let entry = self.image(image)?;
        let start = self.inner.payload_start + entry.payload_offset;
        Ok(start..start + entry.payload_length)
    }

    /// Checks the stored bytes of one chunk (fetched from anywhere) and returns the chunk's
    /// image bytes, decompressed.
    pub fn verify_chunk(&self, image: usize, index: usize, stored: &[u8]) -> Result<Vec<u8>> {
        self.verify_chunk_owned(image, index, stored.to_vec())
    }

    /// As [`Self::verify_chunk`], without copying the stored bytes.
    pub fn verify_chunk_owned(
        &self,
        image: usize,
        index: usize,
        stored: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.chunk_file_range(image, index)?;
        verify_stored_chunk(self.image(image)?, index, stored)
    }

    /// Streams image `image` from chunk `first_chunk` on, reading stored bytes from `source`,
    /// which must be at that chunk's stored bytes (for example the body of a Range request
    /// starting at `chunk_file_range(image, first_chunk).start`). The whole-image digest is
    /// checked only when starting at chunk 0.
    pub fn image_reader<'a>(
        &self,
        image: usize,
        first_chunk: usize,
        source: &'a mut dyn Read,
        options: &ReadOptions,
    ) -> Result<ImageReader<'a>> {
        let count = self.image(image)?.chunks.len();
        self.image_range_reader(image, first_chunk..count.max(first_chunk), source, options)
    }

    /// [`Self::image_range_reader`] verifying with `pool`'s workers (see [`VerifyPool`]).
    pub fn image_range_reader_in<'a>(
        &self,
        image: usize,
        chunks: Range<usize>,
        source: &'a mut dyn Read,
        options: &ReadOptions,
        pool: &'a mut VerifyPool,
    ) -> Result<ImageReader<'a>> {
        let no_workers = ReadOptions {
            workers: 0,
            ..options.clone()
        };
        Ok(self
            .image_range_reader(image, chunks, source, &no_workers)?
            .lend(pool))
    }

    /// Streams chunks `chunks` of image `image` and reads nothing past their stored bytes
    /// (which `source` must start at), e.g. the body of a Range request for
    /// `chunk_file_range(image, chunks.start).start .. chunk_file_range(image, chunks.end - 1).end`.
    /// The whole-image digest is checked only for the whole image.
    pub fn image_range_reader<'a>(
        &self,
        image: usize,
        chunks: Range<usize>,
        source: &'a mut dyn Read,
        options: &ReadOptions,
    ) -> Result<ImageReader<'a>> {
        let entry = self.image(image)?;
        if chunks.end > entry.chunks.len() || chunks.start > chunks.end {
            return Err(Error::NoSuchChunk {
                image: entry.name.clone(),
                index: chunks.end.max(chunks.start),
                count: entry.chunks.len(),
            });
        }
        Ok(ImageReader::new(
            self.clone(),
            image,
            chunks,
            source,
            options,
        ))
    }
}

/// Counts bytes read, so the bundle knows where in the payload its stream stands.
struct CountingReader<R> {
    inner: R,
    /// Offset in the bundle file of the next byte.
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let got = self.inner.read(buf)?;
        self.count += got as u64;
        Ok(got)
    }
}

/// An opened bundle whose signature checked out. Images are streamed in payload order.
pub struct VerifiedBundle<R> {
    source: CountingReader<R>,
    verified: VerifiedManifest,
    options: ReadOptions,
    next_image: usize,
}

/// What [`VerifiedBundle::verify_all`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    pub name: String,
    pub size: u64,
    pub chunks: usize,
}

impl<R: Read> VerifiedBundle<R> {
    pub fn manifest(&self) -> &Manifest {
        self.verified.manifest()
    }

    pub fn verified_manifest(&self) -> &VerifiedManifest {
        &self.verified
    }

    pub fn signed_by(&self) -> &[KeyId] {
        self.verified.signed_by()
    }

    pub fn options(&self) -> &ReadOptions {
        &self.options
    }

    /// The next image in payload order, or `None` after the last. Whatever is left of the
    /// previous image in the stream is skipped.
    pub fn next_image(&mut self) -> Result<Option<ImageReader<'_>>> {
        if self.next_image >= self.manifest().images.len() {
            return Ok(None);
        }
        let image = self.next_image;
        self.image_at(image).map(Some)
    }

    /// The image called `name`, skipping the stream forward to it. Images before the stream
    /// position cannot be read from a plain `Read`.
    pub fn image(&mut self, name: &str) -> Result<ImageReader<'_>> {
        let image = self.verified.image_index(name)?;
        self.image_at(image)
    }

    fn image_at(&mut self, image: usize) -> Result<ImageReader<'_>> {
        let start = self.verified.image_file_range(image)?.start;
        if start < self.source.count || image < self.next_image {
            return Err(Error::ImageAlreadyPassed {
                image: self.verified.image(image)?.name.clone(),
            });
        }
        self.skip_to(start)?;
        self.next_image = image + 1;
        let verified = self.verified.clone();
        let chunks = 0..verified.image(image)?.chunks.len();
        Ok(ImageReader::new(
            verified,
            image,
            chunks,
            &mut self.source,
            &self.options,
        ))
    }

    fn skip_to(&mut self, offset: u64) -> Result<()> {
        let gap = offset - self.source.count;
        let skipped = io::copy(&mut (&mut self.source).take(gap), &mut io::sink())
            .map_err(|e| Error::read(Part::Payload, e))?;
        if skipped != gap {
            return Err(Error::Truncated {
                part: Part::Payload,
            });
        }
        Ok(())
    }

    /// Streams every image through verification without keeping the bytes, then checks
    /// that nothing follows the payload.
    pub fn verify_all(mut self) -> Result<Vec<VerifiedImage>> {
        let mut verified = Vec::new();
        while let Some(mut image) = self.next_image()? {
            let mut chunks = 0;
            while let Some(run) = image.next_run()? {
                chunks += run.chunks.len();
                image.recycle(run.data);
            }
            let entry = image.entry();
            verified.push(VerifiedImage {
                name: entry.name.clone(),
                size: entry.size,
                chunks,
            });
        }
        self.finish()?;
        Ok(verified)
    }

    /// Skips to the end of the payload and checks that the stream ends there.
    pub fn finish(mut self) -> Result<R> {
        let end = self.verified.bundle_length();
        self.skip_to(end)?;
        let mut probe = [0u8; 1];
        loop {
            match self.source.read(&mut probe) {
                Ok(0) => return Ok(self.source.inner),
                Ok(_) => return Err(Error::TrailingData),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::read(Part::Payload, e)),
            }
        }
    }

    pub fn into_inner(self) -> R {
        self.source.inner
    }
}

impl<R: Read + Seek> VerifiedBundle<R> {
    /// Reads and verifies one chunk by seeking to it; the stream position is restored after,
    /// so streaming can go on.
    pub fn read_chunk(&mut self, image: usize, index: usize) -> Result<Vec<u8>> {
        let range = self.verified.chunk_file_range(image, index)?;
        let seek_error = |e| Error::read(Part::Payload, e);
        let here = self.source.inner.stream_position().map_err(seek_error)?;
        // The bundle may start anywhere in the underlying file.
        let base = here - self.source.count;
        self.source
            .inner
            .seek(SeekFrom::Start(base + range.start))
            .map_err(seek_error)?;
        let part = Part::Chunk {
            image: self.verified.image(image)?.name.clone(),
            index,
        };
        let mut stored = vec![0u8; (range.end - range.start) as usize];
        let read = self.source.inner.read_exact(&mut stored);
        self.source
            .inner
            .seek(SeekFrom::Start(here))
            .map_err(seek_error)?;
        read.map_err(|e| Error::read(part, e))?;
        self.verified.verify_chunk_owned(image, index, stored)
    }
}
