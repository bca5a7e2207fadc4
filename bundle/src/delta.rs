//! Precomputed deltas between two known bundles (FORMAT.md, "Deltas"): for the chunks of a
//! target image that a robot running the base bundle lacks, a zstd frame compressed against a
//! region of the base image, which the robot reads from its booted slot. Optional: a robot
//! without the delta fetches the same chunks from the bundle, so any version still updates to
//! any newer one; a delta only makes the common step (last release to this one) smaller.
//!
//! A delta is signed like a bundle (with another signature context) and every chunk it
//! rebuilds is checked against the target bundle's signed chunk table, so a wrong delta, or a
//! booted slot that changed under its references, costs a fetch from the bundle, never a
//! wrong byte.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::chunk::{check_digest, compress_against, decompress_exact};
use crate::digest::Sha256Digest;
use crate::error::{Error, Part, Result};
use crate::header::HEADER_LENGTH;
use crate::keys::{KeyId, Keyring, SigningKey};
use crate::manifest::{ImageEntry, MAX_CHUNK_LENGTH};
use crate::reader::VerifiedManifest;
use crate::signature::{
    encode_signature_block, signature_block_length, signed_message_in, verify_signatures,
    DELTA_SIGNATURE_CONTEXT,
};

/// First 8 bytes of every delta file (a bundle's magic with `RDLT` for `ROTA`).
pub const DELTA_MAGIC: [u8; 8] = [0x89, b'R', b'D', b'L', b'T', b'\r', b'\n', 0x1a];
/// The delta format version this crate writes and reads.
pub const DELTA_FORMAT_VERSION: u32 = 1;
/// Base image bytes on each side of where a missing chunk's content most likely was: what its
/// frame may refer to.
pub const REFERENCE_MARGIN: u64 = 512 << 10;
/// Upper bound on a patch's reference, which a robot reads into memory.
pub const MAX_REFERENCE_LENGTH: u32 = 16 << 20;
/// Upper bound on the delta manifest a reader accepts.
const MAX_DELTA_MANIFEST_LENGTH: u32 = 16 << 20;
/// zstd level of patches unless told otherwise: they are made once and fetched by every robot.
pub const DEFAULT_DELTA_LEVEL: i32 = 19;

/// What a delta holds, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaManifest {
    /// Digest of the bundle whose image the references point into (what the booted slot holds).
    pub base: Sha256Digest,
    /// Digest of the bundle whose chunks the patches rebuild.
    pub target: Sha256Digest,
    /// The image, by name in both bundles.
    pub image: String,
    /// In ascending chunk order, stored back to back in the payload.
    pub patches: Vec<Patch>,
}

/// One chunk of the target image as a zstd frame against `reference_length` bytes of the
/// base image at `reference_offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    pub chunk: u32,
    pub reference_offset: u64,
    pub reference_length: u32,
    /// From the payload start.
    pub stored_offset: u64,
    pub stored_length: u32,
    pub stored_sha256: Sha256Digest,
}

/// What [`write_delta`] produced.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaSummary {
    /// Chunks of the target image that the base image lacks.
    pub missing_chunks: usize,
    /// Their stored bytes in the target bundle: what a robot fetches without the delta.
    pub missing_stored_bytes: u64,
    /// Chunks with a patch (those whose patch came out smaller than their stored bytes).
    pub patches: usize,
    pub patch_bytes: u64,
    pub delta_length: u64,
}

/// A delta whose signature checked out.
#[derive(Debug, Clone)]
pub struct VerifiedDelta {
    manifest: DeltaManifest,
    signed_by: Vec<KeyId>,
    payload_start: u64,
}

/// The start of a delta's payload, from its first [`HEADER_LENGTH`] bytes: what a reader
/// fetches before the payload (header, manifest and signatures).
pub fn delta_payload_start(header: &[u8]) -> Result<u64> {
    Ok(DeltaHeader::parse(header)?.payload_start())
}

