//! Turning image bytes into stored chunks (writer) and stored chunks back into verified image
//! bytes (reader). Each chunk stands alone: it can be checked and decompressed without any
//! other, which is what makes parallel verification and resuming at a chunk possible.

use std::cell::RefCell;
use std::io;
use std::ops::Range;

use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::manifest::{Compression, ImageEntry};

/// Content-defined chunking parameters (FastCDC 2020, normalisation level 1) unless the writer is
/// told otherwise. Part of the format's reproducibility: changing them changes every bundle's
/// chunk table.
pub const CHUNK_MIN_LENGTH: u32 = 16 << 10;
pub const CHUNK_AVERAGE_LENGTH: u32 = 64 << 10;
pub const CHUNK_MAX_LENGTH: u32 = 256 << 10;

/// The sizes content-defined chunking aims at. Smaller chunks make a delta update fetch less
/// around each change and make the manifest, which every update fetches whole, larger (about
/// 80 bytes per chunk); `scripts/bench delta` measures both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    pub min: u32,
    pub average: u32,
    pub max: u32,
}

impl ChunkSizes {
    /// 16, 64 and 256 KiB.
    pub const DEFAULT: ChunkSizes = ChunkSizes {
        min: CHUNK_MIN_LENGTH,
        average: CHUNK_AVERAGE_LENGTH,
        max: CHUNK_MAX_LENGTH,
    };

    /// A quarter of `average` to four times it, as the default: `average` a power of two from
    /// 4 KiB to 1 MiB (FastCDC's limits, and the format's 4 MiB per chunk).
    pub fn around(average: u64) -> Result<ChunkSizes> {
        if !average.is_power_of_two() || !(4 << 10..=1 << 20).contains(&average) {
            return Err(Error::InvalidChunkSize { average });
        }
        let average = average as u32;
        Ok(ChunkSizes {
            min: average / 4,
            average,
            max: average * 4,
        })
    }
}
/// zstd level used unless the builder is told otherwise (zstd's own default).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Cuts `reader`'s bytes as the writer cuts an image with `sizes`, so the same content gives the
/// same chunks wherever it is, and calls `each(offset, bytes)` for every chunk in order. What a
/// robot uses to find reusable chunks in a slot that no install of its own wrote (a slot
/// flashed from a golden image).
pub fn for_each_chunk(
    reader: impl io::Read,
    sizes: ChunkSizes,
    mut each: impl FnMut(u64, &[u8]),
) -> io::Result<()> {
    for piece in fastcdc::v2020::StreamCDC::new(reader, sizes.min, sizes.average, sizes.max) {
        let piece = piece.map_err(crate::writer::cdc_error_to_io)?;
        each(piece.offset, &piece.data);
    }
    Ok(())
}

pub(crate) struct PreparedChunk {
    pub length: u32,
    pub sha256: Sha256Digest,
    pub stored: Vec<u8>,
    pub stored_sha256: Sha256Digest,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Hashes and, for zstd, compresses one chunk of image bytes.
pub(crate) fn prepare_chunk(
    data: Vec<u8>,
    compression: Compression,
    level: i32,
) -> io::Result<PreparedChunk> {
    let length = u32::try_from(data.len()).expect("chunks are at most CHUNK_MAX_LENGTH");
    let sha256 = Sha256Digest::of(&data);
    match compression {
        Compression::None => Ok(PreparedChunk {
            length,
            sha256,
            stored: data,
            stored_sha256: sha256,
        }),
        Compression::Zstd | Compression::ZstdPrefixed { .. } => {
            let stored = compress(&data, level)?;
            Ok(PreparedChunk {
                length,
                sha256,
                stored_sha256: Sha256Digest::of(&stored),
                stored,
            })
        }
    }
}

/// One zstd frame per chunk, with the content size in the frame header and no zstd checksum
/// (the manifest's SHA-256 covers that). The compression context is reused per thread.
fn compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(cached, _)| *cached != level) {
            *cell = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, compressor) = cell.as_mut().expect("set above");
        compressor.compress(data)
    })
}

