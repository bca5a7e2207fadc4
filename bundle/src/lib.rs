//! Rota's update bundle: one file, readable as a stream from its first byte, holding a fixed
//! header, a postcard manifest, Ed25519 signatures and the images' chunks (see FORMAT.md).
//!
//! Writing: [`BundleBuilder`]. Reading: [`BundleReader::open`] verifies the signatures against
//! a [`Keyring`] before it hands out anything, then [`VerifiedBundle::next_image`] streams
//! each image through an [`ImageReader`] that yields only bytes whose chunk hash matched.
//! Random access for resumed or ranged downloads: [`VerifiedManifest::chunk_file_range`] and
//! [`VerifiedManifest::verify_chunk`].
//!
//! Speed: chunks are hashed and decompressed on [`ReadOptions::workers`] threads. With
//! [`ReadOptions::check_image_sha256`] off, verification runs on all cores; with it on (the
//! default), each image's whole-file SHA-256 also runs on the reading thread, which caps
//! throughput at about one core's hashing speed. Pass a `File` as is: each chunk is read in
//! one call straight into its buffer, so a `BufReader` only adds a copy.
//!
//! There is no way to decode a manifest without verifying it:
//! ```compile_fail
//! let manifest = rota_bundle::Manifest::decode(&[]);
//! ```
//!
//! ```
//! use rota_bundle::*;
//! let key = SigningKey::from_seed([7; 32]);
//! let mut builder = BundleBuilder::new("lekiwi-rpi5", "1.2.0".parse().unwrap());
//! builder
//!     .build_time(1_700_000_000)
//!     .compression(Compression::Zstd)
//!     .sign_with(&key)
//!     .add_image("rootfs", SlotClass::Rootfs, &[42u8; 100_000][..]);
//! let mut bundle = Vec::new();
//! builder.write_to(&mut bundle).unwrap();
//!
//! let keyring = Keyring::from_keys([key.public_key()]);
//! let mut verified = BundleReader::open(&bundle[..], &keyring).unwrap();
//! assert_eq!(verified.manifest().compatible, "lekiwi-rpi5");
//! let mut image = Vec::new();
//! verified.next_image().unwrap().unwrap().copy_to(&mut image).unwrap();
//! assert_eq!(image, vec![42u8; 100_000]);
//! ```

mod app;
mod chunk;
pub mod delta;
mod digest;
mod error;
mod header;
mod image_reader;
mod keys;
mod manifest;
mod pool;
mod reader;
mod signature;
mod writer;

pub use app::{check_app_name, AppCheck, AppProbe, AppSpec, MAX_APP_NAME_LENGTH};
pub use chunk::{
    for_each_chunk, ChunkSizes, CHUNK_AVERAGE_LENGTH, CHUNK_MAX_LENGTH, CHUNK_MIN_LENGTH,
    DEFAULT_ZSTD_LEVEL,
};
pub use digest::Sha256Digest;
pub use error::{Error, Part, Result};
pub use header::{
    Header, FORMAT_VERSION, HEADER_LENGTH, MAGIC, MAX_MANIFEST_LENGTH, MAX_SIGNATURE_BLOCK_LENGTH,
};
pub use image_reader::{ImageReader, PositionedSink, VerifiedRun, VerifyPool, WrittenRun};
pub use keys::{KeyError, KeyId, Keyring, PublicKey, SigningKey, PUBLIC_KEY_EXTENSION};
pub use manifest::{
    Chunk, Compression, ImageEntry, Manifest, SlotClass, SourceInfo, MAX_CHUNK_LENGTH,
    MAX_PREFIX_WINDOW,
};
pub use reader::{BundleReader, ReadOptions, VerifiedBundle, VerifiedImage, VerifiedManifest};
pub use signature::ED25519_ENTRY_LENGTH;
pub use writer::{write_bundle_parts, BundleBuilder, BundleSummary};