impl VerifiedDelta {
    /// Reads and verifies header, manifest and signatures from `reader` (at the delta's first
    /// byte); reads nothing of the payload.
    pub fn open(reader: &mut dyn Read, keyring: &Keyring) -> Result<VerifiedDelta> {
        let mut header_bytes = [0u8; HEADER_LENGTH];
        reader
            .read_exact(&mut header_bytes)
            .map_err(|e| Error::read(Part::Header, e))?;
        let header = DeltaHeader::parse(&header_bytes)?;
        let manifest_bytes = read_exactly(reader, header.manifest_length, Part::Manifest)?;
        let block = read_exactly(reader, header.signature_block_length, Part::SignatureBlock)?;
        let message = signed_message_in(DELTA_SIGNATURE_CONTEXT, &header_bytes, &manifest_bytes);
        let signed_by = verify_signatures(&block, &message, keyring)?;
        let manifest: DeltaManifest = postcard::from_bytes(&manifest_bytes)
            .map_err(|e| Error::DeltaInvalid(format!("manifest does not decode: {e}")))?;
        manifest.validate(header.payload_length)?;
        Ok(VerifiedDelta {
            manifest,
            signed_by,
            payload_start: header.payload_start(),
        })
    }

    pub fn manifest(&self) -> &DeltaManifest {
        &self.manifest
    }

    pub fn signed_by(&self) -> &[KeyId] {
        &self.signed_by
    }

    /// Byte range in the delta file of the stored bytes of patches `patches`, which are
    /// contiguous there.
    pub fn patches_file_range(&self, patches: Range<usize>) -> Range<u64> {
        let first = &self.manifest.patches[patches.start];
        let last = &self.manifest.patches[patches.end - 1];
        self.payload_start + first.stored_offset
            ..self.payload_start + last.stored_offset + u64::from(last.stored_length)
    }

    /// Rebuilds the target chunk of `patch` from its stored bytes and its reference (the base
    /// image bytes it names), checked against `target` (the target bundle's verified entry):
    /// the stored bytes against the signed delta before the decompressor sees them, the result
    /// against the signed chunk table.
    pub fn apply(
        &self,
        patch: &Patch,
        stored: &[u8],
        reference: &[u8],
        target: &ImageEntry,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.apply_into(patch, stored, reference, target, &mut out)?;
        Ok(out)
    }

    /// [`Self::apply`] into `out` (resized to the chunk), reusing its allocation.
    pub fn apply_into(
        &self,
        patch: &Patch,
        stored: &[u8],
        reference: &[u8],
        target: &ImageEntry,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let index = patch.chunk as usize;
        let chunk = target.chunks.get(index).ok_or_else(|| Error::NoSuchChunk {
            image: target.name.clone(),
            index,
            count: target.chunks.len(),
        })?;
        if stored.len() != patch.stored_length as usize
            || reference.len() != patch.reference_length as usize
        {
            return Err(Error::DeltaInvalid(format!(
                "patch of chunk {index}: {} stored and {} reference bytes given, {} and {} expected",
                stored.len(),
                reference.len(),
                patch.stored_length,
                patch.reference_length
            )));
        }
        check_digest(target, index, stored, &patch.stored_sha256)?;
        out.resize(chunk.length as usize, 0);
        decompress_exact(stored, out, reference, target, index)?;
        check_digest(target, index, out, &chunk.sha256)
    }
}

impl DeltaManifest {
    fn validate(&self, payload_length: u64) -> Result<()> {
        let mut stored_at = 0u64;
        let mut previous: Option<u32> = None;
        for patch in &self.patches {
            let invalid =
                |what: &str| Error::DeltaInvalid(format!("patch of chunk {}: {what}", patch.chunk));
            if previous.is_some_and(|previous| patch.chunk <= previous) {
                return Err(invalid("not in ascending chunk order"));
            }
            if patch.stored_offset != stored_at {
                return Err(invalid("does not follow the previous patch in the payload"));
            }
            if !(1..=MAX_CHUNK_LENGTH).contains(&patch.stored_length) {
                return Err(invalid("stored length out of bounds"));
            }
            if !(1..=MAX_REFERENCE_LENGTH).contains(&patch.reference_length) {
                return Err(invalid("reference length out of bounds"));
            }
            previous = Some(patch.chunk);
            stored_at += u64::from(patch.stored_length);
        }
        if stored_at != payload_length {
            return Err(Error::DeltaInvalid(format!(
                "patches take {stored_at} payload bytes, the header says {payload_length}"
            )));
        }
        Ok(())
    }
}

