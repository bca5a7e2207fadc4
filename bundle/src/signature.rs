//! The signature block (FORMAT.md, "Signature block") and what signatures cover.

use crate::error::{Error, Result};
use crate::header::{HEADER_LENGTH, SIGNED_HEADER_LENGTH};
use crate::keys::{KeyId, Keyring, SigningKey};

/// Prefix of every signed message, so a Rota bundle signature can never be replayed as a
/// signature over anything else a key might sign.
const SIGNATURE_CONTEXT: &[u8] = b"rota-bundle signature v1\0";
const ALGORITHM_ED25519: u16 = 1;
const ED25519_SIGNATURE_LENGTH: usize = 64;
/// algorithm u16, signature length u16, key id 8 bytes.
const ENTRY_PREFIX_LENGTH: usize = 12;
/// Length of one Ed25519 entry in the signature block.
pub const ED25519_ENTRY_LENGTH: usize = ENTRY_PREFIX_LENGTH + ED25519_SIGNATURE_LENGTH;

struct SignatureEntry<'a> {
    algorithm: u16,
    key_id: KeyId,
    signature: &'a [u8],
}

/// Prefix of every signed delta message (`delta.rs`): a bundle signature is never a delta's.
pub(crate) const DELTA_SIGNATURE_CONTEXT: &[u8] = b"rota-delta signature v1\0";

/// The bytes each signature signs: context, signed part of the header, manifest.
pub(crate) fn signed_message(header: &[u8; HEADER_LENGTH], manifest: &[u8]) -> Vec<u8> {
    signed_message_in(SIGNATURE_CONTEXT, header, manifest)
}

/// [`signed_message`] of another kind of file, told apart by `context`.
pub(crate) fn signed_message_in(
    context: &[u8],
    header: &[u8; HEADER_LENGTH],
    manifest: &[u8],
) -> Vec<u8> {
    let mut message = Vec::with_capacity(context.len() + SIGNED_HEADER_LENGTH + manifest.len());
    message.extend_from_slice(context);
    message.extend_from_slice(&header[..SIGNED_HEADER_LENGTH]);
    message.extend_from_slice(manifest);
    message
}

pub(crate) fn signature_block_length(signer_count: usize) -> usize {
    signer_count * ED25519_ENTRY_LENGTH
}

pub(crate) fn encode_signature_block(keys: &[SigningKey], message: &[u8]) -> Vec<u8> {
    let mut block = Vec::with_capacity(signature_block_length(keys.len()));
    for key in keys {
        block.extend_from_slice(&ALGORITHM_ED25519.to_le_bytes());
        block.extend_from_slice(&(ED25519_SIGNATURE_LENGTH as u16).to_le_bytes());
        block.extend_from_slice(&key.key_id().0);
        block.extend_from_slice(&key.sign(message));
    }
    block
}

fn parse_signature_block(mut block: &[u8]) -> Result<Vec<SignatureEntry<'_>>> {
    let malformed = |reason: String| Error::SignatureBlockMalformed { reason };
    let mut entries = Vec::new();
    while !block.is_empty() {
        if block.len() < ENTRY_PREFIX_LENGTH {
            return Err(malformed(format!(
                "{} stray bytes after entry {}",
                block.len(),
                entries.len()
            )));
        }
        let algorithm = u16::from_le_bytes([block[0], block[1]]);
        let length = usize::from(u16::from_le_bytes([block[2], block[3]]));
        let key_id = KeyId(block[4..12].try_into().expect("8 bytes"));
        let rest = &block[ENTRY_PREFIX_LENGTH..];
        if rest.len() < length {
            return Err(malformed(format!(
                "entry {} declares {length} signature bytes, {} remain",
                entries.len(),
                rest.len()
            )));
        }
        entries.push(SignatureEntry {
            algorithm,
            key_id,
            signature: &rest[..length],
        });
        block = &rest[length..];
    }
    Ok(entries)
}

/// Returns the ids of the trusted keys whose signatures verify; at least one, or an error.
/// Entries of unknown algorithms are skipped, so a later writer can add new kinds of
/// signatures beside Ed25519 without breaking older readers.
pub(crate) fn verify_signatures(
    block: &[u8],
    message: &[u8],
    keyring: &Keyring,
) -> Result<Vec<KeyId>> {
    let entries = parse_signature_block(block)?;
    if entries.is_empty() {
        return Err(Error::Unsigned);
    }
    let mut verified = Vec::new();
    let mut failed = None;
    for entry in &entries {
        if entry.algorithm != ALGORITHM_ED25519 {
            continue;
        }
        let Some(key) = keyring.get(&entry.key_id) else {
            continue;
        };
        let signature: Result<&[u8; 64], _> = entry.signature.try_into();
        let failure = match signature {
            Ok(signature) if key.verifies(message, signature) => {
                verified.push(entry.key_id);
                continue;
            }
            Ok(signature) => match damage(signature) {
                Some(reason) => Error::SignatureDamaged {
                    key_id: entry.key_id,
                    reason,
                },
                None => Error::BadSignature {
                    key_id: entry.key_id,
                },
            },
            Err(_) => Error::SignatureDamaged {
                key_id: entry.key_id,
                reason: format!(
                    "{} signature bytes, an Ed25519 signature has {ED25519_SIGNATURE_LENGTH}",
                    entry.signature.len()
                ),
            },
        };
        failed.get_or_insert(failure);
    }
    if !verified.is_empty() {
        return Ok(verified);
    }
    match failed {
        Some(error) => Err(error),
        None => Err(Error::NoTrustedSignature {
            key_ids: entries.iter().map(|entry| entry.key_id).collect(),
        }),
    }
}

/// Why `signature` cannot be any signer's Ed25519 signature, if that shows in its bytes alone:
/// its R half is no curve point, or its S half is no reduced scalar (RFC 8032, 5.1.7). A
/// signature that fails only the equation may be intact over altered signed bytes.
fn damage(signature: &[u8; 64]) -> Option<String> {
    let (r, s) = signature.split_at(32);
    let r: [u8; 32] = r.try_into().expect("32 bytes");
    let s: [u8; 32] = s.try_into().expect("32 bytes");
    if curve25519_dalek::edwards::CompressedEdwardsY(r)
        .decompress()
        .is_none()
    {
        return Some("its R half is not a point of the curve".into());
    }
    if bool::from(curve25519_dalek::Scalar::from_canonical_bytes(s).is_none()) {
        return Some("its S half is not a reduced scalar".into());
    }
    None
}
