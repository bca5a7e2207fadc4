//! Where `rota login` keeps the server URL and API key: `$XDG_CONFIG_HOME/rota/credentials.toml`
//! or `~/.config/rota/credentials.toml`, readable by the user only (0600, directory 0700).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub server: String,
    pub key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key, not even in debug output.
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("rota"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("rota")),
        None => bail!("neither XDG_CONFIG_HOME nor HOME is set: cannot find the credentials file"),
    }
}

pub fn path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("credentials.toml"))
}

pub fn parse(text: &str, origin: &Path) -> anyhow::Result<Credentials> {
    toml::from_str(text).with_context(|| format!("parsing {}", origin.display()))
}

/// The stored credentials, if `rota login` ran.
pub fn load() -> anyhow::Result<Option<Credentials>> {
    let path = path()?;
    match fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path).map(Some),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the credentials atomically with mode 0600; returns the file's path.
pub fn store(credentials: &Credentials) -> anyhow::Result<PathBuf> {
    let dir = config_dir()?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))?;
    let path = dir.join("credentials.toml");
    let temp = dir.join(".credentials.toml.tmp");
    let text = toml::to_string(credentials).context("encoding credentials")?;
    let _ = fs::remove_file(&temp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temp.display()))?;
    fs::rename(&temp, &path)
        .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))?;
    Ok(path)
}
