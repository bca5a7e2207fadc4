//! `rota-image flash`: writes a disk image to a block device (or a file) touching only the
//! blocks that hold data, like bmaptool but without a separate map file: the image's holes are
//! found with `SEEK_DATA`/`SEEK_HOLE`. Then fsync, and optionally read back and compare.
//!
//! The byte path is two stages on two threads: a reader that reads and hashes 4 MiB pieces of
//! the image's data ranges, and a writer that writes them, so reading, hashing and writing
//! overlap.

use crate::in_use::{self, DevNum};
use crate::progress::Progress;
use crate::size::human;
use crate::sparse::{self, COPY_BUFFER};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;
use thiserror::Error;

/// How many pieces may wait between the reader and the writer.
const PIPELINE_DEPTH: usize = 4;

/// What to flash where.
#[derive(Debug, Clone)]
pub struct FlashOptions {
    pub image: PathBuf,
    pub target: PathBuf,
    /// Read the written ranges back and compare their sha256 with the image's.
    pub verify: bool,
}

/// What kind of thing the target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A regular file (created or truncated): holes and zero blocks are skipped.
    File,
    /// A block device: every mapped block of the image is written, zero or not, because the
    /// device may hold old data there.
    BlockDevice,
}

/// The result, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct FlashReport {
    pub image: PathBuf,
    pub target: PathBuf,
    pub target_kind: TargetKind,
    /// Size of the image in bytes.
    pub image_size: u64,
    /// Bytes of the image that are mapped (not holes).
    pub mapped_bytes: u64,
    /// Bytes actually written to the target.
    pub written_bytes: u64,
    /// Whether the target was read back and matched.
    pub verified: bool,
    pub seconds: f64,
}

/// Why flashing did not happen or did not finish.
#[derive(Debug, Error)]
pub enum FlashError {
    #[error("refusing to write {target}: {reason}")]
    InUse { target: PathBuf, reason: String },
    #[error("refusing to write {target}: it is the image itself")]
    SameFile { target: PathBuf },
    #[error("refusing to write {target}: it is neither a regular file nor a block device")]
    NotATarget { target: PathBuf },
    #[error("{target} is {} but the image is {}", human(*target_size), human(*image_size))]
    TargetTooSmall {
        target: PathBuf,
        target_size: u64,
        image_size: u64,
    },
    #[error("not confirmed: nothing was written to {target}")]
    NotConfirmed { target: PathBuf },
    #[error("verification failed: {target} differs from the image in {} bytes at offset {offset}", human(*length))]
    Mismatch {
        target: PathBuf,
        offset: u64,
        length: u64,
    },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FlashError {
    let path = path.to_path_buf();
    move |source| FlashError::Io {
        action,
        path,
        source,
    }
}

/// A target that passed the safety checks.
#[derive(Debug)]
pub struct CheckedTarget {
    pub kind: TargetKind,
    /// Kernel name and size, for the confirmation question.
    pub description: String,
}

/// Checks that `target` may be written: a regular file (existing or not) that is not the image,
/// or a block device that nothing mounts, swaps on or stacks on. Runs before the image is even
/// opened, so a mistake here cannot write anything.
pub fn check_target(image: &Path, target: &Path) -> Result<CheckedTarget, FlashError> {
    let meta = match fs::metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(CheckedTarget {
                kind: TargetKind::File,
                description: format!("new file {}", target.display()),
            });
        }
        other => other.map_err(io_err("cannot stat", target))?,
    };
    if meta.file_type().is_block_device() {
        let dev = in_use::block_dev_of(target)
            .map_err(io_err("cannot stat", target))?
            .unwrap_or(DevNum { major: 0, minor: 0 });
        let reason =
            in_use::why_in_use(dev).map_err(io_err("cannot check the mounts for", target))?;
        if let Some(reason) = reason {
            return Err(FlashError::InUse {
                target: target.to_path_buf(),
                reason,
            });
        }
        let size = device_size(target)?;
        return Ok(CheckedTarget {
            kind: TargetKind::BlockDevice,
            description: format!(
                "block device {} ({}, {})",
                target.display(),
                in_use::kernel_name(dev),
                human(size)
            ),
        });
    }
    if !meta.file_type().is_file() {
        return Err(FlashError::NotATarget {
            target: target.to_path_buf(),
        });
    }
    if let Ok(image_meta) = fs::metadata(image) {
        if image_meta.dev() == meta.dev() && image_meta.ino() == meta.ino() {
            return Err(FlashError::SameFile {
                target: target.to_path_buf(),
            });
        }
    }
    Ok(CheckedTarget {
        kind: TargetKind::File,
        description: format!("file {} (will be replaced)", target.display()),
    })
}

