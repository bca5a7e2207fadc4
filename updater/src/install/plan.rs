//! Which chunk of the new image comes from where: copied from the booted slot when a chunk with
//! the same content hash is there, fetched from the bundle otherwise.
//!
//! What the booted slot holds is known from the chunk index an install leaves beside the state
//! file (`slot-a.chunks`, `slot-b.chunks`): the image's chunk table, recorded once the slot was
//! written and verified. The index is a hint, never trusted: every chunk copied from the booted
//! slot is read back and hashed against the new signed manifest before it is written, so a slot
//! that changed under us (or a damaged index) costs a download, never a wrong byte.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rota_bootctl::Slot;
use rota_bundle::ImageEntry;
use serde::{Deserialize, Serialize};

use crate::atomic_file;
use crate::state::Sha256Digest;

/// Reused chunks between two fetched runs whose stored bytes are at most this are fetched
/// too, in the same request. Small: the next request is sent while the current one is read, so
/// a request costs little, and every byte fetched along is a byte paid for (measured on the
/// Debian pairs of `scripts/bench delta`: 64 KiB fetched 10 % more than 4 KiB for 20 fewer
/// requests). Runs of zero chunks (free space: a few bytes stored each) are what it joins.
pub const COALESCE_GAP_BYTES: u64 = 4 << 10;

const INDEX_MAGIC: &[u8; 8] = b"ROTAIDX1";

/// The chunk table of the image a slot holds, as written by the install that put it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkIndex {
    /// The bundle whose image the slot holds (the state file's record of the slot names it too:
    /// an index for another bundle is ignored).
    pub bundle: Sha256Digest,
    pub chunks: Vec<IndexedChunk>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedChunk {
    pub offset: u64,
    pub length: u32,
    pub sha256: Sha256Digest,
}

impl ChunkIndex {
    pub fn of_image(bundle: Sha256Digest, entry: &ImageEntry) -> ChunkIndex {
        ChunkIndex {
            bundle,
            chunks: entry
                .chunks
                .iter()
                .map(|chunk| IndexedChunk {
                    offset: chunk.offset,
                    length: chunk.length,
                    sha256: chunk.sha256,
                })
                .collect(),
        }
    }

    /// Where the index of `slot` lives: beside the state file.
    pub fn path(state_file: &Path, slot: Slot) -> PathBuf {
        let name = format!("slot-{}.chunks", slot.to_string().to_lowercase());
        state_file.with_file_name(name)
    }

    /// Replaced atomically; about 44 bytes per chunk (700 KiB for a 1 GiB image).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut bytes = INDEX_MAGIC.to_vec();
        bytes.extend(postcard::to_stdvec(self).map_err(io::Error::other)?);
        atomic_file::replace(path, &bytes, 0o644)
    }

    /// The index at `path` when it is there, readable, and about `bundle`; `None` otherwise
    /// (nothing is reused then, which is always safe).
    pub fn load(path: &Path, bundle: &Sha256Digest) -> Option<ChunkIndex> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                log::warn!("chunk index {}: {error}; nothing reused", path.display());
                return None;
            }
        };
        let index: ChunkIndex = match bytes
            .strip_prefix(INDEX_MAGIC)
            .and_then(|body| postcard::from_bytes(body).ok())
        {
            Some(index) => index,
            None => {
                log::warn!(
                    "chunk index {} does not decode; nothing reused",
                    path.display()
                );
                return None;
            }
        };
        if index.bundle != *bundle {
            log::info!(
                "chunk index {} is of bundle {}, the slot holds {bundle}; nothing reused",
                path.display(),
                index.bundle
            );
            return None;
        }
        Some(index)
    }

    /// Where each content hash can be read in the slot (the first place, for duplicates).
    pub fn locations(&self) -> HashMap<Sha256Digest, u64> {
        let mut map = HashMap::with_capacity(self.chunks.len());
        for chunk in &self.chunks {
            map.entry(chunk.sha256).or_insert(chunk.offset);
        }
        map
    }
}

