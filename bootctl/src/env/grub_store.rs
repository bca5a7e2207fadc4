//! Reading and writing a grubenv file.
//!
//! # Why in place and not temp file + rename
//!
//! Rota's rule for state files is "temp file, fsync, rename, fsync the directory". grubenv is
//! the exception, written in place with one 1024-byte write and an fsync:
//! - It lives on the FAT boot partition, where rename is not atomic (vfat has no journal: a
//!   power cut during a rename can leave both names, or neither, pointing at the data), so a
//!   rename would trade a detectable torn block for a possibly missing file.
//! - GRUB itself updates the block in place: `save_env` walks the file's disk blocks through a
//!   read hook each time it runs and writes those sectors directly, and `grub-editenv` rewrites
//!   the same file. (Contrary to a common belief, GRUB does not need the *same* blocks across
//!   writes: it looks them up at every `save_env`. What it needs is a plain, non-sparse,
//!   uncompressed file, which an in-place write keeps.)
//! - A torn in-place write is detected on the next read by Rota's generation markers (see
//!   [`super::grub`]), and the size never changes, so nothing else on the partition moves.

use std::path::{Path, PathBuf};

use super::grub::{self, GrubEnvError, GRUBENV_SIZE};
use super::io::read_at;
use super::{EnvVars, PlannedWrite};
use crate::{Error, Result};

/// One grubenv file.
#[derive(Clone, Debug)]
pub struct GrubEnvStore {
    path: PathBuf,
}

/// A block as read, remembering what the next write must cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedGrubEnv {
    pub vars: EnvVars,
    pub generation: Option<u32>,
    pub content_end: usize,
}

impl GrubEnvStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, source: GrubEnvError) -> Error {
        Error::GrubEnv {
            path: self.path.clone(),
            source,
        }
    }

    pub fn load(&self) -> Result<LoadedGrubEnv> {
        let size = std::fs::metadata(&self.path)
            .map_err(|e| Error::io("stat", &self.path, e))?
            .len();
        if size != GRUBENV_SIZE as u64 {
            return Err(self.error(GrubEnvError::WrongSize { size }));
        }
        let block = read_at(&self.path, 0, size)?;
        let parsed = grub::parse(&block).map_err(|e| self.error(e))?;
        Ok(LoadedGrubEnv {
            vars: parsed.vars,
            generation: parsed.generation,
            content_end: parsed.content_end,
        })
    }

    /// The single 1024-byte write that replaces `loaded` by `vars`, with the next generation.
    pub fn plan_store(&self, loaded: &LoadedGrubEnv, vars: &EnvVars) -> Result<PlannedWrite> {
        let generation = loaded.generation.map_or(1, |g| g.wrapping_add(1));
        let bytes =
            grub::serialize(vars, generation, loaded.content_end).map_err(|e| self.error(e))?;
        Ok(PlannedWrite {
            path: self.path.clone(),
            offset: 0,
            bytes,
        })
    }

    pub fn store(&self, loaded: &LoadedGrubEnv, vars: &EnvVars) -> Result<()> {
        self.plan_store(loaded, vars)?.apply()
    }
}
