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
#[command(name = "rota-image", version)]
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
    /// Make a new Ed25519 signing key (NAME.key, mode 0600) and public key (NAME.pub).
    Keygen(KeygenArgs),
    /// Sign images into a bundle (.rota).
    Bundle(BundleArgs),
    /// Show a bundle's signers and, with --keyring, its verified manifest.
    Inspect(InspectArgs),
    /// Check a bundle's signature and every chunk; exit 0 valid, 1 invalid, 2 usage/I/O error.
    Verify(VerifyArgs),
    /// Make a signed delta from one bundle to the next: what robots running the first fetch
    /// instead of the chunks they lack (`rota-updater install NEW --delta DELTA`).
    Delta(DeltaArgs),
    /// Pack an app's directory into a signed app release (.rota), installed beside the OS by
    /// `rota-updater app install` without a reboot.
    App(AppArgs),
}

/// `rota-image app ./nav --compatible lekiwi-rpi5 --version 1.4.0 --key release.key -o nav-1.4.0.rota`
///
/// The directory's tree becomes the release (a reproducible tar: sorted, owned by root, every
/// mtime SOURCE_DATE_EPOCH). Its rota-app.toml names the app and says what the robot does when
/// the release becomes current; all of it is signed:
///
///   name = "nav"                       # a-z 0-9 - _ . ; the directory on the robot
///   units = ["nav.service"]            # restarted, in order
///   os_versions = ">=1.4, <2"          # OS releases it runs on (default: any)
///   check_deadline_secs = 30           # all checks pass by then, or the robot switches back
///   [[checks]]
///   name = "answers"
///   http = "http://127.0.0.1:8080/health"
///   expect_status = 200                # default 200
///   body_contains = "healthy"          # optional
///   timeout_secs = 5                   # one attempt; default 5
///   [[checks]]
///   name = "running"
///   unit = "nav.service"               # or: command = ["/path/to/selftest", "--quick"]
#[derive(Debug, Args)]
pub struct AppArgs {
    /// The app's directory.
    pub dir: PathBuf,
    /// The spec file (default: DIR/rota-app.toml).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    #[command(flatten)]
    pub release: ReleaseArgs,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// Image bytes before each chunk that its zstd frame may refer to (see `bundle`).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_zstd_window)]
    pub zstd_window: u32,
    /// Average content-defined chunk size (see `bundle`).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_chunk_size)]
    pub chunk_size: u64,
}