/// Hashes and compresses the chunks `chunks` of `block`, each as one zstd frame against the up
/// to `window` bytes of `block` before it (its prefix). `block` starts with the image bytes
/// before its first chunk, as many as a prefix can reach, so each chunk's prefix is in it.
pub(crate) fn prepare_prefixed_chunks(
    block: &[u8],
    chunks: &[Range<usize>],
    window: usize,
    level: i32,
) -> io::Result<Vec<PreparedChunk>> {
    // One context per call: it borrows `block` for its prefixes, so it cannot outlive it.
    let mut context = PrefixedCompressor::new(level)?;
    chunks
        .iter()
        .map(|range| {
            let data = &block[range.clone()];
            let stored = context.compress(
                &block[range.start.saturating_sub(window)..range.start],
                data,
            )?;
            Ok(PreparedChunk {
                length: u32::try_from(data.len()).expect("chunks are at most CHUNK_MAX_LENGTH"),
                sha256: Sha256Digest::of(data),
                stored_sha256: Sha256Digest::of(&stored),
                stored,
            })
        })
        .collect()
}

/// One zstd frame of `data` compressed against `prefix` (any bytes the reader will have).
pub(crate) fn compress_against(prefix: &[u8], data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    PrefixedCompressor::new(level)?.compress(prefix, data)
}

/// A zstd context that compresses each frame against a prefix of its own.
struct PrefixedCompressor<'a> {
    context: zstd::zstd_safe::CCtx<'a>,
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd::zstd_safe::get_error_name(code))
}

impl<'a> PrefixedCompressor<'a> {
    fn new(level: i32) -> io::Result<Self> {
        let mut context = zstd::zstd_safe::CCtx::create();
        context
            .set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level))
            .map_err(zstd_error)?;
        Ok(PrefixedCompressor { context })
    }

    /// A frame with the content size in its header and no zstd checksum, as every chunk's.
    fn compress(&mut self, prefix: &'a [u8], data: &[u8]) -> io::Result<Vec<u8>> {
        if !prefix.is_empty() {
            self.context.ref_prefix(prefix).map_err(zstd_error)?;
        }
        let mut stored = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        self.context
            .compress2(&mut stored, data)
            .map_err(zstd_error)?;
        Ok(stored)
    }
}

/// Checks one chunk's stored bytes against the manifest and returns its image bytes.
pub(crate) fn verify_stored_chunk(
    image: &ImageEntry,
    index: usize,
    stored: Vec<u8>,
) -> Result<Vec<u8>> {
    let checks = ChunkChecks {
        decompressed_sha256: true,
    };
    let mut data = Vec::new();
    if image.compression.prefix_window() > 0 {
        if image.chunks[index].offset > 0 {
            return Err(Error::NeedsPrecedingBytes {
                image: image.name.clone(),
                index,
            });
        }
        verify_prefixed_run(image, index..index + 1, &stored, &mut data, checks, false)
            .map_err(|e| e.error)?;
        return Ok(data);
    }
    verify_run(image, index..index + 1, &stored, &mut data, checks).map_err(|e| e.error)?;
    Ok(image_bytes(image.compression, stored, data).0)
}

/// After [`verify_run`]: the buffer holding the image bytes, and the one left over.
pub(crate) fn image_bytes(
    compression: Compression,
    stored: Vec<u8>,
    data: Vec<u8>,
) -> (Vec<u8>, Vec<u8>) {
    match compression {
        Compression::None => (stored, data),
        Compression::Zstd | Compression::ZstdPrefixed { .. } => (data, stored),
    }
}

/// What is checked beyond each chunk's stored bytes, which always are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkChecks {
    /// Also hash decompressed bytes against the chunk's image digest. The stored digest already
    /// pins them (decompression is a function of the signed stored bytes); this cross-checks
    /// the decompressor and the builder, at a full SHA-256 pass over the image.
    pub decompressed_sha256: bool,
}

/// A run of chunks that failed part way: the first `verified` chunks passed.
#[derive(Debug)]
pub(crate) struct RunError {
    pub verified: usize,
    pub error: Error,
}

