//! `rota-image keygen`: a new Ed25519 signing key (`NAME.key`, mode 0600) and its public key
//! (`NAME.pub`, for keyrings), both in rota-bundle's one-line key file format.

use rota_bundle::{KeyError, KeyId, SigningKey, PUBLIC_KEY_EXTENSION};
use std::path::{Path, PathBuf};

/// The files `keygen` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewKey {
    #[serde(serialize_with = "as_string")]
    pub key_id: KeyId,
    pub secret_path: PathBuf,
    pub public_path: PathBuf,
}

fn as_string<S: serde::Serializer>(id: &KeyId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// `NAME` + `.key` / `.pub` (appended, so `keys/release-2026` works as expected).
pub fn key_paths(name: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut path = name.as_os_str().to_owned();
        path.push(".");
        path.push(ext);
        PathBuf::from(path)
    };
    (with("key"), with(PUBLIC_KEY_EXTENSION))
}

/// Generates a key pair and writes both files; refuses to overwrite either (a lost signing key
/// cannot be recovered). Nothing is written if the secret file already exists.
pub fn generate(name: &Path) -> Result<NewKey, KeyError> {
    let (secret_path, public_path) = key_paths(name);
    let key = SigningKey::generate()?;
    if public_path.exists() {
        return Err(KeyError::Write {
            path: public_path,
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the file exists"),
        });
    }
    key.write_new(&secret_path)?;
    key.public_key().write_new(&public_path)?;
    Ok(NewKey {
        key_id: key.key_id(),
        secret_path,
        public_path,
    })
}
