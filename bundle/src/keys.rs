//! Ed25519 signing keys, public keys, key ids and keyrings, with their one-line text files.
//!
//! ```text
//! rota-ed25519-secret <key id> <base64 of the 32-byte seed>
//! rota-ed25519-public <key id> <base64 of the 32-byte public key>
//! ```
//! Lines starting with `#` and blank lines are ignored, so a key file may carry a comment.
//! The key id is the first 8 bytes of SHA-256 of the public key, in hex; it is repeated in
//! both files so a person can match them, and checked on load.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};

const SECRET_TAG: &str = "rota-ed25519-secret";
const PUBLIC_TAG: &str = "rota-ed25519-public";
/// Files a keyring directory is loaded from end with this.
pub const PUBLIC_KEY_EXTENSION: &str = "pub";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot read key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {reason}")]
    Parse { origin: String, reason: String },
    #[error("no public key files (*.{PUBLIC_KEY_EXTENSION}) in keyring directory {dir}")]
    EmptyKeyring { dir: PathBuf },
    #[error("the operating system gave no random bytes for a new key: {0}")]
    Random(String),
}

/// Short identifier of a public key: the first 8 bytes of its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    fn of(public: &ed25519_dalek::VerifyingKey) -> KeyId {
        let digest = Sha256::digest(public.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<KeyId, KeyError> {
        let mut id = [0u8; 8];
        hex::decode_to_slice(text, &mut id)
            .map_err(|_| parse_error("key id", "expected 16 hex digits"))?;
        Ok(KeyId(id))
    }
}

/// A private key that signs bundles. `Debug` never shows the secret.
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SigningKey::from_seed(seed))
    }

    /// The key whose 32-byte Ed25519 seed is `seed` (tests use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        SigningKey {
            inner: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_dalek(self.inner.verifying_key())
    }

    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.inner.sign(message).to_bytes()
    }

    /// The text of a secret key file (one line).
    pub fn to_file_string(&self) -> String {
        format!(
            "{SECRET_TAG} {} {}\n",
            self.key_id(),
            BASE64.encode(self.inner.to_bytes())
        )
    }

    /// Parses the text of a secret key file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<SigningKey, KeyError> {
        let (stated_id, bytes) = parse_key_line(text, SECRET_TAG, origin)?;
        let key = SigningKey::from_seed(bytes);
        check_key_id(stated_id, key.key_id(), origin)?;
        Ok(key)
    }

    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        SigningKey::parse(&read_key_file(path)?, &path.display().to_string())
    }

    /// Writes a new secret key file readable by its owner only (mode 0600). Refuses to
    /// overwrite an existing file: losing a signing key is not undoable.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        write_new_file(path, self.to_file_string().as_bytes(), 0o600)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.key_id())
    }
}

/// A public key that verifies bundle signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    inner: ed25519_dalek::VerifyingKey,
    key_id: KeyId,
}

impl PublicKey {
    fn from_dalek(inner: ed25519_dalek::VerifyingKey) -> PublicKey {
        PublicKey {
            key_id: KeyId::of(&inner),
            inner,
        }
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(PublicKey::from_dalek)
            .map_err(|_| parse_error("public key", "not a valid Ed25519 point"))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.inner.as_bytes()
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// True when `signature` is this key's strict Ed25519 signature of `message`.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.inner.verify_strict(message, &signature).is_ok()
    }

    /// The text of a public key file (one line).
    pub fn to_file_string(&self) -> String {
        format!(
            "{PUBLIC_TAG} {} {}\n",
            self.key_id,
            BASE64.encode(self.as_bytes())
        )
    }

    /// Parses the text of a public key file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<PublicKey, KeyError> {
        let (stated_id, bytes) = parse_key_line(text, PUBLIC_TAG, origin)?;
        let key = PublicKey::from_bytes(&bytes).map_err(|_| KeyError::Parse {
            origin: origin.to_owned(),
            reason: "not a valid Ed25519 public key".to_owned(),
        })?;
        check_key_id(stated_id, key.key_id, origin)?;
        Ok(key)
    }

    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        PublicKey::parse(&read_key_file(path)?, &path.display().to_string())
    }

    /// Writes a new public key file (mode 0644); refuses to overwrite an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        write_new_file(path, self.to_file_string().as_bytes(), 0o644)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id)
    }
}

/// The public keys a reader trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl Keyring {
    pub fn new() -> Keyring {
        Keyring::default()
    }

    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Keyring {
        let mut keyring = Keyring::new();
        for key in keys {
            keyring.add(key);
        }
        keyring
    }

    /// Adds a key; returns false if a key with its id was already there.
    pub fn add(&mut self, key: PublicKey) -> bool {
        self.keys.insert(key.key_id(), key).is_none()
    }

    /// Loads every `*.pub` file of `dir` (other files are ignored, so a directory may hold
    /// notes). A malformed key file is an error rather than skipped: a keyring that silently
    /// lost a key would reject good bundles later, far from the cause. An empty result is an
    /// error too.
    pub fn load_dir(dir: &Path) -> Result<Keyring, KeyError> {
        let read_error = |source| KeyError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_error)? {
            let path = entry.map_err(read_error)?.path();
            if path
                .extension()
                .is_some_and(|ext| ext == PUBLIC_KEY_EXTENSION)
                && path.is_file()
            {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(KeyError::EmptyKeyring {
                dir: dir.to_owned(),
            });
        }
        let mut keyring = Keyring::new();
        for path in paths {
            keyring.add(PublicKey::load(&path)?);
        }
        Ok(keyring)
    }

    pub fn get(&self, key_id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(key_id)
    }

    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn parse_error(origin: &str, reason: &str) -> KeyError {
    KeyError::Parse {
        origin: origin.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Finds the one key line of a key file and returns its stated key id and 32 key bytes.
fn parse_key_line(text: &str, tag: &str, origin: &str) -> Result<(KeyId, [u8; 32]), KeyError> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    let line = lines
        .next()
        .ok_or_else(|| parse_error(origin, "no key line found"))?;
    if lines.next().is_some() {
        return Err(parse_error(origin, "more than one key line"));
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [found_tag, id, key] = fields[..] else {
        return Err(parse_error(
            origin,
            &format!("expected `{tag} <key id> <base64 key>`"),
        ));
    };
    if found_tag != tag {
        return Err(parse_error(
            origin,
            &format!("starts with `{found_tag}`, expected `{tag}`"),
        ));
    }
    let id = id
        .parse::<KeyId>()
        .map_err(|_| parse_error(origin, "key id is not 16 hex digits"))?;
    let bytes = BASE64
        .decode(key)
        .map_err(|_| parse_error(origin, "key is not valid base64"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| parse_error(origin, "key is not 32 bytes long"))?;
    Ok((id, bytes))
}

fn check_key_id(stated: KeyId, actual: KeyId, origin: &str) -> Result<(), KeyError> {
    if stated == actual {
        Ok(())
    } else {
        Err(parse_error(
            origin,
            &format!("states key id {stated}, but the key's id is {actual}"),
        ))
    }
}

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let write_error = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Created with the final mode, so the secret is never readable by others, not even
        // between create and chmod.
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}
