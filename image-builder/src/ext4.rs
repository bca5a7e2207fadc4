//! `mkfs.ext4` with everything pinned that would otherwise come from the clock or the random
//! generator: UUID, directory hash seed, and the superblock and inode times.

use crate::tools::{self, ToolError};
use std::fs::File;
use std::io;
use std::path::Path;
use thiserror::Error;

/// How to make one ext4 file system.
#[derive(Debug, Clone, Copy)]
pub struct Ext4Params<'a> {
    /// Volume label.
    pub label: &'a str,
    /// File system UUID.
    pub uuid: &'a str,
    /// htree directory hash seed (a UUID).
    pub hash_seed: &'a str,
    /// The time the file system and its new inodes carry.
    pub epoch: i64,
    /// A directory whose content goes into the file system (`mkfs.ext4 -d`).
    pub populate_from: Option<&'a Path>,
}

/// Why mkfs.ext4 did not produce a file system.
#[derive(Debug, Error)]
pub enum Ext4Error {
    /// The content does not fit the requested size.
    #[error("ext4 of {size} bytes is too small for the content: {stderr}")]
    OutOfSpace { size: u64, stderr: String },
    #[error("cannot create {path}")]
    Create {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tool(ToolError),
    /// A file name debugfs cannot be given.
    #[error(
        "cannot pin the times of {0:?}: debugfs cannot take a name with a double quote or newline"
    )]
    UnsupportedName(String),
    /// debugfs refused to set an inode's times.
    #[error("debugfs could not set inode times: {0}")]
    Pin(String),
}

/// Writes a fresh ext4 file system of `size` bytes to the file `output` (replacing it).
pub fn make(output: &Path, size: u64, params: &Ext4Params<'_>) -> Result<(), Ext4Error> {
    let create_err = |source| Ext4Error::Create {
        path: output.display().to_string(),
        source,
    };
    // mke2fs writes only the blocks it needs: start from an all-holes file so nothing earlier
    // can leak into the image and the result stays sparse.
    let file = File::create(output).map_err(create_err)?;
    file.set_len(size).map_err(create_err)?;
    drop(file);

    let mut cmd = tools::command("mkfs.ext4");
    cmd.args([
        "-F",
        "-q",
        "-b",
        "4096",
        "-L",
        params.label,
        "-U",
        params.uuid,
        "-E",
    ]);
    // nodiscard: mke2fs would otherwise punch holes and rely on them reading as zeros, and an
    // image flashed sparsely onto a used card gets old bytes there (e2fsck then finds a broken
    // resize inode). Without discard it writes the zero blocks it needs, so they are mapped.
    cmd.arg(format!("hash_seed={},nodiscard", params.hash_seed));
    if let Some(dir) = params.populate_from {
        cmd.arg("-d").arg(dir);
    }
    cmd.arg(output);
    // mke2fs takes the superblock's and new inodes' times from the clock unless told otherwise.
    cmd.env("E2FSPROGS_FAKE_TIME", params.epoch.to_string());
    cmd.env("SOURCE_DATE_EPOCH", params.epoch.to_string());
    let result = tools::run(&mut cmd).map(|_| ());
    let result = match (result, params.populate_from) {
        (Ok(()), Some(dir)) => pin_inode_times(output, dir, params.epoch),
        (other, _) => other.map_err(Ext4Error::Tool),
    };
    match result {
        Ok(()) => Ok(()),
        Err(Ext4Error::Tool(error)) => {
            let _ = std::fs::remove_file(output);
            match error {
                ToolError::Failed { stderr, .. } if is_out_of_space(&stderr) => {
                    Err(Ext4Error::OutOfSpace { size, stderr })
                }
                other => Err(Ext4Error::Tool(other)),
            }
        }
        Err(other) => {
            let _ = std::fs::remove_file(output);
            Err(other)
        }
    }
}

/// e2fsprogs 1.47.0 copies each file's ctime and atime from the source tree (where ctime is
/// whenever the tree was copied and cannot be set), so `mkfs.ext4 -d` alone is not
/// reproducible. Set every inode's times to `epoch` afterwards with `debugfs`.
fn pin_inode_times(image: &Path, tree: &Path, epoch: i64) -> Result<(), Ext4Error> {
    let mut script = String::new();
    let mut bad_name = None;
    crate::tree::walk(tree, &mut |path, _| {
        let relative = path.strip_prefix(tree).unwrap_or(path);
        let name = format!("/{}", relative.display());
        // debugfs reads one command per line and has no escape for a double quote.
        if name.contains(['"', '\n']) {
            bad_name = Some(name);
            return Ok(());
        }
        for field in ["atime", "ctime", "mtime"] {
            script.push_str(&format!(
                "sif \"{name}\" {field} @{epoch}\nsif \"{name}\" {field}_extra 0\n"
            ));
        }
        Ok(())
    })
    .map_err(|e| Ext4Error::Create {
        path: tree.display().to_string(),
        source: io::Error::other(e),
    })?;
    if let Some(name) = bad_name {
        return Err(Ext4Error::UnsupportedName(name));
    }
    let script_file = tempfile::NamedTempFile::new()
        .and_then(|mut f| std::io::Write::write_all(&mut f, script.as_bytes()).map(|()| f))
        .map_err(|source| Ext4Error::Create {
            path: "a debugfs script".into(),
            source,
        })?;
    let output = tools::run(
        tools::command("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(script_file.path())
            .arg(image),
    )
    .map_err(Ext4Error::Tool)?;
    // debugfs reports command errors on stderr but exits 0.
    let stderr = String::from_utf8_lossy(&output.stderr);
    if let Some(line) = stderr.lines().find(|l| !l.starts_with("debugfs ")) {
        return Err(Ext4Error::Pin(line.to_string()));
    }
    Ok(())
}

fn is_out_of_space(stderr: &str) -> bool {
    [
        "Could not allocate",
        "No space left",
        "No free space",
        "too small",
        "Not enough space",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}
