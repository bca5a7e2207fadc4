//! `rota-image rootfs`: a reproducible ext4, EROFS or SquashFS image from a directory or a
//! tarball. Reproducible means: the same input tree and `SOURCE_DATE_EPOCH` give the same bytes.
//! Everything that mkfs would otherwise take from the clock, the random generator or the source
//! file system's directory order is pinned: the tree is staged into a temporary directory with
//! every mtime set to the epoch, UUIDs and hash seeds are derived from a digest of the tree, and
//! the tools run with their reproducible-build switches.

use crate::ext4::{self, Ext4Error, Ext4Params};
use crate::size::{align_up, human};
use crate::tools::{self, ToolError};
use crate::tree::{self, TreeError, TreeStats};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The file systems `rootfs` can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// ext4 through `mkfs.ext4 -d` (read-write; sized by --size or from the tree).
    Ext4,
    /// EROFS through `mkfs.erofs` (read-only, uncompressed).
    Erofs,
    /// SquashFS through `mksquashfs` (read-only, gzip-compressed).
    Squashfs,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct RootfsOptions {
    /// A directory, or a tarball (`.tar`, gzip or zstd compressed).
    pub source: PathBuf,
    /// The image file to write (replaced if it exists).
    pub output: PathBuf,
    /// Which file system.
    pub fs: FsKind,
    /// ext4: the image size. EROFS/SquashFS: the largest size allowed. `None`: ext4 is sized
    /// from the tree (content plus room for metadata and the journal).
    pub size: Option<u64>,
    /// Volume label, ext4 only (`rootfs` when `None`).
    pub label: Option<String>,
    /// Make every file owned by root instead of keeping the source's numeric owners.
    pub all_root: bool,
    /// Timestamp for every file and for the file system itself; `None`: the newest mtime in the
    /// source.
    pub source_date_epoch: Option<i64>,
}

/// What was built.
#[derive(Debug, Clone, Serialize)]
pub struct RootfsReport {
    pub output: PathBuf,
    pub fs: FsKind,
    /// Size of the image file in bytes.
    pub size: u64,
    /// The file system UUID (derived from the tree's digest).
    pub uuid: String,
    /// The timestamp every file carries.
    pub source_date_epoch: i64,
    /// Bytes of regular-file content in the source.
    pub content_bytes: u64,
    /// Entries (files, directories, links) in the source.
    pub entries: u64,
}

/// Why a rootfs image could not be built.
#[derive(Debug, Error)]
pub enum RootfsError {
    #[error("the source {0} does not exist")]
    MissingSource(PathBuf),
    #[error("cannot read the tarball {path}")]
    Tarball {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot prepare the staging directory {path}")]
    Staging {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("the source does not fit in --size {} ({size} bytes): {what} needs at least {} ({needed} bytes)", human(*size), human(*needed))]
    TooSmall {
        what: String,
        needed: u64,
        size: u64,
    },
    #[error("cannot write the image {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
}

/// Room ext4 needs beyond file content when sizing from the tree: journal, group descriptors,
/// bitmaps, inode tables. Found by building trees of many sizes and keeping a margin.
const EXT4_BASE_OVERHEAD: u64 = 16 << 20;

/// Builds the image described by `options`.
pub fn build(options: &RootfsOptions) -> Result<RootfsReport, RootfsError> {
    if !options.source.exists() {
        return Err(RootfsError::MissingSource(options.source.clone()));
    }
    let staging = stage(&options.source, options.all_root)?;
    let root = staging.path().join("root");
    let stats = tree::stats(&root)?;
    let epoch = options
        .source_date_epoch
        .unwrap_or(stats.newest_mtime.max(0));
    // Digest first: reading the files updates their atimes, which the clamp then fixes.
    let digest = tree::digest(&root)?;
    tree::clamp_mtimes(&root, epoch)?;
    let uuid = uuid_from(&digest, b"fs-uuid");
    remove_if_exists(&options.output)?;
    let label = options.label.as_deref().unwrap_or("rootfs");

    match options.fs {
        FsKind::Ext4 => build_ext4(options, &root, &stats, epoch, &uuid, &digest, label)?,
        FsKind::Erofs => {
            if let Some(size) = options.size {
                check_fits("its file content", stats.file_bytes, size)?;
            }
            let mut cmd = tools::command("mkfs.erofs");
            cmd.arg("--quiet")
                .arg(format!("-T{epoch}"))
                .arg(format!("-U{uuid}"));
            if options.all_root {
                cmd.arg("--all-root");
            }
            cmd.arg(&options.output)
                .arg(&root)
                .env("SOURCE_DATE_EPOCH", epoch.to_string());
            tools::run(&mut cmd)?;
        }
        FsKind::Squashfs => {
            let epoch_arg = epoch.to_string();
            let mut cmd = tools::command("mksquashfs");
            cmd.arg(&root).arg(&options.output);
            cmd.args(["-noappend", "-reproducible", "-quiet", "-no-progress"]);
            cmd.args(["-mkfs-time", &epoch_arg, "-all-time", &epoch_arg]);
            // mksquashfs refuses SOURCE_DATE_EPOCH together with the explicit times above.
            cmd.env_remove("SOURCE_DATE_EPOCH");
            if options.all_root {
                cmd.arg("-all-root");
            }
            tools::run(&mut cmd)?;
        }
    }

    let size = fs::metadata(&options.output)
        .map_err(|source| RootfsError::Output {
            path: options.output.clone(),
            source,
        })?
        .len();
    if let (Some(limit), FsKind::Erofs | FsKind::Squashfs) = (options.size, options.fs) {
        if size > limit {
            let _ = fs::remove_file(&options.output);
            return Err(RootfsError::TooSmall {
                what: format!("the {:?} image", options.fs).to_lowercase(),
                needed: size,
                size: limit,
            });
        }
    }
    Ok(RootfsReport {
        output: options.output.clone(),
        fs: options.fs,
        size,
        uuid,
        source_date_epoch: epoch,
        content_bytes: stats.file_bytes,
        entries: stats.entries,
    })
}

fn check_fits(what: &str, needed: u64, size: u64) -> Result<(), RootfsError> {
    if needed > size {
        return Err(RootfsError::TooSmall {
            what: what.to_string(),
            needed,
            size,
        });
    }
    Ok(())
}

/// The size ext4 gets when none is asked for: content, inodes and directory blocks with a 20%
/// margin, plus room for the journal and metadata, rounded to whole MiB.
pub fn ext4_auto_size(stats: &TreeStats) -> u64 {
    let payload = stats.block_bytes + stats.entries * (256 + 4096);
    align_up(payload + payload / 5 + EXT4_BASE_OVERHEAD, 1 << 20)
}

fn build_ext4(
    options: &RootfsOptions,
    root: &Path,
    stats: &TreeStats,
    epoch: i64,
    uuid: &str,
    digest: &[u8; 32],
    label: &str,
) -> Result<(), RootfsError> {
    let size = match options.size {
        Some(size) => {
            check_fits("its file content", stats.file_bytes, size)?;
            size
        }
        None => ext4_auto_size(stats),
    };
    let hash_seed = uuid_from(digest, b"ext4-hash-seed");
    let params = Ext4Params {
        label,
        uuid,
        hash_seed: &hash_seed,
        epoch,
        populate_from: Some(root),
    };
    match ext4::make(&options.output, size, &params) {
        Ok(()) => Ok(()),
        Err(Ext4Error::OutOfSpace { .. }) => Err(RootfsError::TooSmall {
            what: format!(
                "ext4 with {} of files in {} entries",
                human(stats.file_bytes),
                stats.entries
            ),
            needed: ext4_auto_size(stats).max(size + 1),
            size,
        }),
        Err(e) => Err(e.into()),
    }
}

/// A UUID (RFC 4122 version 4 layout) derived from `digest` and a purpose tag, so the same tree
/// gives the same UUID and different purposes give different ones.
pub fn uuid_from(digest: &[u8; 32], purpose: &[u8]) -> String {
    let hash = Sha256::new()
        .chain_update(purpose)
        .chain_update(digest)
        .finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    )
}