fn device_size(path: &Path) -> Result<u64, FlashError> {
    let mut file = File::open(path).map_err(io_err("cannot open", path))?;
    file.seek(SeekFrom::End(0))
        .map_err(io_err("cannot find the size of", path))
}

/// One piece of the image on its way from the reader to the writer.
struct Piece {
    offset: u64,
    /// sha256 of `data`, computed when the target will be verified.
    digest: Option<[u8; 32]>,
    data: Vec<u8>,
}

/// Writes `options.image` to `options.target`, which [`check_target`] has approved as `kind`.
pub fn flash(
    options: &FlashOptions,
    kind: TargetKind,
    progress: &mut Progress,
) -> Result<FlashReport, FlashError> {
    let started = Instant::now();
    let (image_path, target_path) = (&options.image, &options.target);
    let image = File::open(image_path).map_err(io_err("cannot open the image", image_path))?;
    let image_size = image
        .metadata()
        .map_err(io_err("cannot stat", image_path))?
        .len();
    let ranges =
        sparse::data_ranges(&image).map_err(io_err("cannot map the data of", image_path))?;
    let mapped_bytes = sparse::total(&ranges);

    let target = match kind {
        TargetKind::File => {
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(target_path)
                .map_err(io_err("cannot create", target_path))?;
            file.set_len(image_size)
                .map_err(io_err("cannot size", target_path))?;
            file
        }
        TargetKind::BlockDevice => {
            let target_size = device_size(target_path)?;
            if target_size < image_size {
                return Err(FlashError::TargetTooSmall {
                    target: target_path.clone(),
                    target_size,
                    image_size,
                });
            }
            File::options()
                .read(true)
                .write(true)
                .open(target_path)
                .map_err(io_err("cannot open", target_path))?
        }
    };

    let pieces = pieces_of(&ranges);
    let mut piece_digests: Vec<[u8; 32]> = Vec::with_capacity(pieces.len());
    let mut written_bytes = 0u64;
    let (to_writer, from_reader) = mpsc::sync_channel::<io::Result<Piece>>(PIPELINE_DEPTH);
    let (to_reader, free_buffers) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| -> Result<(), FlashError> {
        let pieces = &pieces;
        let image = &image;
        let verify = options.verify;
        // The reader also hashes (when verifying), so hashing overlaps the writes.
        scope.spawn(move || {
            for piece in pieces {
                let mut data = free_buffers
                    .try_recv()
                    .unwrap_or_else(|_| vec![0u8; COPY_BUFFER]);
                data.resize((piece.end - piece.start) as usize, 0);
                let sent = image.read_exact_at(&mut data, piece.start).map(|()| Piece {
                    offset: piece.start,
                    digest: verify.then(|| Sha256::digest(&data).into()),
                    data,
                });
                let failed = sent.is_err();
                if to_writer.send(sent).is_err() || failed {
                    return;
                }
            }
        });
        for received in from_reader {
            let piece = received.map_err(io_err("cannot read the image", image_path))?;
            piece_digests.extend(piece.digest);
            match kind {
                // A fresh file reads as zeros: only non-zero blocks need writing.
                TargetKind::File => {
                    for (start, len) in sparse::nonzero_runs(&piece.data) {
                        target
                            .write_all_at(
                                &piece.data[start..start + len],
                                piece.offset + start as u64,
                            )
                            .map_err(io_err("cannot write", target_path))?;
                        written_bytes += len as u64;
                    }
                }
                TargetKind::BlockDevice => {
                    target
                        .write_all_at(&piece.data, piece.offset)
                        .map_err(io_err("cannot write", target_path))?;
                    written_bytes += piece.data.len() as u64;
                }
            }
            progress.inc(piece.data.len() as u64);
            let _ = to_reader.send(piece.data);
        }
        Ok(())
    })?;
    progress.finish();
    // The data must be on the medium before we report success (or verify what the medium
    // holds): the page cache would otherwise answer for it.
    target
        .sync_all()
        .map_err(io_err("cannot fsync", target_path))?;

    if options.verify {
        verify(&target, target_path, &pieces, &piece_digests)?;
    }
    Ok(FlashReport {
        image: image_path.clone(),
        target: target_path.clone(),
        target_kind: kind,
        image_size,
        mapped_bytes,
        written_bytes,
        verified: options.verify,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Splits data ranges into pieces of at most [`COPY_BUFFER`] bytes.
fn pieces_of(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut pieces = Vec::new();
    for range in ranges {
        let mut start = range.start;
        while start < range.end {
            let end = (start + COPY_BUFFER as u64).min(range.end);
            pieces.push(start..end);
            start = end;
        }
    }
    pieces
}

/// Reads every written piece back from the medium (dropping it from the page cache first) and
/// compares its sha256; pieces are checked on all cores.
fn verify(
    target: &File,
    path: &Path,
    pieces: &[Range<u64>],
    digests: &[[u8; 32]],
) -> Result<(), FlashError> {
    // fsync made the pages clean, so the kernel can drop them and the reads below come from
    // the device. Advisory: a file system that ignores it still gets a correct comparison.
    let _ = rustix::fs::fadvise(target, 0, None, rustix::fs::Advice::DontNeed);
    pieces.par_iter().zip(digests).try_for_each_init(
        || vec![0u8; COPY_BUFFER],
        |buf, (piece, want)| {
            let data = &mut buf[..(piece.end - piece.start) as usize];
            target
                .read_exact_at(data, piece.start)
                .map_err(io_err("cannot read back", path))?;
            if Sha256::digest(&*data).as_slice() != want {
                return Err(FlashError::Mismatch {
                    target: path.to_path_buf(),
                    offset: piece.start,
                    length: piece.end - piece.start,
                });
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_ranges_exactly() {
        let big = COPY_BUFFER as u64;
        let pieces = pieces_of(&[0..10, 100..100 + 2 * big + 1]);
        assert_eq!(
            pieces,
            vec![
                0..10,
                100..100 + big,
                100 + big..100 + 2 * big,
                100 + 2 * big..100 + 2 * big + 1
            ]
        );
    }

    #[test]
    fn sparse_file_round_trip_with_verify() {
        let dir = tempfile::tempdir().unwrap();
        let image_path = dir.path().join("disk.img");
        let image = File::create(&image_path).unwrap();
        image.set_len(64 << 20).unwrap();
        image.write_all_at(&vec![0xa5; 3 << 20], 10 << 20).unwrap();
        image.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        let target = dir.path().join("out.img");
        let options = FlashOptions {
            image: image_path.clone(),
            target: target.clone(),
            verify: true,
        };
        let checked = check_target(&image_path, &target).unwrap();
        let report = flash(&options, checked.kind, &mut Progress::hidden()).unwrap();
        assert!(report.verified);
        assert!(report.written_bytes < 4 << 20, "{report:?}");
        assert_eq!(fs::read(&image_path).unwrap(), fs::read(&target).unwrap());
    }

    #[test]
    fn image_itself_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        fs::write(&image, b"x").unwrap();
        assert!(matches!(
            check_target(&image, &image),
            Err(FlashError::SameFile { .. })
        ));
    }
}
