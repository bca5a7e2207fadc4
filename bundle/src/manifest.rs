//! The manifest: what a bundle is for and where each image's chunks sit in the payload.
//!
//! Encoded with postcard (FORMAT.md, "Manifest"). Decoding is crate-private: the only way to
//! get a `Manifest` out of bundle bytes is through [`crate::BundleReader::open`], after a
//! trusted signature checked out.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::app::AppSpec;
use crate::digest::Sha256Digest;
use crate::error::{Error, Result};

/// Largest chunk (stored or decompressed) a reader accepts. The writer's chunks are at most
/// [`crate::CHUNK_MAX_LENGTH`]; the limit bounds the memory a signed but lying manifest can
/// make a reader allocate: read-ahead window × 2 × this.
pub const MAX_CHUNK_LENGTH: u32 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Product/board string; a robot refuses bundles for any other.
    pub compatible: String,
    pub version: semver::Version,
    /// Anti-rollback counter: a robot refuses bundles below the one it runs.
    pub security_version: u32,
    /// Unix seconds, normally the build's `SOURCE_DATE_EPOCH`.
    pub build_time: u64,
    pub source: Option<SourceInfo>,
    pub description: String,
    /// In payload order.
    pub images: Vec<ImageEntry>,
    /// Set exactly when the bundle is an app release: its one image has the `app` class and
    /// is named after the app. Format version 3; absent from the bytes of versions 1 and 2.
    pub app: Option<AppSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub git_commit: String,
    pub git_branch: Option<String>,
}

/// Where an image is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotClass {
    /// A whole root filesystem, written to the inactive slot.
    Rootfs,
    /// A file tree installed beside the rootfs, for app-only updates without a reboot.
    App,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    /// Each chunk is one independent zstd frame.
    Zstd,
    /// Each chunk is one zstd frame compressed against the up to `window` image bytes right
    /// before it (a zstd prefix), so a frame finds matches across chunk boundaries as one
    /// stream would, and a reader decompresses chunks in image order. Format version 2.
    #[serde(rename = "zstd-prefixed")]
    ZstdPrefixed { window: u32 },
}

/// The largest prefix window a manifest may declare: bounds what a reader keeps of the image
/// to decompress the next chunk.
pub const MAX_PREFIX_WINDOW: u32 = 8 << 20;

impl Compression {
    /// zstd frames, prefixed or not.
    pub fn is_zstd(self) -> bool {
        !matches!(self, Compression::None)
    }

    /// Image bytes before a chunk that its frame was compressed against (0: none).
    pub fn prefix_window(self) -> usize {
        match self {
            Compression::ZstdPrefixed { window } => window as usize,
            Compression::None | Compression::Zstd => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    pub name: String,
    pub slot_class: SlotClass,
    /// Decompressed size in bytes.
    pub size: u64,
    /// SHA-256 of the whole decompressed image (what `sha256sum image` prints).
    pub sha256: Sha256Digest,
    pub compression: Compression,
    /// Offset of the image's first stored byte, counted from the start of the payload.
    pub payload_offset: u64,
    /// Stored (possibly compressed) bytes of the image in the payload.
    pub payload_length: u64,
    pub chunks: Vec<Chunk>,
}

/// One content-defined chunk of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Offset in the decompressed image.
    pub offset: u64,
    /// Decompressed length.
    pub length: u32,
    /// SHA-256 of the decompressed bytes (what delta updates compare against a slot).
    pub sha256: Sha256Digest,
    /// Offset of the stored bytes, counted from the start of the payload.
    pub stored_offset: u64,
    pub stored_length: u32,
    /// SHA-256 of the stored bytes. Checked before decompressing, so the decompressor only
    /// ever sees bytes the signer wrote; equal to `sha256` when the image is not compressed.
    pub stored_sha256: Sha256Digest,
}

impl Manifest {
    /// The lowest bundle format version that holds this manifest: 3 for an app release, 2
    /// for prefixed zstd frames, else 1 (older readers read what they can).
    pub fn format_version(&self) -> u32 {
        if self.app.is_some() {
            3
        } else if self
            .images
            .iter()
            .any(|image| image.compression.prefix_window() > 0)
        {
            2
        } else {
            1
        }
    }

    /// The postcard encoding that goes into a bundle, for [`Self::format_version`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = postcard::to_stdvec(self).expect("serializing to a Vec cannot fail");
        if self.format_version() < 3 {
            // Postcard writes fields in order and `None` as one 0 byte: without it the bytes
            // are exactly a version 1 or 2 manifest, which has no `app` field.
            assert_eq!(bytes.pop(), Some(0), "app: None encodes as one 0 byte");
        }
        bytes
    }

