//! Turning image bytes into stored chunks (writer) and stored chunks back into verified image
//! bytes (reader). Each chunk stands alone: it can be checked and decompressed without any
//! other, which is what makes parallel verification and resuming at a chunk possible.

use std::cell::RefCell;
use std::io;

use crate::digest::Sha256Digest;
use crate::error::{Error, Result};
use crate::manifest::{Compression, ImageEntry};

/// Content-defined chunking parameters (FastCDC 2020, normalisation level 1). Part of the
/// format's reproducibility: changing them changes every bundle's chunk table.
pub const CHUNK_MIN_LENGTH: u32 = 16 << 10;
pub const CHUNK_AVERAGE_LENGTH: u32 = 64 << 10;
pub const CHUNK_MAX_LENGTH: u32 = 256 << 10;
/// zstd level used unless the builder is told otherwise (zstd's own default).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

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
        Compression::Zstd => {
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

/// Checks one chunk's stored bytes against the manifest and returns its image bytes.
pub(crate) fn verify_stored_chunk(
    image: &ImageEntry,
    index: usize,
    stored: Vec<u8>,
) -> Result<Vec<u8>> {
    verify_stored_chunk_into(image, index, stored, Vec::new()).map(|(data, _)| data)
}

/// As [`verify_stored_chunk`], decompressing into `scratch`'s allocation; returns the image
/// bytes and the buffer left over, so that callers can reuse buffers instead of allocating
/// (and page-faulting) two per chunk.
///
/// Order matters: the stored bytes are hashed first, so a decompressor only ever parses
/// bytes the signer wrote; decompression then writes into a buffer of exactly the declared
/// length, so a lying (but signed) manifest cannot make it allocate more; last, the
/// decompressed bytes are hashed against the chunk's own digest.
pub(crate) fn verify_stored_chunk_into(
    image: &ImageEntry,
    index: usize,
    stored: Vec<u8>,
    scratch: Vec<u8>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let chunk = &image.chunks[index];
    let name = || image.name.clone();
    if stored.len() != chunk.stored_length as usize {
        return Err(Error::ChunkSizeMismatch {
            image: name(),
            index,
            expected: chunk.stored_length.into(),
            found: stored.len() as u64,
        });
    }
    if Sha256Digest::of(&stored) != chunk.stored_sha256 {
        return Err(Error::ChunkHashMismatch {
            image: name(),
            index,
        });
    }
    let data = match image.compression {
        // Validation made `sha256 == stored_sha256` for uncompressed images: one hash suffices.
        Compression::None => return Ok((stored, scratch)),
        Compression::Zstd => decompress_bounded(&stored, chunk.length, scratch, image, index)?,
    };
    if data.len() != chunk.length as usize {
        return Err(Error::ChunkSizeMismatch {
            image: name(),
            index,
            expected: chunk.length.into(),
            found: data.len() as u64,
        });
    }
    if Sha256Digest::of(&data) != chunk.sha256 {
        return Err(Error::ChunkHashMismatch {
            image: name(),
            index,
        });
    }
    Ok((data, stored))
}

fn decompress_bounded(
    stored: &[u8],
    length: u32,
    mut data: Vec<u8>,
    image: &ImageEntry,
    index: usize,
) -> Result<Vec<u8>> {
    let failed = |reason: String| Error::ChunkDecompress {
        image: image.name.clone(),
        index,
        reason,
    };
    // The frame header states the content size; compare before allocating anything.
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(stored) {
        if size != u64::from(length) {
            return Err(Error::ChunkSizeMismatch {
                image: image.name.clone(),
                index,
                expected: length.into(),
                found: size,
            });
        }
    }
    // Decompress into a slice of exactly the declared length: writing more is an error, not
    // a reallocation. A reused buffer is only shortened, so its bytes need no zeroing.
    fit_length(&mut data, length as usize);
    let written = DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new().map_err(|e| failed(e.to_string()))?);
        }
        let decompressor = cell.as_mut().expect("set above");
        decompressor
            .decompress_to_buffer(stored, &mut data[..])
            .map_err(|e| failed(e.to_string()))
    })?;
    data.truncate(written);
    Ok(data)
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
