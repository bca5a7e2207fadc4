//! The power-cut recorder: a FUSE filesystem of fixed-size files held in memory. Each file is
//! the backing file of a loop device (one disk each: slots, boot, data). Every write that
//! reaches a file and every fsync of it is appended, in arrival order, to one global log.
//!
//! Files are opened with FUSE's `direct_io`, so the loop driver's writes are not cached on the
//! way: what arrives here is what the block layer sent to the "disk". The loop driver turns a
//! block-layer flush (and FUA, which it does not advertise, so the block layer emulates it with
//! a flush) into an fsync of its backing file, which arrives here as FSYNC: the disk's cache
//! flush. A discard or write-zeroes arrives as fallocate and is logged as a write of zeros.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, WriteFlags,
};

/// One thing the "disk" saw.
#[derive(Clone, Debug)]
pub enum Event {
    Write {
        dev: usize,
        offset: u64,
        data: Arc<[u8]>,
    },
    /// A cache flush of `dev`: every earlier write to it is durable.
    Flush { dev: usize },
}

struct Inner {
    names: Vec<String>,
    contents: Vec<Vec<u8>>,
    log: Vec<Event>,
}

/// The in-memory disks and their log; cloned into the FUSE session.
#[derive(Clone)]
pub struct Disks(Arc<Mutex<Inner>>);

const TTL: Duration = Duration::from_secs(3600);

impl Disks {
    /// `disks`: (file name, initial contents); the contents' length is the file's fixed size.
    pub fn new(disks: Vec<(String, Vec<u8>)>) -> Disks {
        let (names, contents) = disks.into_iter().unzip();
        Disks(Arc::new(Mutex::new(Inner {
            names,
            contents,
            log: Vec::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Mounts the disks at `mountpoint` (served by a background thread until dropped).
    pub fn mount(&self, mountpoint: &std::path::Path) -> fuser::BackgroundSession {
        let mut config = Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("rota-power-cut".into()),
            fuser::MountOption::Dev,
        ];
        fuser::spawn_mount(self.clone(), mountpoint, &config).unwrap_or_else(|error| {
            panic!(
                "cannot mount the FUSE recorder at {} (needs root and /dev/fuse): {error}",
                mountpoint.display()
            )
        })
    }

    pub fn log_len(&self) -> usize {
        self.lock().log.len()
    }

    pub fn log(&self) -> Vec<Event> {
        self.lock().log.clone()
    }

    pub fn contents(&self) -> Vec<Vec<u8>> {
        self.lock().contents.clone()
    }

    fn attr(inner: &Inner, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm) = if ino == 1 {
            (FileType::Directory, 0, 0o755)
        } else {
            let index = usize::try_from(ino - 2).ok()?;
            (
                FileType::RegularFile,
                inner.contents.get(index)?.len() as u64,
                0o600,
            )
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: if ino == 1 { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn write_at(inner: &mut Inner, dev: usize, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let file = &mut inner.contents[dev];
        let start = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let end = start.checked_add(data.len()).ok_or(Errno::EINVAL)?;
        if end > file.len() {
            // Fixed-size disks: nothing is written past the end.
            return Err(Errno::ENOSPC);
        }
        file[start..end].copy_from_slice(data);
        inner.log.push(Event::Write {
            dev,
            offset,
            data: data.into(),
        });
        Ok(())
    }
}

fn dev_of(inner: &Inner, ino: INodeNo) -> Option<usize> {
    let index = usize::try_from(ino.0.checked_sub(2)?).ok()?;
    (index < inner.contents.len()).then_some(index)
}

impl Filesystem for Disks {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let inner = self.lock();
        let found = (parent == INodeNo::ROOT)
            .then(|| {
                inner
                    .names
                    .iter()
                    .position(|known| OsStr::new(known) == name)
            })
            .flatten();
        match found.and_then(|index| Disks::attr(&inner, index as u64 + 2)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match Disks::attr(&self.lock(), ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let inner = self.lock();
        match Disks::attr(&inner, ino.0) {
            // A disk does not change size.
            Some(attr) if size.is_none_or(|size| size == attr.size) => reply.attr(&TTL, &attr),
            Some(_) => reply.error(Errno::EPERM),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if dev_of(&self.lock(), ino).is_some() {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let inner = self.lock();
        let Some(dev) = dev_of(&inner, ino) else {
            return reply.error(Errno::ENOENT);
        };
        let file = &inner.contents[dev];
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(file.len());
        let end = start.saturating_add(size as usize).min(file.len());
        reply.data(&file[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut inner = self.lock();
        let Some(dev) = dev_of(&inner, ino) else {
            return reply.error(Errno::ENOENT);
        };
        match Disks::write_at(&mut inner, dev, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(): not a durability point.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut inner = self.lock();
        match dev_of(&inner, ino) {
            Some(dev) => {
                inner.log.push(Event::Flush { dev });
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        const PUNCH_HOLE: i32 = 0x02;
        const ZERO_RANGE: i32 = 0x10;
        let mut inner = self.lock();
        let Some(dev) = dev_of(&inner, ino) else {
            return reply.error(Errno::ENOENT);
        };
        if mode & (PUNCH_HOLE | ZERO_RANGE) == 0 {
            // Plain preallocation of a fixed-size file: nothing to do.
            return reply.ok();
        }
        let zeros = vec![0; length as usize];
        match Disks::write_at(&mut inner, dev, offset, &zeros) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let inner = self.lock();
        let mut entries = vec![
            (INodeNo::ROOT, FileType::Directory, ".".to_owned()),
            (INodeNo::ROOT, FileType::Directory, "..".to_owned()),
        ];
        for (index, name) in inner.names.iter().enumerate() {
            entries.push((
                INodeNo(index as u64 + 2),
                FileType::RegularFile,
                name.clone(),
            ));
        }
        for (index, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