    /// Decodes manifest bytes of a bundle of `format_version`; trailing bytes are an error, so
    /// one manifest has one encoding.
    pub(crate) fn decode(bytes: &[u8], format_version: u32) -> Result<Manifest> {
        let with_app_field;
        let bytes = if format_version < 3 {
            // Versions 1 and 2 end before the `app` field: read it as `None` (one 0 byte).
            with_app_field = [bytes, &[0]].concat();
            &with_app_field[..]
        } else {
            bytes
        };
        let mut decoder = postcard::Deserializer::from_bytes(bytes);
        // Tracks the field being decoded, so the error can name it.
        let manifest = serde_path_to_error::deserialize(&mut decoder).map_err(|error| {
            let field = match field_path(error.path()) {
                path if path.is_empty() => "the manifest".to_owned(),
                path => format!("field {path}"),
            };
            Error::ManifestDecode {
                field,
                reason: error.into_inner().to_string(),
            }
        })?;
        let rest = decoder.finalize().map_err(|error| Error::ManifestDecode {
            field: "the manifest".into(),
            reason: error.to_string(),
        })?;
        if !rest.is_empty() {
            return Err(Error::ManifestDecode {
                field: "after the last field".into(),
                reason: format!("{} bytes left over", rest.len()),
            });
        }
        Ok(manifest)
    }

    pub fn image_index(&self, name: &str) -> Option<usize> {
        self.images.iter().position(|image| image.name == name)
    }

    /// Checks that the chunk tables tile every image exactly and the images tile the payload
    /// exactly, in order. A reader relies on this to hand out exactly `size` verified bytes
    /// per image and to locate any chunk without scanning.
    pub(crate) fn validate(&self, payload_length: u64, format_version: u32) -> Result<()> {
        if self.compatible.is_empty() {
            return Err(Error::invalid("empty compatible string"));
        }
        let mut names = HashSet::new();
        let mut payload_position = 0u64;
        for image in &self.images {
            if image.name.is_empty() {
                return Err(Error::invalid("an image has an empty name"));
            }
            if !names.insert(image.name.as_str()) {
                return Err(Error::invalid(format!(
                    "two images are named {:?}",
                    image.name
                )));
            }
            if image.payload_offset != payload_position {
                return Err(Error::invalid(format!(
                    "image {:?} starts at payload offset {}, expected {payload_position}",
                    image.name, image.payload_offset
                )));
            }
            image.validate_chunks()?;
            if format_version < 2 && image.compression.prefix_window() > 0 {
                return Err(Error::invalid(format!(
                    "image {:?} has prefixed zstd frames, which format version {format_version} does not have",
                    image.name
                )));
            }
            payload_position = payload_position
                .checked_add(image.payload_length)
                .ok_or_else(|| Error::invalid("payload length overflows"))?;
        }
        if payload_position != payload_length {
            return Err(Error::invalid(format!(
                "images take {payload_position} payload bytes, the header says {payload_length}"
            )));
        }
        self.validate_app(format_version)
    }

    /// An app release is one image of the `app` class, named after the app, with its spec;
    /// nothing else has an `app` image or a spec.
    fn validate_app(&self, format_version: u32) -> Result<()> {
        let app_images = self
            .images
            .iter()
            .filter(|image| image.slot_class == SlotClass::App)
            .count();
        match &self.app {
            None if app_images > 0 => Err(Error::invalid(
                "an image has the app class but the manifest has no app spec",
            )),
            None => Ok(()),
            Some(_) if format_version < 3 => Err(Error::invalid(format!(
                "an app spec in format version {format_version}"
            ))),
            Some(spec) => match self.images.as_slice() {
                [image] if image.slot_class == SlotClass::App => spec.validate(&image.name),
                _ => Err(Error::invalid(
                    "an app release has exactly one image, of the app class",
                )),
            },
        }
    }
}

impl ImageEntry {
    fn validate_chunks(&self) -> Result<()> {
        let lie = |what: String| Error::invalid(format!("image {:?}: {what}", self.name));
        if let Compression::ZstdPrefixed { window } = self.compression {
            if !window.is_power_of_two() || !(4 << 10..=MAX_PREFIX_WINDOW).contains(&window) {
                return Err(lie(format!(
                    "prefix window {window} is not a power of two from 4 KiB to 8 MiB"
                )));
            }
        }
        let mut offset = 0u64;
        let mut stored_offset = self.payload_offset;
        for (index, chunk) in self.chunks.iter().enumerate() {
            if chunk.offset != offset {
                return Err(lie(format!(
                    "chunk {index} at image offset {}, expected {offset}",
                    chunk.offset
                )));
            }
            if chunk.stored_offset != stored_offset {
                return Err(lie(format!(
                    "chunk {index} at payload offset {}, expected {stored_offset}",
                    chunk.stored_offset
                )));
            }
            if chunk.length == 0 || chunk.length > MAX_CHUNK_LENGTH {
                return Err(lie(format!("chunk {index} has length {}", chunk.length)));
            }
            if chunk.stored_length == 0 || chunk.stored_length > MAX_CHUNK_LENGTH {
                return Err(lie(format!(
                    "chunk {index} has stored length {}",
                    chunk.stored_length
                )));
            }
            if self.compression == Compression::None
                && (chunk.stored_length != chunk.length || chunk.stored_sha256 != chunk.sha256)
            {
                return Err(lie(format!(
                    "uncompressed chunk {index} differs from its stored form"
                )));
            }
            // Checked: a signed manifest may still carry absurd offsets.
            offset = offset
                .checked_add(chunk.length.into())
                .ok_or_else(|| lie("image size overflows".into()))?;
            stored_offset = stored_offset
                .checked_add(chunk.stored_length.into())
                .ok_or_else(|| lie("payload offset overflows".into()))?;
        }
        if offset != self.size {
            return Err(lie(format!(
                "chunks cover {offset} bytes, the image size is {}",
                self.size
            )));
        }
        if stored_offset - self.payload_offset != self.payload_length {
            return Err(lie(format!(
                "chunks take {} payload bytes, the payload length is {}",
                stored_offset - self.payload_offset,
                self.payload_length
            )));
        }
        Ok(())
    }
}