/// Where each content hash can be read in the first `limit` bytes of the slot at `device`,
/// found by cutting them into chunks as a bundle writer with the default sizes does: for a
/// booted slot that has no index (flashed from a golden image, not installed). Costs one read
/// and one SHA-256 pass of those bytes; chunks of a bundle cut with other sizes mostly do not
/// match, and are fetched.
pub fn scan_slot(device: &Path, limit: u64) -> io::Result<HashMap<Sha256Digest, u64>> {
    use std::io::Read;
    let file = fs::File::open(device)?;
    let mut map = HashMap::new();
    // Large reads: the chunker's own buffer is small, and a slot is read sequentially once.
    let reader = io::BufReader::with_capacity(1 << 20, file.take(limit));
    rota_bundle::for_each_chunk(reader, rota_bundle::ChunkSizes::DEFAULT, |offset, bytes| {
        map.entry(Sha256Digest::of(bytes)).or_insert(offset);
    })?;
    Ok(map)
}

/// Removes the index of a slot about to be overwritten.
pub fn forget(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// One step of a plan, over consecutive chunks of the new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Copy from the booted slot (each chunk at its location there), checking each one.
    Reuse(Range<usize>),
    /// Fetch the chunks' stored bytes from the bundle in one request.
    Fetch(Range<usize>),
    /// Rebuild the chunks from a precomputed delta and the booted slot, one request to the
    /// delta for all of them.
    Patch(Range<usize>),
}

/// Every chunk from the first one still missing to the image's end, in image order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Image bytes copied from the booted slot.
    pub reuse_bytes: u64,
    /// Stored (compressed) bytes fetched from the bundle.
    pub fetch_bytes: u64,
    /// Image bytes the fetched chunks decompress to.
    pub fetch_image_bytes: u64,
    /// Stored bytes of the delta's patches fetched instead of chunks.
    pub patch_bytes: u64,
    pub requests: usize,
}

impl Plan {
    /// Chunks from `first` on: those found in `have` are reused, the others fetched in runs,
    /// one request each (gaps of at most [`COALESCE_GAP_BYTES`] stored bytes between fetched
    /// runs are fetched too). A request that breaks is resumed after its last whole chunk, so
    /// a long run costs nothing more than several short ones.
    pub fn new(entry: &ImageEntry, first: usize, have: &HashMap<Sha256Digest, u64>) -> Plan {
        let chunks = &entry.chunks;
        let reusable = |index: usize| have.contains_key(&chunks[index].sha256);
        // Runs of the same kind.
        let mut runs: Vec<(bool, Range<usize>)> = Vec::new();
        for index in first..chunks.len() {
            let reuse = reusable(index);
            match runs.last_mut() {
                Some((kind, run)) if *kind == reuse => run.end = index + 1,
                _ => runs.push((reuse, index..index + 1)),
            }
        }
        // A short reused run between two fetched ones is fetched with them.
        let stored = |run: &Range<usize>| -> u64 {
            chunks[run.clone()]
                .iter()
                .map(|chunk| u64::from(chunk.stored_length))
                .sum()
        };
        let mut merged: Vec<(bool, Range<usize>)> = Vec::new();
        for (position, (reuse, run)) in runs.iter().enumerate() {
            let between_fetches = position > 0 && position + 1 < runs.len();
            let fetch = !reuse || (between_fetches && stored(run) <= COALESCE_GAP_BYTES);
            match merged.last_mut() {
                Some((false, previous)) if fetch => previous.end = run.end,
                _ => merged.push((!fetch, run.clone())),
            }
        }
        let mut plan = Plan::default();
        for (reuse, run) in merged {
            if reuse {
                plan.reuse_bytes += chunks[run.clone()]
                    .iter()
                    .map(|chunk| u64::from(chunk.length))
                    .sum::<u64>();
                plan.steps.push(Step::Reuse(run));
                continue;
            }
            for chunk in &chunks[run.clone()] {
                plan.fetch_bytes += u64::from(chunk.stored_length);
                plan.fetch_image_bytes += u64::from(chunk.length);
            }
            plan.steps.push(Step::Fetch(run));
        }
        plan.requests = plan
            .steps
            .iter()
            .filter(|step| matches!(step, Step::Fetch(_)))
            .count();
        plan
    }

