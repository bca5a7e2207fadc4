//! The target slot: a block device on a robot, a regular file in tests.
//!
//! Opening refuses the booted slot and anything mounted. The verifying workers write the slot
//! through a second handle (positioned writes, see `rota_bundle::PositionedSink`), and the
//! install makes it durable before the slot is ever made bootable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rota_bootctl::mountinfo;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{op} slot {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing to write {}: it is the booted root ({why})", path.display())]
    BootedSlot { path: PathBuf, why: String },
    #[error("refusing to write {}: it is mounted at {mount_point}", path.display())]
    Mounted { path: PathBuf, mount_point: String },
    #[error("image of {needed} bytes does not fit slot {} of {capacity} bytes", path.display())]
    TooSmall {
        path: PathBuf,
        needed: u64,
        capacity: u64,
    },
}

/// Identity of a slot target: the device number for block devices, (device, inode) for files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    Device(u64),
    File { dev: u64, ino: u64 },
}

fn identity(metadata: &fs::Metadata) -> Identity {
    if metadata.file_type().is_block_device() {
        Identity::Device(metadata.rdev())
    } else {
        Identity::File {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

/// Linux's `makedev` for the `major:minor` of mountinfo.
fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

/// What a slot must not be.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The booted slot's device or file, from the config.
    pub booted_slot: PathBuf,
    /// Mounted filesystems, normally `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// The running root, normally `/`.
    pub root: PathBuf,
}

impl Guard {
    pub fn new(booted_slot: impl Into<PathBuf>) -> Guard {
        Guard {
            booted_slot: booted_slot.into(),
            mountinfo: "/proc/self/mountinfo".into(),
            root: "/".into(),
        }
    }

    fn check(&self, path: &Path, target: &fs::Metadata) -> Result<(), SinkError> {
        let target_id = identity(target);
        let booted = |why: String| SinkError::BootedSlot {
            path: path.to_owned(),
            why,
        };
        if let Ok(booted_meta) = fs::metadata(&self.booted_slot) {
            if identity(&booted_meta) == target_id {
                return Err(booted(format!(
                    "same device as the booted slot {}",
                    self.booted_slot.display()
                )));
            }
        }
        if let Identity::Device(rdev) = target_id {
            let root_dev = fs::metadata(&self.root)
                .map_err(|source| SinkError::Io {
                    op: "stat root",
                    path: self.root.clone(),
                    source,
                })?
                .dev();
            if root_dev == rdev {
                return Err(booted(format!("{} lives on it", self.root.display())));
            }
        }
        // No mountinfo (not Linux, odd sandbox): nothing to compare against.
        let mounts = fs::read_to_string(&self.mountinfo).unwrap_or_default();
        let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        for mount in mountinfo::parse(&mounts) {
            let same_device = matches!(target_id, Identity::Device(rdev) if rdev == makedev(mount.major, mount.minor));
            let same_source = mount.source.starts_with('/')
                && fs::canonicalize(&mount.source).is_ok_and(|source| source == canonical);
            if same_device || same_source {
                return Err(SinkError::Mounted {
                    path: path.to_owned(),
                    mount_point: mount.mount_point,
                });
            }
        }
        Ok(())
    }
}

/// An open slot, written at explicit offsets so a resumed install continues mid-image.
pub struct SlotWriter {
    file: File,
    path: PathBuf,
    capacity: u64,
}

impl SlotWriter {
    /// Opens an existing slot for writing after the guard's checks. Never creates or truncates:
    /// a slot is a fixed-size partition (or a preallocated file in tests).
    pub fn open(path: &Path, guard: &Guard) -> Result<SlotWriter, SinkError> {
        let io_error = |op| {
            move |source| SinkError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let metadata = fs::metadata(path).map_err(io_error("stat"))?;
        guard.check(path, &metadata)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error("open"))?;
        let capacity = if metadata.file_type().is_block_device() {
            file.seek(SeekFrom::End(0)).map_err(io_error("measure"))?
        } else {
            metadata.len()
        };
        Ok(SlotWriter {
            file,
            path: path.to_owned(),
            capacity,
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn check_fits(&self, needed: u64) -> Result<(), SinkError> {
        if needed > self.capacity {
            return Err(SinkError::TooSmall {
                path: self.path.clone(),
                needed,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    fn io_error(&self, op: &'static str) -> impl FnOnce(io::Error) -> SinkError + '_ {
        move |source| SinkError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// A second handle on the slot, for the threads that write and fsync it.
    pub fn try_clone_file(&self) -> Result<File, SinkError> {
        self.file
            .try_clone()
            .map_err(self.io_error("clone handle of"))
    }

    /// Reads back `length` bytes at `offset`, to re-check chunks written before a restart.
    pub fn read_at(&self, offset: u64, length: usize) -> Result<Vec<u8>, SinkError> {
        let mut data = vec![0u8; length];
        self.file
            .read_exact_at(&mut data, offset)
            .map_err(self.io_error("read back"))?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(dir: &Path) -> Guard {
        Guard {
            booted_slot: dir.join("slot-a"),
            mountinfo: dir.join("mountinfo"),
            root: "/".into(),
        }
    }

    #[test]
    fn refuses_the_booted_slot_and_a_mounted_target() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("slot-a"), vec![0u8; 4096]).unwrap();
        fs::write(dir.path().join("slot-b"), vec![0u8; 4096]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("slot-a"), dir.path().join("alias")).unwrap();
        let guard = guard(dir.path());
        assert!(SlotWriter::open(&dir.path().join("slot-b"), &guard).is_ok());
        let booted = SlotWriter::open(&dir.path().join("alias"), &guard)
            .err()
            .unwrap();
        assert!(matches!(booted, SinkError::BootedSlot { .. }), "{booted}");

        let slot_b = dir.path().join("slot-b").display().to_string();
        fs::write(
            &guard.mountinfo,
            format!("40 22 7:0 / /mnt/b rw - ext4 {slot_b} rw\n"),
        )
        .unwrap();
        let mounted = SlotWriter::open(&dir.path().join("slot-b"), &guard)
            .err()
            .unwrap();
        assert!(
            matches!(&mounted, SinkError::Mounted { mount_point, .. } if mount_point == "/mnt/b"),
            "{mounted}"
        );
    }
}