/// The delta header: a bundle header's layout with [`DELTA_MAGIC`].
struct DeltaHeader {
    payload_length: u64,
    manifest_length: u32,
    signature_block_length: u32,
}

impl DeltaHeader {
    fn encode(&self) -> [u8; HEADER_LENGTH] {
        let mut bytes = [0u8; HEADER_LENGTH];
        bytes[0..8].copy_from_slice(&DELTA_MAGIC);
        bytes[8..12].copy_from_slice(&DELTA_FORMAT_VERSION.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.payload_length.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.manifest_length.to_le_bytes());
        bytes[28..32].copy_from_slice(&self.signature_block_length.to_le_bytes());
        bytes
    }

    fn parse(bytes: &[u8]) -> Result<DeltaHeader> {
        let Some(bytes) = bytes.get(..HEADER_LENGTH) else {
            return Err(Error::Truncated { part: Part::Header });
        };
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        if bytes[0..8] != DELTA_MAGIC {
            return Err(Error::DeltaInvalid(
                "not a Rota delta (its first bytes are not the delta magic)".into(),
            ));
        }
        if u32_at(8) != DELTA_FORMAT_VERSION || u32_at(12) != 0 {
            return Err(Error::DeltaInvalid(format!(
                "delta format version {} flags {:#x}: this reader knows version {DELTA_FORMAT_VERSION} without flags",
                u32_at(8),
                u32_at(12)
            )));
        }
        let header = DeltaHeader {
            payload_length: u64::from_le_bytes(bytes[16..24].try_into().expect("8")),
            manifest_length: u32_at(24),
            signature_block_length: u32_at(28),
        };
        if header.manifest_length > MAX_DELTA_MANIFEST_LENGTH
            || header.signature_block_length > crate::header::MAX_SIGNATURE_BLOCK_LENGTH
        {
            return Err(Error::DeltaInvalid(
                "manifest or signature block above its limit".into(),
            ));
        }
        Ok(header)
    }

    fn payload_start(&self) -> u64 {
        HEADER_LENGTH as u64
            + u64::from(self.manifest_length)
            + u64::from(self.signature_block_length)
    }
}

fn read_exactly(reader: &mut dyn Read, length: u32, part: Part) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; length as usize];
    reader.read_exact(&mut bytes).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated { part: part.clone() },
        _ => Error::read(part.clone(), e),
    })?;
    Ok(bytes)
}

/// Where a target image and its base are read from: their decompressed bytes.
pub struct DeltaInputs<'a> {
    pub base: &'a VerifiedManifest,
    pub base_image: &'a File,
    pub target: &'a VerifiedManifest,
    pub target_image: &'a File,
    /// The image, by name in both bundles.
    pub image: &'a str,
}