    /// The plan with every fetched chunk that has a patch (`patch_bytes(index)`: its stored
    /// size) rebuilt from it instead, when the patch is smaller.
    pub fn with_patches(
        self,
        entry: &ImageEntry,
        patch_bytes: impl Fn(usize) -> Option<u64>,
    ) -> Plan {
        let mut plan = Plan {
            steps: Vec::new(),
            reuse_bytes: self.reuse_bytes,
            ..Plan::default()
        };
        for step in self.steps {
            let Step::Fetch(run) = step else {
                plan.steps.push(step);
                continue;
            };
            for index in run {
                let chunk = &entry.chunks[index];
                let patched =
                    patch_bytes(index).filter(|&bytes| bytes < u64::from(chunk.stored_length));
                match (patched, plan.steps.last_mut()) {
                    (Some(_), Some(Step::Patch(last))) if last.end == index => last.end += 1,
                    (None, Some(Step::Fetch(last))) if last.end == index => last.end += 1,
                    (Some(_), _) => plan.steps.push(Step::Patch(index..index + 1)),
                    (None, _) => plan.steps.push(Step::Fetch(index..index + 1)),
                }
                match patched {
                    Some(bytes) => plan.patch_bytes += bytes,
                    None => {
                        plan.fetch_bytes += u64::from(chunk.stored_length);
                        plan.fetch_image_bytes += u64::from(chunk.length);
                    }
                }
            }
        }
        plan.requests = plan
            .steps
            .iter()
            .filter(|step| !matches!(step, Step::Reuse(_)))
            .count();
        plan
    }

