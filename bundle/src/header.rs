//! The fixed 32-byte header at the start of every bundle (FORMAT.md, "Header").

use std::io::Read;

use crate::error::{Error, Part, Result};

/// First 8 bytes of every bundle. The high-bit byte and the CR LF / SUB bytes make transfers
/// that mangle binary files (7-bit, newline conversion) fail at once, as PNG's magic does.
pub const MAGIC: [u8; 8] = [0x89, b'R', b'O', b'T', b'A', b'\r', b'\n', 0x1a];
/// The newest format version this crate writes and reads. It reads every version from 1 and
/// writes the lowest one that can hold a bundle: 2 for images with prefixed zstd frames, 3 for
/// app releases ([`crate::Manifest::format_version`]).
pub const FORMAT_VERSION: u32 = 3;
/// Length of the header of versions 1 to 3.
pub const HEADER_LENGTH: usize = 32;
/// The header bytes covered by signatures: everything but the signature block length, so
/// signatures can be added to a bundle later without invalidating those already there.
pub const SIGNED_HEADER_LENGTH: usize = 28;
/// Upper bound on the manifest a reader accepts (a 16 GiB image has about 256 Ki chunks of
/// about 80 bytes each in the table: 20 MiB).
pub const MAX_MANIFEST_LENGTH: u32 = 64 << 20;
/// Upper bound on the signature block a reader accepts.
pub const MAX_SIGNATURE_BLOCK_LENGTH: u32 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1; 2 when an image has prefixed zstd frames (a version 1 reader cannot read those); 3
    /// for an app release.
    pub version: u32,
    pub payload_length: u64,
    pub manifest_length: u32,
    pub signature_block_length: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LENGTH] {
        let mut bytes = [0u8; HEADER_LENGTH];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&self.version.to_le_bytes());
        // 12..16: flags, none defined in versions 1 to 3.
        bytes[16..24].copy_from_slice(&self.payload_length.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.manifest_length.to_le_bytes());
        bytes[28..32].copy_from_slice(&self.signature_block_length.to_le_bytes());
        bytes
    }

    /// Reads and checks a header; returns it with its raw bytes (which signatures cover).
    /// Magic and version are checked before the rest is read, since a later format version
    /// may have a header of another length.
    pub fn read_from(reader: &mut dyn Read) -> Result<(Header, [u8; HEADER_LENGTH])> {
        let mut bytes = [0u8; HEADER_LENGTH];
        reader
            .read_exact(&mut bytes[..12])
            .map_err(|e| Error::read(Part::Header, e))?;
        let magic: [u8; 8] = bytes[0..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = u32_at(&bytes, 8);
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        reader
            .read_exact(&mut bytes[12..])
            .map_err(|e| Error::read(Part::Header, e))?;
        Ok((Header::decode_checked(&bytes)?, bytes))
    }

    fn decode_checked(bytes: &[u8; HEADER_LENGTH]) -> Result<Header> {
        let flags = u32_at(bytes, 12);
        if flags != 0 {
            return Err(Error::UnsupportedFlags { flags });
        }
        let header = Header {
            version: u32_at(bytes, 8),
            payload_length: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            manifest_length: u32_at(bytes, 24),
            signature_block_length: u32_at(bytes, 28),
        };
        check_limit("manifest", header.manifest_length, MAX_MANIFEST_LENGTH)?;
        check_limit(
            "signature block",
            header.signature_block_length,
            MAX_SIGNATURE_BLOCK_LENGTH,
        )?;
        Ok(header)
    }

    /// Offset of the payload's first byte in the bundle file.
    pub fn payload_start(&self) -> u64 {
        HEADER_LENGTH as u64
            + u64::from(self.manifest_length)
            + u64::from(self.signature_block_length)
    }
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn check_limit(what: &'static str, length: u32, limit: u32) -> Result<()> {
    if length > limit {
        return Err(Error::LengthLimit {
            what,
            length: length.into(),
            limit: limit.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(
            payload_length in any::<u64>(),
            manifest_length in 0..=MAX_MANIFEST_LENGTH,
            signature_block_length in 0..=MAX_SIGNATURE_BLOCK_LENGTH,
        ) {
            let header = Header { version: 1, payload_length, manifest_length, signature_block_length };
            let bytes = header.encode();
            let (decoded, raw) = Header::read_from(&mut &bytes[..]).unwrap();
            prop_assert_eq!(decoded, header);
            prop_assert_eq!(raw, bytes);
        }

        #[test]
        fn header_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Header::read_from(&mut &bytes[..]);
        }
    }

    #[test]
    fn header_layout_is_little_endian_at_documented_offsets() {
        let header = Header {
            version: 1,
            payload_length: 0x0102_0304_0506_0708,
            manifest_length: 0x1112_1314,
            signature_block_length: 0x2122_2324,
        };
        let bytes = header.encode();
        assert_eq!(&bytes[0..8], b"\x89ROTA\r\n\x1a");
        assert_eq!(&bytes[8..12], &[1, 0, 0, 0]);
        assert_eq!(&bytes[12..16], &[0, 0, 0, 0]);
        assert_eq!(&bytes[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[24..28], &[0x14, 0x13, 0x12, 0x11]);
        assert_eq!(&bytes[28..32], &[0x24, 0x23, 0x22, 0x21]);
    }
}
