//! `rota-image golden`: a whole-disk GPT image (boot, rootfs-a, rootfs-b, data) from a layout
//! file, as raw or qcow2. Each partition's content is built in a temporary file and copied in
//! sparsely, so the image only holds the blocks that carry data.

pub mod fat;
pub mod gpt;
pub mod layout;

use self::gpt::{Placed, PlanError, Role};
use self::layout::{Layout, LayoutError, SlotBContents};
use crate::ext4::{self, Ext4Error, Ext4Params};
use crate::size::human;
use crate::sparse;
use crate::tools::{self, ToolError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub use self::fat::FatError;

/// The output format of the disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A plain, sparse disk image (for `rota-image flash`, dd, bmaptool).
    Raw,
    /// QEMU's qcow2 (for VMs), converted with `qemu-img`.
    Qcow2,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct GoldenOptions {
    pub layout: PathBuf,
    pub output: PathBuf,
    pub format: DiskFormat,
    /// Timestamp for the files on the boot and data partitions; `None`: now.
    pub source_date_epoch: Option<i64>,
}

/// What was built.
#[derive(Debug, Clone, Serialize)]
pub struct GoldenReport {
    pub output: PathBuf,
    pub format: DiskFormat,
    pub disk_size: u64,
    /// Bytes of the raw image that hold data (the rest are holes).
    pub data_bytes: u64,
    pub partitions: Vec<Placed>,
}

/// Why the golden image could not be built.
#[derive(Debug, Error)]
pub enum GoldenError {
    #[error("cannot read the layout file {path}")]
    ReadLayout {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layout file {path}: {source}")]
    Layout {
        path: PathBuf,
        #[source]
        source: LayoutError,
    },
    #[error("layout file {path}: {source}")]
    Plan {
        path: PathBuf,
        #[source]
        source: PlanError,
    },
    #[error("layout file {layout}: `{key}`: {path} {problem}")]
    BadPath {
        layout: PathBuf,
        key: &'static str,
        path: PathBuf,
        problem: &'static str,
    },
    #[error("`rootfs-a.image`: cannot read {path}")]
    SlotImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`data`: cannot make its file system")]
    Data(#[source] Ext4Error),
    #[error("`boot`: cannot make its file system")]
    Boot(#[source] FatError),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// Reads and validates a layout file.
pub fn read_layout(path: &Path) -> Result<Layout, GoldenError> {
    let text = fs::read_to_string(path).map_err(|source| GoldenError::ReadLayout {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    layout::parse(&text, base).map_err(|source| GoldenError::Layout {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks that the files and directories a layout names exist, before anything is written.
fn check_paths(layout_path: &Path, layout: &Layout) -> Result<(), GoldenError> {
    let bad = |key, path: &Path, problem| GoldenError::BadPath {
        layout: layout_path.to_path_buf(),
        key,
        path: path.to_path_buf(),
        problem,
    };
    if !layout.boot_dir.is_dir() {
        return Err(bad("boot.dir", &layout.boot_dir, "is not a directory"));
    }
    if let Some(dir) = layout.data_dir.as_deref().filter(|d| !d.is_dir()) {
        return Err(bad("data.dir", dir, "is not a directory"));
    }
    if !layout.slot_a_image.is_file() {
        return Err(bad("rootfs-a.image", &layout.slot_a_image, "is not a file"));
    }
    Ok(())
}

/// Builds the disk image; `step` is told about each stage (for progress lines). On failure
/// no partial image is left under the output name.
pub fn build(
    options: &GoldenOptions,
    step: &mut dyn FnMut(&str),
) -> Result<GoldenReport, GoldenError> {
    let layout = read_layout(&options.layout)?;
    check_paths(&options.layout, &layout)?;
    let result = build_checked(options, &layout, step);
    if result.is_err() {
        let _ = fs::remove_file(&options.output);
    }
    result
}

fn build_checked(
    options: &GoldenOptions,
    layout: &Layout,
    step: &mut dyn FnMut(&str),
) -> Result<GoldenReport, GoldenError> {
    let slot_image_err = |source| GoldenError::SlotImage {
        path: layout.slot_a_image.clone(),
        source,
    };
    let slot_image = File::open(&layout.slot_a_image).map_err(slot_image_err)?;
    let slot_image_size = slot_image.metadata().map_err(slot_image_err)?.len();
    let placed = gpt::plan(layout, slot_image_size).map_err(|source| GoldenError::Plan {
        path: options.layout.clone(),
        source,
    })?;
    let epoch = options.source_date_epoch.unwrap_or_else(now);

    // GUIDs and volume ids come from the layout and the slot image's size and time, so that
    // the same inputs give the same disk.
    let layout_text = fs::read(&options.layout).unwrap_or_default();
    let seed: Vec<u8> = Sha256::new()
        .chain_update(&layout_text)
        .chain_update(slot_image_size.to_le_bytes())
        .chain_update(epoch.to_le_bytes())
        .finalize()
        .to_vec();

    let out_dir = options
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GoldenError::Write { path, source }
    };
    let scratch = tempfile::Builder::new()
        .prefix(".rota-golden-")
        .tempdir_in(out_dir)
        .map_err(write_err(out_dir))?;
    let raw_path = match options.format {
        DiskFormat::Raw => options.output.clone(),
        DiskFormat::Qcow2 => scratch.path().join("disk.raw"),
    };
    let _ = fs::remove_file(&raw_path);
    let mut disk = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&raw_path)
        .map_err(write_err(&raw_path))?;
    disk.set_len(layout.disk_size)
        .map_err(write_err(&raw_path))?;
    step(&format!(
        "partition table: {} disk, GPT with {} partitions",
        human(layout.disk_size),
        placed.len()
    ));
    gpt::write_table(&mut disk, layout.arch, &placed, &seed).map_err(|source| {
        GoldenError::Plan {
            path: options.layout.clone(),
            source,
        }
    })?;

    for part in &placed {
        let copy_in = |file: &File| sparse::copy_sparse(file, &disk, part.offset).map(|_| ());
        match part.role {
            Role::Boot => {
                step(&format!(
                    "boot: FAT {} from {}",
                    human(part.size),
                    layout.boot_dir.display()
                ));
                let fat_path = scratch.path().join("boot.fat");
                let volume_id = u32::from_le_bytes(seed[..4].try_into().unwrap_or_default());
                fat::make(
                    &fat_path,
                    part.size,
                    &layout.boot_label,
                    volume_id,
                    &layout.boot_dir,
                    epoch,
                )
                .map_err(GoldenError::Boot)?;
                let fat = File::open(&fat_path).map_err(write_err(&fat_path))?;
                copy_in(&fat).map_err(write_err(&raw_path))?;
            }
            Role::RootfsA => {
                step(&format!(
                    "rootfs-a: {} from {}",
                    human(slot_image_size),
                    layout.slot_a_image.display()
                ));
                copy_in(&slot_image).map_err(write_err(&raw_path))?;
            }
            Role::RootfsB if layout.slot_b_contents == SlotBContents::CopyOfA => {
                step("rootfs-b: a copy of rootfs-a");
                copy_in(&slot_image).map_err(write_err(&raw_path))?;
            }
            Role::RootfsB => step("rootfs-b: empty"),
            Role::Data => {
                step(&format!("data: ext4 {}", human(part.size)));
                let data_path = scratch.path().join("data.ext4");
                let uuid = gpt::derived_guid(&seed, "data-fs").to_string();
                let hash_seed = gpt::derived_guid(&seed, "data-hash-seed").to_string();
                let params = Ext4Params {
                    label: &layout.data_label,
                    uuid: &uuid,
                    hash_seed: &hash_seed,
                    epoch,
                    populate_from: layout.data_dir.as_deref(),
                };
                ext4::make(&data_path, part.size, &params).map_err(GoldenError::Data)?;
                let data = File::open(&data_path).map_err(write_err(&data_path))?;
                copy_in(&data).map_err(write_err(&raw_path))?;
                drop(data);
                let _ = fs::remove_file(&data_path);
            }
        }
    }
    disk.sync_all().map_err(write_err(&raw_path))?;
    let data_bytes = sparse::total(&sparse::data_ranges(&disk).map_err(write_err(&raw_path))?);
    drop(disk);

    if options.format == DiskFormat::Qcow2 {
        step("converting to qcow2");
        let _ = fs::remove_file(&options.output);
        tools::run(
            tools::command("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw_path)
                .arg(&options.output),
        )?;
    }
    Ok(GoldenReport {
        output: options.output.clone(),
        format: options.format,
        disk_size: layout.disk_size,
        data_bytes,
        partitions: placed,
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