    /// Fetch everything from `first` on (a source that cannot skip, or nothing to reuse).
    pub fn fetch_all(entry: &ImageEntry, first: usize) -> Plan {
        Plan::new(entry, first, &HashMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_bundle::{Chunk, Compression, SlotClass};

    fn digest(n: u8) -> [u8; 32] {
        [n; 32]
    }

    /// An image of chunks with these content "hashes", each 64 KiB stored as 32 KiB.
    fn image(contents: &[u8]) -> ImageEntry {
        let chunks = contents
            .iter()
            .enumerate()
            .map(|(index, &content)| Chunk {
                offset: index as u64 * 65536,
                length: 65536,
                sha256: Sha256Digest(digest(content)),
                stored_offset: index as u64 * 32768,
                stored_length: 32768,
                stored_sha256: Sha256Digest(digest(content)),
            })
            .collect::<Vec<_>>();
        ImageEntry {
            name: "rootfs".into(),
            slot_class: SlotClass::Rootfs,
            size: contents.len() as u64 * 65536,
            sha256: Sha256Digest([0; 32]),
            compression: Compression::Zstd,
            payload_offset: 0,
            payload_length: contents.len() as u64 * 32768,
            chunks,
        }
    }

    fn have(contents: &[u8]) -> HashMap<Sha256Digest, u64> {
        contents
            .iter()
            .enumerate()
            .map(|(index, &content)| (Sha256Digest(digest(content)), index as u64 * 65536))
            .collect()
    }

    #[test]
    fn identical_image_fetches_nothing() {
        let plan = Plan::new(&image(&[1, 2, 3, 4]), 0, &have(&[1, 2, 3, 4]));
        assert_eq!(plan.steps, [Step::Reuse(0..4)]);
        assert_eq!((plan.fetch_bytes, plan.requests), (0, 0));
        assert_eq!(plan.reuse_bytes, 4 * 65536);
    }

    #[test]
    fn changed_chunks_are_fetched_and_short_gaps_coalesced() {
        // 30 and 50 are new; the reused chunk between them costs 32 KiB stored: asked apart.
        let mut entry = image(&[1, 2, 30, 4, 50, 6, 7, 8, 9]);
        let old = have(&[1, 2, 4, 6, 7, 8, 9]);
        let plan = Plan::new(&entry, 0, &old);
        assert_eq!(
            plan.steps,
            [
                Step::Reuse(0..2),
                Step::Fetch(2..3),
                Step::Reuse(3..4),
                Step::Fetch(4..5),
                Step::Reuse(5..9)
            ]
        );
        assert_eq!((plan.requests, plan.fetch_bytes), (2, 2 * 32768));
        // A gap that compresses to almost nothing (zeros) is fetched along: one request.
        entry.chunks[3].stored_length = 40;
        let plan = Plan::new(&entry, 0, &old);
        assert_eq!(
            plan.steps,
            [Step::Reuse(0..2), Step::Fetch(2..5), Step::Reuse(5..9)]
        );
        assert_eq!((plan.requests, plan.fetch_bytes), (1, 2 * 32768 + 40));
    }

    #[test]
    fn long_reused_runs_split_fetches() {
        let old: Vec<u8> = (1..=10).collect();
        let mut new = old.clone();
        new[0] = 100;
        new[9] = 110;
        let plan = Plan::new(&image(&new), 0, &have(&old));
        assert_eq!(
            plan.steps,
            [Step::Fetch(0..1), Step::Reuse(1..9), Step::Fetch(9..10)]
        );
        assert_eq!(plan.requests, 2);
    }

    #[test]
    fn fetched_chunks_with_a_smaller_patch_are_rebuilt_from_it() {
        // 30, 40 and 50 are new; 30 and 40 have patches, 50's is not smaller than the chunk.
        let entry = image(&[1, 30, 40, 50, 5]);
        let plan = Plan::new(&entry, 0, &have(&[1, 5]));
        assert_eq!(
            plan.steps,
            [Step::Reuse(0..1), Step::Fetch(1..4), Step::Reuse(4..5)]
        );
        let patches = |index: usize| match index {
            1 | 2 => Some(1000),
            3 => Some(32768),
            _ => None,
        };
        let plan = plan.with_patches(&entry, patches);
        assert_eq!(
            plan.steps,
            [
                Step::Reuse(0..1),
                Step::Patch(1..3),
                Step::Fetch(3..4),
                Step::Reuse(4..5)
            ]
        );
        assert_eq!(
            (plan.patch_bytes, plan.fetch_bytes, plan.requests),
            (2000, 32768, 2)
        );
        assert_eq!(plan.reuse_bytes, 2 * 65536);
    }

    #[test]
    fn a_resume_plans_from_its_first_missing_chunk() {
        let plan = Plan::fetch_all(&image(&[1, 2, 3]), 2);
        assert_eq!(plan.steps, [Step::Fetch(2..3)]);
        assert_eq!(Plan::fetch_all(&image(&[1, 2, 3]), 3).steps, []);
    }

    #[test]
    fn index_round_trips_and_is_ignored_for_another_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let entry = image(&[1, 2, 2]);
        let index = ChunkIndex::of_image(Sha256Digest([9; 32]), &entry);
        let path = ChunkIndex::path(&dir.path().join("state"), Slot::B);
        assert!(path.ends_with("slot-b.chunks"));
        index.save(&path).unwrap();
        assert_eq!(
            ChunkIndex::load(&path, &Sha256Digest([9; 32])),
            Some(index.clone())
        );
        assert_eq!(ChunkIndex::load(&path, &Sha256Digest([8; 32])), None);
        // Duplicates: the first place.
        assert_eq!(index.locations()[&Sha256Digest(digest(2))], 65536);
        fs::write(&path, b"garbage").unwrap();
        assert_eq!(ChunkIndex::load(&path, &Sha256Digest([9; 32])), None);
        forget(&path).unwrap();
        forget(&path).unwrap();
    }
}
