//! The one error type of this crate: each variant names what failed and where.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::keys::{KeyError, KeyId};

/// Which part of a bundle a read or truncation concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Header,
    Manifest,
    SignatureBlock,
    /// The stored bytes of one chunk of an image.
    Chunk {
        image: String,
        index: usize,
    },
    /// Payload bytes skipped over to reach a later image.
    Payload,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Header => f.write_str("header"),
            Part::Manifest => f.write_str("manifest"),
            Part::SignatureBlock => f.write_str("signature block"),
            Part::Chunk { image, index } => write!(f, "payload (image {image:?}, chunk {index})"),
            Part::Payload => f.write_str("payload"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error reading the bundle's {part}")]
    Read {
        part: Part,
        #[source]
        source: io::Error,
    },
    #[error("I/O error writing the output")]
    Write(#[source] io::Error),
    #[error("I/O error reading the input of image {image:?}{}", path_suffix(.path))]
    ImageInput {
        image: String,
        path: Option<PathBuf>,
        #[source]
        source: io::Error,
    },
    #[error("I/O error on the payload spool file")]
    Spool(#[source] io::Error),

    #[error("not a Rota bundle: the first 8 bytes are {found:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error(
        "unsupported bundle format version {found} (this reader supports versions 1 to {supported})"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("delta: {0}")]
    DeltaInvalid(String),
    #[error(
        "chunk {index} of image {image:?} is compressed against the image bytes before it: \
         read it with an image reader that has them"
    )]
    NeedsPrecedingBytes { image: String, index: usize },
    #[error("unsupported header flags {flags:#010x} (format version 1 defines none)")]
    UnsupportedFlags { flags: u32 },
    #[error("the header declares a {what} of {length} bytes, above the limit of {limit}")]
    LengthLimit {
        what: &'static str,
        length: u64,
        limit: u64,
    },
    #[error("bundle truncated in the {part}")]
    Truncated { part: Part },

    #[error("malformed signature block: {reason}")]
    SignatureBlockMalformed { reason: String },
    #[error("the bundle carries no signature")]
    Unsigned,
    #[error("no signature by a trusted key (the bundle is signed by {})", key_list(.key_ids))]
    NoTrustedSignature { key_ids: Vec<KeyId> },
    /// The signature is well-formed but does not match: Ed25519 cannot tell whether the signed
    /// bytes or the signature changed.
    #[error("the signature by trusted key {key_id} does not verify: the header, the manifest or the signature entry was altered")]
    BadSignature { key_id: KeyId },
    /// The signature entry itself is damaged: no Ed25519 signer could have written it.
    #[error("the signature entry of trusted key {key_id} is damaged: {reason}")]
    SignatureDamaged { key_id: KeyId, reason: String },

    #[error("the signed manifest cannot be decoded: {field}: {reason}")]
    ManifestDecode {
        /// Where decoding stopped, such as `images[0].chunks[3].stored_length`.
        field: String,
        /// The decoder's error.
        reason: String,
    },
    #[error("the manifest is inconsistent: {reason}")]
    ManifestInvalid { reason: String },

    #[error("image {image:?} chunk {index}: sha256 does not match the manifest")]
    ChunkHashMismatch { image: String, index: usize },
    #[error("image {image:?} chunk {index}: cannot be decompressed: {reason}")]
    ChunkDecompress {
        image: String,
        index: usize,
        reason: String,
    },
    #[error("image {image:?} chunk {index}: holds {found} bytes, the manifest says {expected}")]
    ChunkSizeMismatch {
        image: String,
        index: usize,
        expected: u64,
        found: u64,
    },
    #[error("image {image:?}: sha256 of the whole image does not match the manifest")]
    ImageHashMismatch { image: String },
    #[error("image {image:?}: {found} bytes, the manifest says {expected}")]
    SizeMismatch {
        image: String,
        expected: u64,
        found: u64,
    },
    #[error("unexpected bytes after the end of the payload")]
    TrailingData,
    #[error("image {image:?}: reading stopped at an earlier error")]
    ImageReaderFailed { image: String },

    #[error("the bundle has no image {image:?}")]
    NoSuchImage { image: String },
    #[error("image number {image} does not exist (the bundle has {count})")]
    NoSuchImageIndex { image: usize, count: usize },
    #[error("image {image:?} has no chunk {index} (it has {count})")]
    NoSuchChunk {
        image: String,
        index: usize,
        count: usize,
    },
    #[error("image {image:?} lies before the current stream position; open the bundle again")]
    ImageAlreadyPassed { image: String },

    #[error("average chunk size {average} is not a power of two from 4 KiB to 1 MiB")]
    InvalidChunkSize { average: u64 },
    #[error("a bundle needs at least one signing key")]
    NoSigningKey,
    #[error("a chunk worker thread stopped unexpectedly")]
    WorkerLost,
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Key ids as plain hex, comma-separated.
fn key_list(key_ids: &[KeyId]) -> String {
    match key_ids {
        [] => "no key".into(),
        [one] => format!("key {one}"),
        several => {
            let ids: Vec<String> = several.iter().map(KeyId::to_string).collect();
            format!("keys {}", ids.join(", "))
        }
    }
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!(" ({})", path.display()),
        None => String::new(),
    }
}

impl Error {
    /// The bundle error inside an `io::Error` returned by [`crate::ImageReader`]'s `Read` impl.
    pub fn from_io(error: &io::Error) -> Option<&Error> {
        error.get_ref()?.downcast_ref::<Error>()
    }

    pub(crate) fn read(part: Part, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            Error::Truncated { part }
        } else {
            Error::Read { part, source }
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Error {
        Error::ManifestInvalid {
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
