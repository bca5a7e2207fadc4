//! Chunks rebuilt from a precomputed delta (`rota-image delta`, `rota_bundle::delta`): each
//! missing chunk as a small zstd frame against a region of the booted slot's image.
//!
//! A delta is an optimisation, never a requirement: one that cannot be fetched, is not signed
//! by a trusted key, is for another bundle, or whose base is not what the booted slot holds is
//! set aside with a warning, and a patch that does not rebuild its chunk exactly (the booted
//! slot changed under its reference, a damaged transfer) is replaced by fetching the chunk
//! from the bundle. Every rebuilt chunk is checked against the new bundle's signed chunk
//! table before it is written.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use rota_bundle::delta::{delta_payload_start, VerifiedDelta};
use rota_bundle::{ImageEntry, Keyring, HEADER_LENGTH};

use super::checkpoint::Checkpointer;
use super::source::{error_chain, BundleSource, HttpFetcher};
use super::InstallError;
use crate::config::DownloadConfig;
use crate::progress::Progress;
use crate::state::Sha256Digest;

/// A verified delta that applies to this install.
pub(super) struct Patches {
    source: BundleSource,
    http: Option<HttpFetcher>,
    delta: VerifiedDelta,
}

/// What the bundle being installed and the booted slot are, for matching a delta.
pub(super) struct Wanted<'a> {
    pub target: &'a Sha256Digest,
    /// The bundle the booted slot holds, by the state file.
    pub booted: Option<&'a Sha256Digest>,
    pub image: &'a str,
}

impl Patches {
    /// The delta at `source` when it is usable for `wanted`; `None` (with the reason logged)
    /// otherwise. `bundle_http` is the bundle's client, when it has one: the delta shares its
    /// connection pool and I/O thread (without its bearer token, which is for the bundle's
    /// origin).
    pub(super) fn open(
        source: &BundleSource,
        download: &DownloadConfig,
        bundle_http: Option<&HttpFetcher>,
        keyring: &Keyring,
        wanted: &Wanted<'_>,
        until: Instant,
    ) -> Option<Patches> {
        let http = match (source, bundle_http) {
            (BundleSource::Http(_), Some(shared)) => Some(shared.clone().with_bearer(None)),
            (BundleSource::Http(_), None) => match HttpFetcher::new(download) {
                Ok(http) => Some(http),
                Err(error) => {
                    log::warn!(
                        "delta {}: {error}; installing without it",
                        source.describe()
                    );
                    return None;
                }
            },
            _ => None,
        };
        let opened = (|| -> Result<VerifiedDelta, String> {
            let mut header = [0u8; HEADER_LENGTH];
            source
                .open_range(0, Some(HEADER_LENGTH as u64), http.as_ref(), Some(until))
                .map_err(|e| error_chain(&e))?
                .reader
                .read_exact(&mut header)
                .map_err(|e| format!("reading its header: {e}"))?;
            let payload_start = delta_payload_start(&header).map_err(|e| e.to_string())?;
            let rest = source
                .open_range(
                    HEADER_LENGTH as u64,
                    Some(payload_start),
                    http.as_ref(),
                    Some(until),
                )
                .map_err(|e| error_chain(&e))?;
            let mut reader = io::Cursor::new(header).chain(rest.reader.take(payload_start));
            VerifiedDelta::open(&mut reader, keyring).map_err(|e| e.to_string())
        })();
        let delta = match opened {
            Ok(delta) => delta,
            Err(reason) => {
                log::warn!(
                    "delta {}: {reason}; installing without it",
                    source.describe()
                );
                return None;
            }
        };
        let manifest = delta.manifest();
        let mismatch = if manifest.target != *wanted.target {
            Some(format!(
                "it rebuilds bundle {}, not {}",
                manifest.target, wanted.target
            ))
        } else if wanted.booted != Some(&manifest.base) {
            Some(format!(
                "it applies to a slot holding bundle {}, the booted slot holds {}",
                manifest.base,
                wanted
                    .booted
                    .map_or_else(|| "an unknown one".to_owned(), |d| d.to_string())
            ))
        } else if manifest.image != wanted.image {
            Some(format!("it is of image {:?}", manifest.image))
        } else {
            None
        };
        if let Some(reason) = mismatch {
            log::warn!(
                "delta {}: {reason}; installing without it",
                source.describe()
            );
            return None;
        }
        log::info!(
            "delta {}: {} patches",
            source.describe(),
            manifest.patches.len()
        );
        Some(Patches {
            source: source.clone(),
            http,
            delta,
        })
    }