/// Stored bytes of the consecutive chunks `chunks`, concatenated as in the payload.
pub(crate) fn stored_run_length(image: &ImageEntry, chunks: Range<usize>) -> usize {
    image.chunks[chunks]
        .iter()
        .map(|chunk| chunk.stored_length as usize)
        .sum()
}

/// Image bytes of the consecutive chunks `chunks`.
pub(crate) fn run_length(image: &ImageEntry, chunks: Range<usize>) -> usize {
    image.chunks[chunks]
        .iter()
        .map(|chunk| chunk.length as usize)
        .sum()
}

/// Checks the consecutive chunks `chunks`, whose stored bytes are `stored` concatenated, one
/// after the other. Uncompressed, the image bytes are `stored` itself; compressed, they are
/// decompressed into `data` (resized, reusing its allocation).
///
/// Order matters: a chunk's stored bytes are hashed before it is decompressed, so a
/// decompressor only ever parses bytes the signer wrote; it then writes into a slice of exactly
/// the declared length, so a lying (but signed) manifest cannot make it allocate more. A
/// failure says how many chunks passed before it: their bytes are valid and in place.
pub(crate) fn verify_run(
    image: &ImageEntry,
    chunks: Range<usize>,
    stored: &[u8],
    data: &mut Vec<u8>,
    checks: ChunkChecks,
) -> std::result::Result<(), RunError> {
    check_stored_length(image, chunks.clone(), stored)?;
    debug_assert_eq!(
        image.compression.prefix_window(),
        0,
        "verify_prefixed_run's"
    );
    if image.compression.is_zstd() {
        fit_length(data, run_length(image, chunks.clone()));
    }
    let (mut stored_at, mut data_at) = (0, 0);
    for (verified, index) in chunks.enumerate() {
        let failed = |error| RunError { verified, error };
        let chunk = &image.chunks[index];
        let (stored_length, length) = (chunk.stored_length as usize, chunk.length as usize);
        let stored_bytes = &stored[stored_at..stored_at + stored_length];
        check_digest(image, index, stored_bytes, &chunk.stored_sha256).map_err(failed)?;
        // Validation made `sha256 == stored_sha256` for uncompressed images: one hash suffices.
        if image.compression.is_zstd() {
            let out = &mut data[data_at..data_at + length];
            decompress_exact(stored_bytes, out, &[], image, index).map_err(failed)?;
            if checks.decompressed_sha256 {
                check_digest(image, index, out, &chunk.sha256).map_err(failed)?;
            }
        }
        stored_at += stored_length;
        data_at += length;
    }
    Ok(())
}

/// Checks the stored bytes of the consecutive chunks `chunks` (their lengths, then each one's
/// stored digest), without decompressing them: the part of [`verify_prefixed_run`] that chunks
/// need not wait for each other for, done by workers ahead of it.
pub(crate) fn check_stored_run(
    image: &ImageEntry,
    chunks: Range<usize>,
    stored: &[u8],
) -> std::result::Result<(), RunError> {
    check_stored_length(image, chunks.clone(), stored)?;
    let mut stored_at = 0;
    for (verified, index) in chunks.enumerate() {
        let chunk = &image.chunks[index];
        let stored_bytes = &stored[stored_at..stored_at + chunk.stored_length as usize];
        check_digest(image, index, stored_bytes, &chunk.stored_sha256)
            .map_err(|error| RunError { verified, error })?;
        stored_at += chunk.stored_length as usize;
    }
    Ok(())
}

fn check_stored_length(
    image: &ImageEntry,
    chunks: Range<usize>,
    stored: &[u8],
) -> std::result::Result<(), RunError> {
    let expected = stored_run_length(image, chunks.clone());
    if stored.len() != expected {
        return Err(RunError {
            verified: 0,
            error: Error::ChunkSizeMismatch {
                image: image.name.clone(),
                index: chunks.start,
                expected: expected as u64,
                found: stored.len() as u64,
            },
        });
    }
    Ok(())
}

