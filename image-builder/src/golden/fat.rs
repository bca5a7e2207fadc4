//! The FAT boot partition: `mkfs.vfat` on a file, then `mcopy` of a directory into its root.

use crate::tools::{self, ToolError};
use crate::tree::{self, TreeError};
use std::fs::{self, File};
use std::io;
use std::path::Path;
use thiserror::Error;

/// Below this size the boot partition is FAT16: mtools refuses FAT32 on small volumes (32 MiB
/// was refused) and FAT32 needs at least 65525 clusters anyway.
pub const FAT32_MIN: u64 = 64 << 20;

/// Why the FAT image could not be made.
#[derive(Debug, Error)]
pub enum FatError {
    #[error("`boot.dir`: {0} is not a directory")]
    NotADirectory(String),
    #[error("cannot prepare {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// Makes a FAT file system of `size` bytes in the file `output` holding the content of `dir`,
/// every file dated `epoch`. `volume_id` pins what mkfs.vfat would take from the clock.
pub fn make(
    output: &Path,
    size: u64,
    label: &str,
    volume_id: u32,
    dir: &Path,
    epoch: i64,
) -> Result<(), FatError> {
    if !dir.is_dir() {
        return Err(FatError::NotADirectory(dir.display().to_string()));
    }
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| FatError::Io { path, source }
    };
    let file = File::create(output).map_err(io_err(output))?;
    file.set_len(size).map_err(io_err(output))?;
    drop(file);

    let fat_bits = if size < FAT32_MIN { "16" } else { "32" };
    tools::run(
        tools::command("mkfs.vfat")
            .args([
                "-F",
                fat_bits,
                "-n",
                label,
                "-i",
                &format!("{volume_id:08x}"),
                "--invariant",
            ])
            .arg(output)
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;

    // mcopy -m keeps the files' mtimes: copy the directory first so they can be set to the
    // epoch without touching the caller's files.
    let staging = tempfile::Builder::new()
        .prefix("rota-boot-")
        .tempdir()
        .map_err(io_err(&std::env::temp_dir()))?;
    let root = staging.path().join("boot");
    fs::create_dir(&root).map_err(io_err(&root))?;
    let mut from = dir.as_os_str().to_owned();
    from.push("/.");
    tools::run(
        tools::command("cp")
            .args(["-r", "--preserve=mode"])
            .arg(from)
            .arg(&root),
    )?;
    tree::clamp_mtimes(&root, epoch)?;

    let mut entries: Vec<_> = fs::read_dir(&root)
        .map_err(io_err(&root))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io_err(&root))?;
    entries.sort();
    if entries.is_empty() {
        return Ok(());
    }
    tools::run(
        tools::command("mcopy")
            .arg("-i")
            .arg(output)
            .args(["-s", "-m", "-Q"])
            .args(&entries)
            .arg("::/")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    Ok(())
}
