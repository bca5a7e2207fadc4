//! `/etc/rota/bootctl.toml`: which backend, and where its files are.
//!
//! ```toml
//! backend = "uboot"                      # or "grub"; default "uboot"
//! uboot_config = "/etc/fw_env.config"    # fw_env.config locating the U-Boot env
//! grubenv = "/boot/efi/grub/grubenv"     # GRUB env block on the boot partition
//! cmdline = "/proc/cmdline"              # where rota.slot= / rauc.slot= is read
//! default_attempts = 3                   # U-Boot attempts of a good slot (1..=15)
//! ```
//! Every key is optional; unknown keys are an error (a typo must not silently fall back).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::uboot_backend::{check_attempts, DEFAULT_ATTEMPTS};
use crate::{BackendKind, Error, Result};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/rota/bootctl.toml";
pub const DEFAULT_UBOOT_CONFIG: &str = "/etc/fw_env.config";
pub const DEFAULT_GRUBENV: &str = "/boot/efi/grub/grubenv";
pub const DEFAULT_CMDLINE: &str = "/proc/cmdline";

/// Validated settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    pub backend: BackendKind,
    pub uboot_config: PathBuf,
    pub grubenv: PathBuf,
    pub cmdline: PathBuf,
    pub default_attempts: u32,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Uboot,
            uboot_config: DEFAULT_UBOOT_CONFIG.into(),
            grubenv: DEFAULT_GRUBENV.into(),
            cmdline: DEFAULT_CMDLINE.into(),
            default_attempts: DEFAULT_ATTEMPTS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    backend: Option<BackendKind>,
    uboot_config: Option<PathBuf>,
    grubenv: Option<PathBuf>,
    cmdline: Option<PathBuf>,
    default_attempts: Option<u32>,
}

impl BootConfig {
    /// Reads and validates the file at `path`; a missing file is an error.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Self::parse(&text, path)
    }

    /// Like [`BootConfig::load`], but a missing file gives the defaults.
    pub fn load_or_default(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Parses TOML text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let config_error = |message: String| Error::Config {
            path: path.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| config_error(e.to_string()))?;
        let defaults = Self::default();
        let config = Self {
            backend: raw.backend.unwrap_or(defaults.backend),
            uboot_config: raw.uboot_config.unwrap_or(defaults.uboot_config),
            grubenv: raw.grubenv.unwrap_or(defaults.grubenv),
            cmdline: raw.cmdline.unwrap_or(defaults.cmdline),
            default_attempts: raw.default_attempts.unwrap_or(defaults.default_attempts),
        };
        check_attempts(config.default_attempts)
            .map_err(|e| config_error(format!("default_attempts: {e}")))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let path = Path::new("bootctl.toml");
        assert_eq!(BootConfig::parse("", path).unwrap(), BootConfig::default());
        let c = BootConfig::parse("backend = \"grub\"\ngrubenv = \"/x/grubenv\"\n", path).unwrap();
        assert_eq!(c.backend, BackendKind::Grub);
        assert_eq!(c.grubenv, PathBuf::from("/x/grubenv"));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let path = Path::new("/etc/rota/bootctl.toml");
        for (text, needle) in [
            ("backend = \"lilo\"", "lilo"),
            ("grub_env = \"/x\"", "grub_env"),
            ("default_attempts = 0", "default_attempts"),
        ] {
            let message = BootConfig::parse(text, path).unwrap_err().to_string();
            assert!(message.contains("/etc/rota/bootctl.toml"), "{message}");
            assert!(message.contains(needle), "{message}");
        }
    }
}