fn remove_if_exists(path: &Path) -> Result<(), RootfsError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(RootfsError::Output {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Copies or extracts `source` into `<tempdir>/root`. The copy is what makes the build
/// reproducible: its mtimes can be rewritten without touching the caller's tree.
fn stage(source: &Path, all_root: bool) -> Result<tempfile::TempDir, RootfsError> {
    let staging_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Staging { path, source }
    };
    let staging = tempfile::Builder::new()
        .prefix("rota-rootfs-")
        .tempdir()
        .map_err(staging_err(&std::env::temp_dir()))?;
    let root = staging.path().join("root");
    if source.is_dir() {
        // `cp -a` keeps hard links, device nodes, xattrs and numeric owners (as root).
        let mut from = source.as_os_str().to_owned();
        from.push("/.");
        fs::create_dir(&root).map_err(staging_err(&root))?;
        tools::run(
            tools::command("cp")
                .arg("-a")
                .arg("--no-preserve=context")
                .arg(from)
                .arg(&root),
        )?;
    } else {
        fs::create_dir(&root).map_err(staging_err(&root))?;
        extract_tarball(source, &root)?;
    }
    if all_root {
        tree::chown_to_root(&root)?;
    }
    Ok(staging)
}

/// Unpacks a `.tar`, `.tar.gz` or `.tar.zst` (recognised by content, not name) into `dest`,
/// keeping modes and, when running as root, numeric owners.
fn extract_tarball(path: &Path, dest: &Path) -> Result<(), RootfsError> {
    let tar_err = |source| RootfsError::Tarball {
        path: path.to_path_buf(),
        source,
    };
    let mut file = BufReader::new(File::open(path).map_err(tar_err)?);
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(tar_err)?;
    let head = io::Cursor::new(magic[..n].to_vec());
    let reader: Box<dyn Read> = match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(head.chain(file))),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            Box::new(zstd::stream::read::Decoder::new(head.chain(file)).map_err(tar_err)?)
        }
        _ => Box::new(head.chain(file)),
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(rustix::process::geteuid().is_root());
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    archive.unpack(dest).map_err(tar_err)
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_purpose_bound() {
        let digest = [7u8; 32];
        let a = uuid_from(&digest, b"fs-uuid");
        assert_eq!(a, uuid_from(&digest, b"fs-uuid"));
        assert_ne!(a, uuid_from(&digest, b"ext4-hash-seed"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn auto_size_leaves_room() {
        let stats = TreeStats {
            entries: 10,
            file_bytes: 100 << 20,
            block_bytes: 100 << 20,
            newest_mtime: 0,
        };
        let size = ext4_auto_size(&stats);
        assert!(size > 120 << 20 && size % (1 << 20) == 0, "{size}");
    }
}
