//! Tokens and keys: generated from the OS RNG, shown once, stored only as SHA-256.
//!
//! A plain SHA-256 (no salt, no KDF) is enough because every secret here is 192 bits of
//! randomness: there is nothing to brute-force, and an indexed lookup by hash stays one query.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Operator API keys start with this, robot tokens with [`ROBOT_TOKEN_PREFIX`], so each side
/// can refuse the other's credential without a database lookup.
pub const OPERATOR_KEY_PREFIX: &str = "rota_op_";
pub const ROBOT_TOKEN_PREFIX: &str = "rota_rb_";
pub const ENROLLMENT_KEY_PREFIX: &str = "rota_en_";

/// A new secret: `prefix` followed by 24 random bytes in hex.
pub fn generate(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(24))
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    hex::encode(buf)
}

/// What the database stores instead of the secret.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares a presented secret with a stored hash in constant time.
pub fn matches_hash(secret: &str, stored_hash: &str) -> bool {
    hash(secret).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_prefixed_unique_and_hash_stably() {
        let a = generate(OPERATOR_KEY_PREFIX);
        let b = generate(OPERATOR_KEY_PREFIX);
        assert!(a.starts_with(OPERATOR_KEY_PREFIX));
        assert_eq!(a.len(), OPERATOR_KEY_PREFIX.len() + 48);
        assert_ne!(a, b);
        assert_eq!(hash(&a), hash(&a));
        assert!(matches_hash(&a, &hash(&a)));
        assert!(!matches_hash(&b, &hash(&a)));
    }
}
