//! Sparse files: finding where a file holds data (`SEEK_DATA`/`SEEK_HOLE`) and copying only
//! those bytes, so a 4 GiB disk image with 400 MiB of content costs 400 MiB of I/O.

use rustix::fs::SeekFrom;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// Block size used to look for all-zero blocks inside data ranges.
pub const ZERO_BLOCK: usize = 4096;

/// Buffer size for copies: large enough to amortise syscalls, small enough to stay in cache.
pub const COPY_BUFFER: usize = 4 << 20;

/// The byte ranges of `file` that hold data, in order, as the file system reports them. A file
/// system without `SEEK_DATA` support is reported as one range covering the whole file.
pub fn data_ranges(file: &File) -> io::Result<Vec<Range<u64>>> {
    let len = file.metadata()?.len();
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    while offset < len {
        let start = match rustix::fs::seek(file, SeekFrom::Data(offset)) {
            Ok(start) => start,
            // ENXIO: no data after `offset`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) if offset == 0 => {
                ranges.push(0..len);
                return Ok(ranges);
            }
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(end) => end.min(len),
            Err(e) => return Err(e.into()),
        };
        if end > start {
            ranges.push(start..end);
        }
        offset = end.max(start + 1);
    }
    Ok(ranges)
}

/// The total length of `ranges`.
pub fn total(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

/// Splits `buf` into runs of blocks that are not all zero: `(offset in buf, length)`.
pub fn nonzero_runs(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, block) in buf.chunks(ZERO_BLOCK).enumerate() {
        // An OR over the whole block vectorises; an early-exit scan does not.
        if block.iter().fold(0u8, |acc, &b| acc | b) == 0 {
            continue;
        }
        let start = i * ZERO_BLOCK;
        match runs.last_mut() {
            Some((run_start, run_len)) if *run_start + *run_len == start => *run_len += block.len(),
            _ => runs.push((start, block.len())),
        }
    }
    runs
}

/// Copies the mapped ranges of `src` into `dst` at `dst_offset`, leaving holes as holes:
/// `dst` must already read as zeros there (a fresh file extended with `set_len`). Zero blocks
/// that `src` maps are copied too: a file system may rely on them being zero, and an image
/// flashed onto a used device only gets the blocks it maps. Returns the bytes written.
pub fn copy_sparse(src: &File, dst: &File, dst_offset: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut written = 0;
    for range in data_ranges(src)? {
        let mut offset = range.start;
        while offset < range.end {
            let n = (range.end - offset).min(COPY_BUFFER as u64) as usize;
            src.read_exact_at(&mut buf[..n], offset)?;
            dst.write_all_at(&buf[..n], dst_offset + offset)?;
            written += n as u64;
            offset += n as u64;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_holes() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(&[1u8; 4096], 8 << 20).unwrap();
        file.write_all_at(&[2u8; 4096], 32 << 20).unwrap();
        file.sync_all().unwrap();
        let ranges = data_ranges(&file).unwrap();
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert!(ranges[0].contains(&(8 << 20)) && ranges[1].contains(&(32 << 20)));
        assert!(total(&ranges) < 4 << 20);
    }

    #[test]
    fn runs_skip_zero_blocks() {
        let mut buf = vec![0u8; 5 * ZERO_BLOCK];
        buf[ZERO_BLOCK] = 1;
        buf[2 * ZERO_BLOCK + 7] = 1;
        buf[4 * ZERO_BLOCK + 100] = 1;
        assert_eq!(
            nonzero_runs(&buf),
            vec![(ZERO_BLOCK, 2 * ZERO_BLOCK), (4 * ZERO_BLOCK, ZERO_BLOCK)]
        );
    }

    #[test]
    fn sparse_copy_lands_at_offset() {
        let dir = tempfile::tempdir().unwrap();
        let src = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("src"))
            .unwrap();
        src.set_len(1 << 20).unwrap();
        src.write_all_at(b"hello", 12345).unwrap();
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("dst"))
            .unwrap();
        dst.set_len(4 << 20).unwrap();
        let written = copy_sparse(&src, &dst, 1 << 20).unwrap();
        assert!(
            (5..1 << 20).contains(&written),
            "only the mapped block is copied: {written}"
        );
        let mut got = [0u8; 5];
        dst.read_exact_at(&mut got, (1 << 20) + 12345).unwrap();
        assert_eq!(&got, b"hello");
    }
}
