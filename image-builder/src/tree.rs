//! Walks a file tree in a stable (sorted) order, for the things reproducible images need:
//! a digest of the tree, its size, its newest mtime, and clamping every mtime to one value.

use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A file in the tree that could not be read or changed.
#[derive(Debug, Error)]
#[error("{action} {path}")]
pub struct TreeError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn tree_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TreeError {
    let path = path.to_path_buf();
    move |source| TreeError {
        action,
        path,
        source,
    }
}

/// Calls `visit` for `root` and everything below it, parents before children, siblings sorted
/// by name, without following symlinks.
pub fn walk(
    root: &Path,
    visit: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<(), TreeError>,
) -> Result<(), TreeError> {
    let meta = fs::symlink_metadata(root).map_err(tree_err("cannot stat", root))?;
    visit(root, &meta)?;
    if meta.is_dir() {
        let mut names = Vec::new();
        for entry in fs::read_dir(root).map_err(tree_err("cannot list", root))? {
            names.push(entry.map_err(tree_err("cannot list", root))?.file_name());
        }
        names.sort();
        for name in names {
            walk(&root.join(name), visit)?;
        }
    }
    Ok(())
}

/// What a tree holds, summed over all entries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeStats {
    /// Number of entries (files, directories, links, nodes), the root included.
    pub entries: u64,
    /// Bytes of regular-file content.
    pub file_bytes: u64,
    /// Bytes of regular-file content with each file rounded up to 4 KiB blocks.
    pub block_bytes: u64,
    /// The newest modification time (seconds since the epoch).
    pub newest_mtime: i64,
}

/// Counts entries and bytes of the tree at `root`.
pub fn stats(root: &Path) -> Result<TreeStats, TreeError> {
    let mut stats = TreeStats {
        newest_mtime: i64::MIN,
        ..TreeStats::default()
    };
    walk(root, &mut |_, meta| {
        stats.entries += 1;
        if meta.is_file() {
            stats.file_bytes += meta.len();
            stats.block_bytes += meta.len().div_ceil(4096) * 4096;
        }
        stats.newest_mtime = stats.newest_mtime.max(meta.mtime());
        Ok(())
    })?;
    Ok(stats)
}

/// Sets the access and modification time of every entry below and including `root` to
/// `epoch` (symlinks themselves, not their targets).
pub fn clamp_mtimes(root: &Path, epoch: i64) -> Result<(), TreeError> {
    let time = Timespec {
        tv_sec: epoch,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    walk(root, &mut |path, _| {
        rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| TreeError {
            action: "cannot set the mtime of",
            path: path.to_path_buf(),
            source: e.into(),
        })
    })
}

/// Makes every entry of the tree owned by root (uid 0, gid 0).
pub fn chown_to_root(root: &Path) -> Result<(), TreeError> {
    walk(root, &mut |path, _| {
        std::os::unix::fs::lchown(path, Some(0), Some(0)).map_err(tree_err("cannot chown", path))
    })
}

/// A sha256 over the tree's names, kinds, modes, owners, link targets and file contents (not
/// its times): equal trees give equal digests, so ids derived from it are reproducible.
pub fn digest(root: &Path) -> Result<[u8; 32], TreeError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    walk(root, &mut |path, meta| {
        let relative = path.strip_prefix(root).unwrap_or(path);
        hasher.update(relative.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        let kind = meta.file_type();
        hasher.update(meta.mode().to_le_bytes());
        hasher.update(meta.uid().to_le_bytes());
        hasher.update(meta.gid().to_le_bytes());
        if kind.is_file() {
            hasher.update(meta.len().to_le_bytes());
            let mut file = fs::File::open(path).map_err(tree_err("cannot open", path))?;
            loop {
                let n = file.read(&mut buf).map_err(tree_err("cannot read", path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        } else if kind.is_symlink() {
            let target = fs::read_link(path).map_err(tree_err("cannot read the link", path))?;
            hasher.update(target.as_os_str().as_encoded_bytes());
        } else if kind.is_block_device() || kind.is_char_device() {
            hasher.update(meta.rdev().to_le_bytes());
        }
        hasher.update([0xff]);
        Ok(())
    })?;
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_times_but_not_contents() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/hostname"), "robot\n").unwrap();
        let before = digest(dir.path()).unwrap();
        clamp_mtimes(dir.path(), 1_700_000_000).unwrap();
        assert_eq!(digest(dir.path()).unwrap(), before);
        assert_eq!(stats(dir.path()).unwrap().newest_mtime, 1_700_000_000);
        fs::write(dir.path().join("etc/hostname"), "robot2\n").unwrap();
        assert_ne!(digest(dir.path()).unwrap(), before);
    }

    #[test]
    fn stats_count_blocks() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 5000]).unwrap();
        let stats = stats(dir.path()).unwrap();
        assert_eq!(
            (stats.entries, stats.file_bytes, stats.block_bytes),
            (2, 5000, 8192)
        );
    }
}