    /// The patch of chunk `index`, by its position in the delta.
    pub(super) fn patch_of(&self, index: usize) -> Option<usize> {
        let patches = &self.delta.manifest().patches;
        patches
            .binary_search_by_key(&index, |patch| patch.chunk as usize)
            .ok()
    }

    /// Stored bytes of the patch of chunk `index`.
    pub(super) fn patch_bytes(&self, index: usize) -> Option<u64> {
        self.patch_of(index)
            .map(|at| u64::from(self.delta.manifest().patches[at].stored_length))
    }

    /// Rebuilds chunks `chunks` (each has a patch) from one request to the delta and the
    /// booted slot, writing each to the target slot; returns the first chunk not rebuilt
    /// (`chunks.end` when all were) and the delta bytes that arrived. Only a write to the target
    /// slot is an error: anything else leaves the rest of the run to be fetched.
    ///
    /// `reference` is a buffer to read references into (the verifying pool's window: the
    /// largest buffer of the install, free between fetches).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rebuild(
        &self,
        chunks: Range<usize>,
        entry: &ImageEntry,
        booted: &File,
        reference: &mut Vec<u8>,
        checkpoint: &mut Checkpointer,
        progress: &mut dyn Progress,
        until: Instant,
    ) -> Result<(usize, u64), InstallError> {
        let (Some(first), Some(last)) =
            (self.patch_of(chunks.start), self.patch_of(chunks.end - 1))
        else {
            return Ok((chunks.start, 0));
        };
        let range = self.delta.patches_file_range(first..last + 1);
        let mut reader = match self.source.open_range(
            range.start,
            Some(range.end),
            self.http.as_ref(),
            Some(until),
        ) {
            Ok(opened) => opened.reader,
            Err(error) => {
                log::warn!(
                    "delta: {}; fetching its chunks instead",
                    error_chain(&error)
                );
                return Ok((chunks.start, 0));
            }
        };
        let (mut stored, mut data) = (Vec::new(), Vec::new());
        let mut arrived = 0;
        for (index, patch) in chunks.clone().zip(&self.delta.manifest().patches[first..]) {
            stored.resize(patch.stored_length as usize, 0);
            reference.resize(patch.reference_length as usize, 0);
            let rebuilt = reader
                .read_exact(&mut stored)
                .map_err(|e| format!("reading patch of chunk {index}: {e}"))
                .and_then(|()| {
                    arrived += stored.len() as u64;
                    booted
                        .read_exact_at(reference, patch.reference_offset)
                        .map_err(|e| format!("reading the booted slot: {e}"))
                })
                .and_then(|()| {
                    self.delta
                        .apply_into(patch, &stored, reference, entry, &mut data)
                        .map_err(|e| e.to_string())
                });
            if let Err(reason) = rebuilt {
                log::warn!("delta: {reason}; fetching chunks {index}.. from the bundle");
                return Ok((index, arrived));
            }
            let chunk = &entry.chunks[index];
            checkpoint
                .slot
                .write_all_at(&data, chunk.offset)
                .map_err(|source| checkpoint.slot_error("write", source))?;
            let end = chunk.offset + u64::from(chunk.length);
            checkpoint.run_written(index + 1, end)?;
            progress.advance(end);
        }
        Ok((chunks.end, arrived))
    }
}
