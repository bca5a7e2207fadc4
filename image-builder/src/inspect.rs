//! `rota-image inspect` and `rota-image verify`: what a bundle holds, and whether it is intact
//! and signed by a trusted key.
//!
//! rota-bundle hands out manifest fields only after a trusted signature checked out, so
//! `inspect` without a keyring can only say who signed the bundle (their key ids).

use rota_bundle::{BundleReader, Error as BundleError, Keyring, Manifest, ReadOptions};
use serde::Serialize;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Read buffer for bundles: large, so each chunk costs few syscalls.
const READ_BUFFER: usize = 1 << 20;

/// The verdict on one bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub bundle: PathBuf,
    /// True when the signature and every chunk checked out.
    pub valid: bool,
    /// Key ids of the trusted keys whose signatures verified.
    pub signed_by: Vec<String>,
    /// Why the bundle is invalid (absent when valid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Images checked, with their sizes and chunk counts.
    pub images: Vec<CheckedImage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckedImage {
    pub name: String,
    pub size: u64,
    pub chunks: usize,
}

/// Something other than the bundle's content went wrong: the file or keyring cannot be read.
#[derive(Debug, Error)]
pub enum CheckError {
    #[error("cannot open the bundle {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the keyring {path}")]
    Keyring {
        path: PathBuf,
        #[source]
        source: rota_bundle::KeyError,
    },
    #[error("I/O error reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: BundleError,
    },
}

/// Loads every `*.pub` of `dir`.
pub fn load_keyring(dir: &Path) -> Result<Keyring, CheckError> {
    Keyring::load_dir(dir).map_err(|source| CheckError::Keyring {
        path: dir.to_path_buf(),
        source,
    })
}

fn open(path: &Path) -> Result<BufReader<File>, CheckError> {
    let file = File::open(path).map_err(|source| CheckError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(BufReader::with_capacity(READ_BUFFER, file))
}

/// An I/O failure is the caller's problem (exit 2); everything else says the bundle is bad.
fn is_io(error: &BundleError) -> bool {
    matches!(error, BundleError::Read { .. })
}

/// Verifies the signature, then streams every image through its chunk hashes (on all cores).
/// `full_image_hash` also checks each image's whole-file sha256 (one core's speed).
pub fn verify(
    path: &Path,
    keyring: &Keyring,
    full_image_hash: bool,
) -> Result<Verdict, CheckError> {
    let mut verdict = Verdict {
        bundle: path.to_path_buf(),
        valid: false,
        signed_by: Vec::new(),
        reason: None,
        images: Vec::new(),
    };
    let options = ReadOptions {
        check_image_sha256: full_image_hash,
        ..ReadOptions::default()
    };
    let result = BundleReader::open_with(open(path)?, keyring, options).and_then(|bundle| {
        verdict.signed_by = bundle.signed_by().iter().map(|id| id.to_string()).collect();
        bundle.verify_all()
    });
    match result {
        Ok(images) => {
            verdict.valid = true;
            verdict.images = images
                .into_iter()
                .map(|image| CheckedImage {
                    name: image.name,
                    size: image.size,
                    chunks: image.chunks,
                })
                .collect();
        }
        Err(error) if is_io(&error) => {
            return Err(CheckError::Read {
                path: path.to_path_buf(),
                source: error,
            })
        }
        Err(error) => verdict.reason = Some(error_chain(&error)),
    }
    Ok(verdict)
}

/// What `inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub bundle: PathBuf,
    pub file_size: u64,
    /// Whether the signature was checked against a keyring and held.
    pub signature: SignatureStatus,
    /// Key ids that signed it (verified ones when a keyring was given).
    pub signed_by: Vec<String>,
    /// The manifest, when a trusted signature verified it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureStatus {
    Verified,
    Invalid,
    NotChecked,
}

/// The manifest in the shape people and scripts read (hex digests, chunk counts).
#[derive(Debug, Clone, Serialize)]
pub struct ManifestView {
    pub compatible: String,
    pub version: String,
    pub security_version: u32,
    pub build_time: u64,
    pub git_commit: Option<String>,
    pub git_branch: Option<String>,
    pub description: String,
    pub images: Vec<ImageView>,
    /// An app release's units, checks and OS range.
    pub app: Option<rota_bundle::AppSpec>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageView {
    pub name: String,
    pub slot_class: rota_bundle::SlotClass,
    pub size: u64,
    pub sha256: String,
    /// `none` or `zstd`.
    pub compression: &'static str,
    /// Image bytes before a chunk that its zstd frame refers to (0: independent frames).
    pub prefix_window: usize,
    pub stored_size: u64,
    pub chunks: usize,
}

impl From<&Manifest> for ManifestView {
    fn from(manifest: &Manifest) -> Self {
        ManifestView {
            compatible: manifest.compatible.clone(),
            version: manifest.version.to_string(),
            security_version: manifest.security_version,
            build_time: manifest.build_time,
            git_commit: manifest.source.as_ref().map(|s| s.git_commit.clone()),
            git_branch: manifest.source.as_ref().and_then(|s| s.git_branch.clone()),
            description: manifest.description.clone(),
            app: manifest.app.clone(),
            images: manifest
                .images
                .iter()
                .map(|image| ImageView {
                    name: image.name.clone(),
                    slot_class: image.slot_class,
                    size: image.size,
                    sha256: image.sha256.to_string(),
                    compression: if image.compression.is_zstd() {
                        "zstd"
                    } else {
                        "none"
                    },
                    prefix_window: image.compression.prefix_window(),
                    stored_size: image.payload_length,
                    chunks: image.chunks.len(),
                })
                .collect(),
        }
    }
}

/// Reads the bundle's signed part. With a keyring the signature is checked and the manifest
/// shown; without one, the signers' key ids are all that can be shown.
pub fn inspect(path: &Path, keyring: Option<&Keyring>) -> Result<Inspection, CheckError> {
    let file_size = std::fs::metadata(path)
        .map_err(|source| CheckError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let empty = Keyring::new();
    let mut inspection = Inspection {
        bundle: path.to_path_buf(),
        file_size,
        signature: SignatureStatus::NotChecked,
        signed_by: Vec::new(),
        manifest: None,
        reason: None,
    };
    match BundleReader::open(open(path)?, keyring.unwrap_or(&empty)) {
        Ok(bundle) => {
            inspection.signature = SignatureStatus::Verified;
            inspection.signed_by = bundle.signed_by().iter().map(|id| id.to_string()).collect();
            inspection.manifest = Some(bundle.manifest().into());
        }
        Err(error) if is_io(&error) => {
            return Err(CheckError::Read {
                path: path.to_path_buf(),
                source: error,
            })
        }
        Err(BundleError::NoTrustedSignature { key_ids }) if keyring.is_none() => {
            inspection.signed_by = key_ids.iter().map(|id| id.to_string()).collect();
            inspection.reason = Some("no --keyring given: the manifest is shown only once a trusted signature verified it".into());
        }
        Err(error) => {
            inspection.signature = SignatureStatus::Invalid;
            if let BundleError::NoTrustedSignature { key_ids } = &error {
                inspection.signed_by = key_ids.iter().map(|id| id.to_string()).collect();
            }
            inspection.reason = Some(error_chain(&error));
        }
    }
    Ok(inspection)
}

/// An error and its sources on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
