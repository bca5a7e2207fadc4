//! Positioned reads and durable positioned writes on files and block devices.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::{Error, Result};

/// Resolves an offset that may be negative (counted back from the end of the device, as
/// libubootenv does for block devices) to an absolute one.
pub(crate) fn resolve_offset(path: &Path, offset: i64) -> Result<u64> {
    if offset >= 0 {
        return Ok(offset as u64);
    }
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io("measure", path, e))?;
    len.checked_sub(offset.unsigned_abs()).ok_or_else(|| {
        Error::io(
            "resolve negative offset in",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("offset {offset} is before the start of a {len}-byte device"),
            ),
        )
    })
}

/// Reads exactly `len` bytes at `offset`.
pub(crate) fn read_at(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io("seek", path, e))?;
    let len = usize::try_from(len).map_err(|_| {
        Error::io(
            "read",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "length too large"),
        )
    })?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(buf)
}

/// Writes `bytes` at `offset` with a single `write_all` and waits until the data is on the
/// medium. The file is never truncated or extended beyond what the write covers: on a block
/// device or a fixed-size env file the surrounding bytes (the other copy, partitions) must stay.
pub(crate) fn write_at_durably(path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open for writing", path, e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io("seek", path, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io("write", path, e))?;
    // fsync, not fdatasync: on a FAT boot partition the file's metadata (mtime) lives elsewhere,
    // and a block device needs its write cache flushed either way.
    file.sync_all().map_err(|e| Error::io("fsync", path, e))?;
    Ok(())
}