/// Makes and writes the delta from `inputs.base` to `inputs.target`, signed with `keys`.
///
/// For each chunk of the target image that the base lacks, the reference is the base image
/// around where that content most likely was: at the chunk's offset moved by the shift of the
/// nearest chunk before it that the base has (content-defined chunks anchor where unchanged
/// content moved to), [`REFERENCE_MARGIN`] on each side. A changed file is usually there in
/// its old version, and metadata blocks changed in place are there exactly. Patches that do
/// not come out smaller than the chunk's stored bytes are left out.
pub fn write_delta(
    inputs: &DeltaInputs<'_>,
    level: i32,
    workers: usize,
    keys: &[SigningKey],
    out: &mut dyn Write,
) -> Result<DeltaSummary> {
    if keys.is_empty() {
        return Err(Error::NoSigningKey);
    }
    let base = inputs.base.image(inputs.base.image_index(inputs.image)?)?;
    let target = inputs
        .target
        .image(inputs.target.image_index(inputs.image)?)?;
    let have: HashMap<Sha256Digest, u64> = base
        .chunks
        .iter()
        .map(|chunk| (chunk.sha256, chunk.offset))
        .collect();
    let mut missing = Vec::new();
    let mut shift = 0i128;
    for (index, chunk) in target.chunks.iter().enumerate() {
        if let Some(&at) = have.get(&chunk.sha256) {
            shift = i128::from(at) - i128::from(chunk.offset);
            continue;
        }
        let centre = (i128::from(chunk.offset) + shift).clamp(0, i128::from(base.size)) as u64;
        let start = centre.saturating_sub(REFERENCE_MARGIN);
        let end = (centre + u64::from(chunk.length) + REFERENCE_MARGIN).min(base.size);
        missing.push((index, start..end));
    }
    let made = make_patches(inputs, target, &missing, level, workers)?;
    let mut patches = Vec::new();
    let mut payload = Vec::new();
    for ((index, reference), stored) in missing.iter().zip(made) {
        let Some(stored) = stored.filter(|stored| {
            stored.len() < target.chunks[*index].stored_length as usize && !reference.is_empty()
        }) else {
            continue;
        };
        patches.push(Patch {
            chunk: *index as u32,
            reference_offset: reference.start,
            reference_length: (reference.end - reference.start) as u32,
            stored_offset: payload.len() as u64,
            stored_length: stored.len() as u32,
            stored_sha256: Sha256Digest::of(&stored),
        });
        payload.extend_from_slice(&stored);
    }
    let manifest = DeltaManifest {
        base: inputs.base.digest(),
        target: inputs.target.digest(),
        image: inputs.image.to_owned(),
        patches,
    };
    let manifest_bytes = postcard::to_allocvec(&manifest).expect("a delta manifest encodes");
    let header = DeltaHeader {
        payload_length: payload.len() as u64,
        manifest_length: manifest_bytes.len() as u32,
        signature_block_length: signature_block_length(keys.len()) as u32,
    };
    let header_bytes = header.encode();
    let message = signed_message_in(DELTA_SIGNATURE_CONTEXT, &header_bytes, &manifest_bytes);
    let block = encode_signature_block(keys, &message);
    for part in [&header_bytes[..], &manifest_bytes, &block, &payload] {
        out.write_all(part).map_err(Error::Write)?;
    }
    Ok(DeltaSummary {
        missing_chunks: missing.len(),
        missing_stored_bytes: missing
            .iter()
            .map(|(index, _)| u64::from(target.chunks[*index].stored_length))
            .sum(),
        patches: manifest.patches.len(),
        patch_bytes: payload.len() as u64,
        delta_length: header.payload_start() + payload.len() as u64,
    })
}

/// Each missing chunk's patch (`None` where reading failed to give one), made on `workers`
/// threads: a high zstd level against a megabyte of reference takes a while per chunk.
fn make_patches(
    inputs: &DeltaInputs<'_>,
    target: &ImageEntry,
    missing: &[(usize, Range<u64>)],
    level: i32,
    workers: usize,
) -> Result<Vec<Option<Vec<u8>>>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Vec<u8>>>> = Mutex::new(vec![None; missing.len()]);
    let failure: Mutex<Option<io::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(|| loop {
                let at = next.fetch_add(1, Ordering::Relaxed);
                let Some((index, reference)) = missing.get(at) else {
                    return;
                };
                let chunk = &target.chunks[*index];
                let made = (|| {
                    let mut data = vec![0u8; chunk.length as usize];
                    inputs.target_image.read_exact_at(&mut data, chunk.offset)?;
                    let mut prefix = vec![0u8; (reference.end - reference.start) as usize];
                    inputs
                        .base_image
                        .read_exact_at(&mut prefix, reference.start)?;
                    compress_against(&prefix, &data, level)
                })();
                match made {
                    Ok(stored) => results.lock().expect("not poisoned")[at] = Some(stored),
                    Err(error) => {
                        failure.lock().expect("not poisoned").get_or_insert(error);
                        return;
                    }
                }
            });
        }
    });
    if let Some(source) = failure.into_inner().expect("not poisoned") {
        return Err(Error::ImageInput {
            image: inputs.image.to_owned(),
            path: None,
            source,
        });
    }
    Ok(results.into_inner().expect("not poisoned"))
}