/// Field names in encoding order (postcard encodes a struct as the tuple of its fields, so a
/// decoder's path holds positions only). Kept in step with the structs by
/// `field_tables_follow_the_structs`.
const MANIFEST_FIELDS: &[&str] = &[
    "compatible",
    "version",
    "security_version",
    "build_time",
    "source",
    "description",
    "images",
    "app",
];
const SOURCE_FIELDS: &[&str] = &["git_commit", "git_branch"];
const IMAGE_FIELDS: &[&str] = &[
    "name",
    "slot_class",
    "size",
    "sha256",
    "compression",
    "payload_offset",
    "payload_length",
    "chunks",
];
const CHUNK_FIELDS: &[&str] = &[
    "offset",
    "length",
    "sha256",
    "stored_offset",
    "stored_length",
    "stored_sha256",
];

/// The decoder's path of positions as field names: `[6][0][7][3][4]` is
/// `images[0].chunks[3].stored_length`.
fn field_path(path: &serde_path_to_error::Path) -> String {
    let mut named = String::new();
    let mut fields = Some(MANIFEST_FIELDS);
    // Set when the next position is an index into a list of structs with these fields.
    let mut list_of: Option<&[&str]> = None;
    for segment in path.iter() {
        let serde_path_to_error::Segment::Seq { index } = segment else {
            break;
        };
        if let Some(element) = list_of.take() {
            named.push_str(&format!("[{index}]"));
            fields = Some(element);
            continue;
        }
        // Past a leaf (the bytes of a digest): the leaf is the field.
        let Some(name) = fields.and_then(|fields| fields.get(*index)) else {
            break;
        };
        if !named.is_empty() {
            named.push('.');
        }
        named.push_str(name);
        (fields, list_of) = match *name {
            "images" => (None, Some(IMAGE_FIELDS)),
            "chunks" => (None, Some(CHUNK_FIELDS)),
            "source" => (Some(SOURCE_FIELDS), None),
            _ => (None, None),
        };
    }
    named
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json writes a struct's fields in declaration order, which is postcard's order.
    fn assert_fields(value: &impl Serialize, table: &[&str]) {
        let json = serde_json::to_string(value).unwrap();
        let object = serde_json::to_value(value).unwrap();
        assert_eq!(object.as_object().unwrap().len(), table.len(), "{json}");
        let positions: Vec<usize> = table
            .iter()
            .map(|field| json.find(&format!("\"{field}\":")).expect(field))
            .collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{json}");
    }

    #[test]
    fn field_tables_follow_the_structs() {
        let chunk = Chunk {
            offset: 0,
            length: 1,
            sha256: Sha256Digest::of(b"x"),
            stored_offset: 0,
            stored_length: 1,
            stored_sha256: Sha256Digest::of(b"x"),
        };
        let image = ImageEntry {
            name: "rootfs".into(),
            slot_class: SlotClass::Rootfs,
            size: 1,
            sha256: Sha256Digest::of(b"x"),
            compression: Compression::None,
            payload_offset: 0,
            payload_length: 1,
            chunks: vec![chunk.clone()],
        };
        let source = SourceInfo {
            git_commit: "abc".into(),
            git_branch: None,
        };
        let manifest = Manifest {
            compatible: "board".into(),
            version: semver::Version::new(1, 2, 3),
            security_version: 0,
            build_time: 0,
            source: Some(source.clone()),
            description: String::new(),
            images: vec![image.clone()],
            app: None,
        };
        assert_fields(&chunk, CHUNK_FIELDS);
        assert_fields(&image, IMAGE_FIELDS);
        assert_fields(&source, SOURCE_FIELDS);
        assert_fields(&manifest, MANIFEST_FIELDS);
    }

    #[test]
    fn trailing_bytes_after_the_manifest_are_refused() {
        let manifest = Manifest {
            compatible: "board".into(),
            version: semver::Version::new(1, 2, 3),
            security_version: 0,
            build_time: 0,
            source: None,
            description: String::new(),
            images: Vec::new(),
            app: None,
        };
        let mut bytes = manifest.to_bytes();
        assert_eq!(Manifest::decode(&bytes, 1).unwrap(), manifest);
        bytes.push(0);
        assert!(matches!(
            Manifest::decode(&bytes, 1),
            Err(Error::ManifestDecode { .. })
        ));
    }
}
