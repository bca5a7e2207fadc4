//! The command line: one subcommand per job, each flag documented with its default.

use crate::golden::DiskFormat;
use crate::rootfs::FsKind;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Build Rota's keys, reproducible rootfs images, signed bundles and golden disk images, and
/// flash them.
///
/// Results go to stdout (a path, an id, or JSON with --json); progress and messages go to
/// stderr. Exit codes: 0 success, 1 failure, 2 bad usage (verify: 0 valid, 1 invalid,
/// 2 usage or I/O error).
#[derive(Debug, Parser)]
#[command(name = "rota-image", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a reproducible ext4, EROFS or SquashFS image from a directory or tarball.
    Rootfs(RootfsArgs),
    /// Build a GPT disk image (boot, rootfs-a, rootfs-b, data) from a layout file.
    Golden(GoldenArgs),
    /// Write a disk image to a block device or file, only the blocks that hold data.
    Flash(FlashArgs),
}

/// `rota-image rootfs SRC -o rootfs.img --fs ext4`
///
/// The same SRC and SOURCE_DATE_EPOCH give a byte-identical image: files are staged into a
/// temporary copy with every mtime set to the epoch, the UUID (and ext4 hash seed) are derived
/// from a digest of the tree, and mkfs runs with its reproducible-build options. Numeric owners
/// are kept when run as root.
#[derive(Debug, Args)]
pub struct RootfsArgs {
    /// Source: a directory, or a tarball (.tar, .tar.gz, .tar.zst; recognised by content).
    pub source: PathBuf,
    /// Image file to write (replaced if it exists).
    #[arg(short, long)]
    pub output: PathBuf,
    /// File system type.
    #[arg(long, value_enum)]
    pub fs: FsKind,
    /// ext4: the image size (default: from the tree, content + 20% + 16 MiB). erofs and
    /// squashfs: the largest size allowed (default: no limit). E.g. 512MiB, 2G.
    #[arg(long, value_parser = parse_size_arg)]
    pub size: Option<u64>,
    /// Volume label (ext4 only; erofs-utils 1.5 has no label option) [default: rootfs].
    #[arg(long)]
    pub label: Option<String>,
    /// Make every file owned by root:root instead of keeping the source's owners.
    #[arg(long)]
    pub all_root: bool,
    /// Print the result as JSON on stdout (default: the image path).
    #[arg(long)]
    pub json: bool,
}

/// `rota-image golden --layout layout.toml -o disk.img`
///
/// The layout file (TOML) is documented in image-builder/layouts/README.md; relative paths in
/// it are taken from the layout file's directory. File times on the boot and data partitions
/// and all GUIDs are pinned by SOURCE_DATE_EPOCH (default: now).
#[derive(Debug, Args)]
pub struct GoldenArgs {
    /// Layout file.
    #[arg(long)]
    pub layout: PathBuf,
    /// Disk image to write (replaced if it exists).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Output format: raw (sparse) or qcow2 (via qemu-img).
    #[arg(long, value_enum, default_value = "raw")]
    pub format: DiskFormat,
    /// Print the result (partition offsets and sizes) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `rota-image flash disk.img /dev/sdX --verify`
///
/// Writes only the image's data (its holes are skipped, as bmaptool does, without a separate
/// map file), then fsyncs. Refuses a block device that is mounted, holds the running system,
/// is used as swap or is held by LVM/dm/RAID, and asks for confirmation on a terminal. A
/// regular-file target is replaced and stays sparse.
#[derive(Debug, Args)]
pub struct FlashArgs {
    /// Disk image (raw) to write.
    pub image: PathBuf,
    /// Block device or file to write to.
    pub target: PathBuf,
    /// After writing, read the data back from the medium and compare sha256 (default: off).
    #[arg(long)]
    pub verify: bool,
    /// Do not ask for confirmation (required for a block device when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    crate::size::parse_size(text).map_err(|e| e.to_string())
}
