//! Reading and writing the U-Boot environment where `fw_env.config` says it is.

use std::path::{Path, PathBuf};

use super::fw_config::{self, EnvCopyLocation, FwEnvConfig};
use super::io::{read_at, resolve_offset};
use super::uboot::{self, EnvLayout};
use super::{EnvVars, PlannedWrite};
use crate::{Error, Result};

/// The environment described by one `fw_env.config`.
#[derive(Clone, Debug)]
pub struct UbootEnvStore {
    config: FwEnvConfig,
}

/// An environment as read, remembering which copy was current so the next write goes to the
/// other one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedUbootEnv {
    pub vars: EnvVars,
    /// Index of the copy the variables came from (always 0 for a single env).
    pub current: usize,
    /// Its redundancy flag (`None` for a single env).
    pub flag: Option<u8>,
}

impl UbootEnvStore {
    /// Reads and parses `fw_env.config` at `config_path`.
    pub fn open(config_path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(config_path).map_err(|e| Error::io("read", config_path, e))?;
        let config = fw_config::parse(&text).map_err(|source| Error::FwConfig {
            path: config_path.to_owned(),
            source,
        })?;
        Ok(Self::new(config))
    }

    pub fn new(config: FwEnvConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &FwEnvConfig {
        &self.config
    }

    fn layout(&self) -> EnvLayout {
        if self.config.is_redundant() {
            EnvLayout::Redundant
        } else {
            EnvLayout::Single
        }
    }

    /// Reads the current environment: for a redundant env the valid copy with the newer flag.
    pub fn load(&self) -> Result<LoadedUbootEnv> {
        let layout = self.layout();
        let mut decoded = Vec::new();
        for copy in &self.config.copies {
            let image = read_copy(copy)?;
            decoded.push(uboot::parse_copy(&image, layout));
        }
        let mut decoded = decoded.into_iter();
        let first = decoded.next().expect("fw_config guarantees one copy");
        let Some(second) = decoded.next() else {
            let copy = first.map_err(|source| Error::UbootEnv {
                location: describe(&self.config.copies[0]),
                source,
            })?;
            return Ok(LoadedUbootEnv {
                vars: copy.vars,
                current: 0,
                flag: None,
            });
        };
        let (current, copy) = match (first, second) {
            (Ok(a), Ok(b)) => {
                let flags = (a.flag.unwrap_or(0), b.flag.unwrap_or(0));
                match uboot::current_copy(flags.0, flags.1) {
                    0 => (0, a),
                    _ => (1, b),
                }
            }
            (Ok(a), Err(_)) => (0, a),
            (Err(_), Ok(b)) => (1, b),
            (Err(first), Err(second)) => {
                return Err(Error::BothCopiesCorrupt {
                    first_location: describe(&self.config.copies[0]),
                    first,
                    second_location: describe(&self.config.copies[1]),
                    second,
                })
            }
        };
        Ok(LoadedUbootEnv {
            vars: copy.vars,
            current,
            flag: copy.flag,
        })
    }

    /// The single write that replaces `loaded` by `vars`: the obsolete copy with the next flag
    /// for a redundant env (the current copy stays intact until the new one is complete, and
    /// the flag makes the new one current only once its CRC is valid), or the only copy in place
    /// for a single env (a tear there is caught by the CRC on the next read).
    pub fn plan_store(&self, loaded: &LoadedUbootEnv, vars: &EnvVars) -> Result<PlannedWrite> {
        let layout = self.layout();
        let target = match layout {
            EnvLayout::Single => 0,
            EnvLayout::Redundant => 1 - loaded.current,
        };
        let flag = loaded.flag.unwrap_or(0).wrapping_add(1);
        let location = &self.config.copies[target];
        // fw_config bounds env_size to MAX_ENV_SIZE, so this fits any usize.
        let size = location.env_size as usize;
        let bytes =
            uboot::serialize_copy(vars, size, layout, flag).map_err(|source| Error::UbootEnv {
                location: describe(location),
                source,
            })?;
        Ok(PlannedWrite {
            path: location.device.clone(),
            offset: resolve_offset(&location.device, location.offset)?,
            bytes,
        })
    }

    /// Writes `vars` as the new environment, durably.
    pub fn store(&self, loaded: &LoadedUbootEnv, vars: &EnvVars) -> Result<()> {
        self.plan_store(loaded, vars)?.apply()
    }

    /// The devices this env lives on (for messages).
    pub fn devices(&self) -> Vec<PathBuf> {
        self.config
            .copies
            .iter()
            .map(|c| c.device.clone())
            .collect()
    }
}

fn read_copy(copy: &EnvCopyLocation) -> Result<Vec<u8>> {
    let offset = resolve_offset(&copy.device, copy.offset)?;
    read_at(&copy.device, offset, copy.env_size)
}

fn describe(copy: &EnvCopyLocation) -> String {
    format!("{} at offset {:#x}", copy.device.display(), copy.offset)
}