/// `rota-image delta --from 1.2.0.rota --to 1.3.0.rota --key release.key -o 1.3.0.from-1.2.0.rdelta`
///
/// For each chunk of the new image that the old one lacks, a zstd frame compressed against
/// the old image around where that content was (a robot reads it from its booted slot). Much
/// smaller than the chunks for a package upgrade (the changed library against its old
/// version); never needed: a robot without it, or running another version, fetches the chunks
/// from the bundle. Every chunk a delta rebuilds is checked against the new bundle's signed
/// chunk table on the robot.
#[derive(Debug, Args)]
pub struct DeltaArgs {
    /// The bundle robots run now.
    #[arg(long)]
    pub from: PathBuf,
    /// The bundle they install.
    #[arg(long)]
    pub to: PathBuf,
    /// Secret key file to sign the delta with (robots trust it as they trust bundles); repeat
    /// for several.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Directory of public keys that both bundles must verify against (default: the public
    /// keys of --key).
    #[arg(long)]
    pub keyring: Option<PathBuf>,
    /// The image to make the delta of (default: the first root filesystem image).
    #[arg(long)]
    pub image: Option<String>,
    /// zstd level of the patches (1-22): made once, fetched by every robot.
    #[arg(long, default_value_t = rota_bundle::delta::DEFAULT_DELTA_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=22))]
    pub level: i32,
    /// Where to write the delta.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print what the delta holds as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `rota-image keygen --out keys/release`
///
/// Prints the new key id on stdout. Refuses to overwrite existing key files.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Path prefix of the key files: NAME.key (secret, mode 0600) and NAME.pub (public, for
    /// keyring directories).
    #[arg(long)]
    pub out: PathBuf,
    /// Print key id and file paths as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `rota-image bundle --compatible lekiwi-rpi5 --version 1.2.0 --key release.key --image rootfs=rootfs.img --zstd -o app.rota`
///
/// Reproducible: the build time is SOURCE_DATE_EPOCH (default: now) and nothing else depends on
/// the clock or randomness, so the same inputs give the same bytes.
#[derive(Debug, Args)]
pub struct BundleArgs {
    #[command(flatten)]
    pub release: ReleaseArgs,
    /// An image as [rootfs:]NAME=PATH; repeatable, in payload order.
    #[arg(long = "image", required = true)]
    pub images: Vec<crate::bundle_cmd::ImageSpec>,
    /// Compress chunks with zstd (default: stored uncompressed).
    #[arg(long)]
    pub zstd: bool,
    /// zstd level with --zstd.
    #[arg(long, default_value_t = 3, requires = "zstd")]
    pub zstd_level: i32,
    /// With --zstd: image bytes before each chunk that its frame may refer to, a power of two
    /// from 4KiB to 8MiB, or 0 for independent frames. A larger window makes the bundle
    /// smaller and costs robots that much memory while they install; 0 writes format version
    /// 1, which updaters older than version 2 bundles can read.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", requires = "zstd", value_parser = parse_zstd_window)]
    pub zstd_window: u32,
    /// Average content-defined chunk size, a power of two from 4KiB to 1MiB (chunks range from
    /// a quarter of it to four times it). Smaller: a delta update fetches less around each
    /// change, and every update fetches a larger manifest (about 80 bytes per chunk).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_chunk_size)]
    pub chunk_size: u64,
}

/// What every signed release says about itself and where it goes: `bundle` and `app`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The product/board string robots compare with their own.
    #[arg(long)]
    pub compatible: String,
    /// Release version (semver, e.g. 1.2.0); robots refuse a lower one than they run unless
    /// asked.
    #[arg(long)]
    pub version: semver::Version,
    /// Secret key file to sign with; repeat to sign with several keys (key rotation).
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Anti-rollback counter; robots refuse releases below the one they run.
    #[arg(long, default_value_t = 0)]
    pub security_version: u32,
    /// Git commit the release was built from (default: none recorded).
    #[arg(long)]
    pub git_commit: Option<String>,
    /// Git branch the release was built from (needs --git-commit).
    #[arg(long, requires = "git_commit")]
    pub git_branch: Option<String>,
    /// Free text shown by inspect and the fleet dashboard (default: empty).
    #[arg(long, default_value = "")]
    pub description: String,
    /// Bundle file to write (replaced atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the result as JSON on stdout (default: the bundle path).
    #[arg(long)]
    pub json: bool,
}

/// `rota-image inspect app.rota --keyring keys/`
///
/// Without --keyring only the signers' key ids can be shown: rota-bundle hands out manifest
/// fields only after a trusted signature verified them. Exit 0 when the bundle could be read
/// (whatever its signature), 1 when not.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle.
    pub bundle: PathBuf,
    /// Directory of trusted public keys (*.pub).
    #[arg(long)]
    pub keyring: Option<PathBuf>,
    /// Print JSON on stdout (default: text).
    #[arg(long)]
    pub json: bool,
}

/// `rota-image verify app.rota --keyring keys/`
///
/// Checks the signature against the keyring, then every chunk's sha256 on all cores. Prints
/// VALID or INVALID with the reason. Exit codes: 0 valid, 1 invalid (bad signature, untrusted
/// signer, damaged or truncated data), 2 bad usage or an I/O error (unreadable file/keyring).
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle.
    pub bundle: PathBuf,
    /// Directory of trusted public keys (*.pub).
    #[arg(long)]
    pub keyring: PathBuf,
    /// Also hash each whole image and compare with the manifest (limited to one core; the chunk
    /// hashes already cover every byte). Default: off.
    #[arg(long)]
    pub full_image_hash: bool,
    /// Print the verdict as JSON on stdout.
    #[arg(long)]
    pub json: bool,
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

/// A size that is a valid average chunk size: refused as a usage error (exit 2) before any work.
fn parse_chunk_size(text: &str) -> Result<u64, String> {
    let size = parse_size_arg(text)?;
    rota_bundle::ChunkSizes::around(size).map_err(|e| e.to_string())?;
    Ok(size)
}

/// A prefix window the format allows, or 0: refused as a usage error (exit 2) before any work.
fn parse_zstd_window(text: &str) -> Result<u32, String> {
    let size = parse_size_arg(text)?;
    let limit = u64::from(rota_bundle::MAX_PREFIX_WINDOW);
    if size == 0 || (size.is_power_of_two() && (4 << 10..=limit).contains(&size)) {
        Ok(size as u32)
    } else {
        Err(format!(
            "{size} bytes is not 0 or a power of two from 4KiB to 8MiB"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap checks flag names and conflicts only when a command is built: do it for all.
    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
