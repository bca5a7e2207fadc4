//! The crate's error type. Each variant names what failed and where (file, line, offset, slot),
//! so the CLI can print it as-is and the updater can match on the kind.

use std::path::PathBuf;

use crate::env::fw_config::FwConfigError;
use crate::env::grub::GrubEnvError;
use crate::env::uboot::UbootEnvError;

/// Variants that wrap a cause keep it as `source()` (not in their own message), so printing
/// the chain (`anyhow`'s `{:#}`) shows each part once.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unknown slot {0:?} (expected A or B)")]
    UnknownSlot(String),

    #[error("no rota.slot= or rauc.slot= on the kernel command line in {}", path.display())]
    NoSlotOnCmdline { path: PathBuf },

    #[error("config {}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("U-Boot env config {}", path.display())]
    FwConfig {
        path: PathBuf,
        #[source]
        source: FwConfigError,
    },

    #[error("U-Boot env {location}")]
    UbootEnv {
        location: String,
        #[source]
        source: UbootEnvError,
    },

    #[error("both copies of the redundant U-Boot env are unusable: copy 0 ({first_location}): {first}; copy 1 ({second_location}): {second}")]
    BothCopiesCorrupt {
        first_location: String,
        first: UbootEnvError,
        second_location: String,
        second: UbootEnvError,
    },

    #[error("grubenv {}", path.display())]
    GrubEnv {
        path: PathBuf,
        #[source]
        source: GrubEnvError,
    },

    #[error("invalid attempts {attempts} for the {backend} backend: {reason}")]
    InvalidAttempts {
        backend: &'static str,
        attempts: u32,
        reason: &'static str,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the boot environment itself is damaged (bad CRC, torn write, wrong format), as
    /// opposed to I/O, configuration or usage errors. The CLI maps this to its own exit code.
    pub fn is_corrupt_env(&self) -> bool {
        matches!(
            self,
            Error::UbootEnv { .. } | Error::BothCopiesCorrupt { .. } | Error::GrubEnv { .. }
        )
    }
}