/// [`verify_run`] for an image of prefixed zstd frames: each chunk is decompressed onto the
/// end of `window`, which must hold the image bytes right before the run (as many as a prefix
/// reaches, or all of them when fewer). A failed chunk leaves nothing of itself in `window`.
/// `stored_checked`: [`check_stored_run`] passed for these stored bytes already.
///
/// The stored digest of every chunk pins its output only when its prefix is right: the
/// caller vouches for the bytes it put in `window`, and everything decompressed here builds
/// on them.
pub(crate) fn verify_prefixed_run(
    image: &ImageEntry,
    chunks: Range<usize>,
    stored: &[u8],
    window: &mut Vec<u8>,
    checks: ChunkChecks,
    stored_checked: bool,
) -> std::result::Result<(), RunError> {
    let reach = image.compression.prefix_window();
    check_stored_length(image, chunks.clone(), stored)?;
    let mut stored_at = 0;
    for (verified, index) in chunks.enumerate() {
        let chunk = &image.chunks[index];
        let stored_bytes = &stored[stored_at..stored_at + chunk.stored_length as usize];
        let start = window.len();
        let outcome = match stored_checked {
            true => Ok(()),
            false => check_digest(image, index, stored_bytes, &chunk.stored_sha256),
        }
        .and_then(|()| {
            window.resize(start + chunk.length as usize, 0);
            let (before, out) = window.split_at_mut(start);
            let prefix = &before[start.saturating_sub(reach)..];
            decompress_exact(stored_bytes, out, prefix, image, index)?;
            if checks.decompressed_sha256 {
                check_digest(image, index, out, &chunk.sha256)?;
            }
            Ok(())
        });
        if let Err(error) = outcome {
            window.truncate(start);
            return Err(RunError { verified, error });
        }
        stored_at += chunk.stored_length as usize;
    }
    Ok(())
}

pub(crate) fn check_digest(
    image: &ImageEntry,
    index: usize,
    bytes: &[u8],
    expected: &Sha256Digest,
) -> Result<()> {
    if Sha256Digest::of(bytes) != *expected {
        return Err(Error::ChunkHashMismatch {
            image: image.name.clone(),
            index,
        });
    }
    Ok(())
}

/// Decompresses one chunk's zstd frame into `out`, which must come out exactly full; `prefix`
/// is what the frame was compressed against (empty for an independent frame).
pub(crate) fn decompress_exact(
    stored: &[u8],
    out: &mut [u8],
    prefix: &[u8],
    image: &ImageEntry,
    index: usize,
) -> Result<()> {
    let failed = |reason: String| Error::ChunkDecompress {
        image: image.name.clone(),
        index,
        reason,
    };
    let expected = out.len() as u64;
    let size_mismatch = |found: u64| Error::ChunkSizeMismatch {
        image: image.name.clone(),
        index,
        expected,
        found,
    };
    // The frame header states the content size: a clearer error than a short output.
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(stored) {
        if size != expected {
            return Err(size_mismatch(size));
        }
    }
    // Writing past `out` is an error, not a reallocation.
    let written = if prefix.is_empty() {
        decompress_alone(stored, out).map_err(failed)?
    } else {
        decompress_after(stored, out, prefix).map_err(failed)?
    };
    if written != out.len() {
        return Err(size_mismatch(written as u64));
    }
    Ok(())
}

fn decompress_alone(stored: &[u8], out: &mut [u8]) -> std::result::Result<usize, String> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let decompressor = cell.as_mut().expect("set above");
        decompressor
            .decompress_to_buffer(stored, out)
            .map_err(|e| e.to_string())
    })
}

/// A context per frame: it borrows `prefix`, which the next frame's output overwrites.
fn decompress_after(
    stored: &[u8],
    out: &mut [u8],
    prefix: &[u8],
) -> std::result::Result<usize, String> {
    let failed = |code| zstd::zstd_safe::get_error_name(code).to_owned();
    let mut context = zstd::zstd_safe::DCtx::create();
    context.ref_prefix(prefix).map_err(failed)?;
    context.decompress(out, stored).map_err(failed)
}

/// Makes `buffer` exactly `length` bytes long, zeroing only bytes it never held, so a reused
/// buffer can be overwritten without clearing it first.
pub(crate) fn fit_length(buffer: &mut Vec<u8>, length: usize) {
    if buffer.len() < length {
        buffer.resize(length, 0);
    } else {
        buffer.truncate(length);
    }
}
