//! Turns an app image (a tar whose every chunk was checked against the signed manifest) into an
//! immutable release tree. Each regular file is stored once in the content-addressed object
//! store, keyed by its SHA-256 and permissions, and hard-linked into the release, so kept
//! releases share every file they have in common.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use rota_bundle::Sha256Digest;
use sha2::{Digest, Sha256};

use super::AppError;

/// What extracting one release did to the store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtractStats {
    pub files: u64,
    pub file_bytes: u64,
    /// Files that were new to the object store (and their bytes: the disk this release cost).
    pub new_objects: u64,
    pub new_object_bytes: u64,
}

/// The content-addressed files of every app's releases.
pub struct ObjectStore {
    dir: PathBuf,
    temp_dir: PathBuf,
    next_temp: u64,
    /// One copy buffer for every file of an extract.
    buffer: Vec<u8>,
}

impl ObjectStore {
    pub fn open(dir: PathBuf) -> Result<ObjectStore, AppError> {
        let temp_dir = dir.join(".tmp");
        // Leftovers of an interrupted extract: never linked, so never part of a release.
        match fs::remove_dir_all(&temp_dir) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(AppError::io("clear", &temp_dir, error))
            }
            _ => {}
        }
        fs::create_dir_all(&temp_dir).map_err(|error| AppError::io("create", &temp_dir, error))?;
        Ok(ObjectStore {
            dir,
            temp_dir,
            next_temp: 0,
            buffer: vec![0u8; 64 << 10],
        })
    }

    fn object_path(&self, digest: &Sha256Digest, mode: u32) -> PathBuf {
        self.dir.join(format!("{digest}-{:04o}", mode & 0o7777))
    }

    /// Stores `data`'s bytes (durably) unless the store has them with this mode already, and
    /// returns the object's path and whether it was new.
    fn store(&mut self, data: &mut dyn Read, mode: u32) -> Result<(PathBuf, u64, bool), AppError> {
        self.next_temp += 1;
        let temp = self.temp_dir.join(self.next_temp.to_string());
        let io_error = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |error| AppError::io(action, &path, error)
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io_error("create", &temp))?;
        let mut hasher = Sha256::new();
        let mut length = 0u64;
        loop {
            let got = match data.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(got) => got,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(AppError::Image(error)),
            };
            hasher.update(&self.buffer[..got]);
            file.write_all(&self.buffer[..got])
                .map_err(io_error("write", &temp))?;
            length += got as u64;
        }
        let object = self.object_path(&Sha256Digest::from_hasher(hasher), mode);
        // The name is durable only after the bytes were (fsync before rename); a length that
        // differs all the same (a store copied or damaged outside Rota) is replaced.
        if fs::metadata(&object).is_ok_and(|meta| meta.len() == length) {
            drop(file);
            fs::remove_file(&temp).map_err(io_error("remove", &temp))?;
            return Ok((object, length, false));
        }
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io_error("chmod", &temp))?;
        file.sync_all().map_err(io_error("fsync", &temp))?;
        drop(file);
        fs::rename(&temp, &object).map_err(io_error("rename", &temp))?;
        Ok((object, length, true))
    }

    /// Makes the new objects' names durable (before a release that links them is).
    pub fn sync(&self) -> Result<(), AppError> {
        sync_dir(&self.dir)
    }

    /// Removes the objects no release links any more (link count 1: only the store's name).
    pub fn collect_garbage(&self) -> Result<(u64, u64), AppError> {
        let mut removed = (0u64, 0u64);
        let entries = fs::read_dir(&self.dir).map_err(|e| AppError::io("list", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| AppError::io("list", &self.dir, e))?;
            let meta = entry
                .metadata()
                .map_err(|e| AppError::io("stat", &entry.path(), e))?;
            if meta.is_file() && std::os::unix::fs::MetadataExt::nlink(&meta) == 1 {
                fs::remove_file(entry.path())
                    .map_err(|e| AppError::io("remove", &entry.path(), e))?;
                removed.0 += 1;
                removed.1 += meta.len();
            }
        }
        sync_dir(&self.dir)?;
        Ok(removed)
    }
}

/// Extracts `archive` into `partial` (which must not exist), every file through `objects`.
/// Only regular files, directories and symlinks are accepted, at relative paths below
/// `partial` whose parents are directories of this archive, so no entry can write through a
/// symlink or outside the release. Everything is durable when this returns.
pub fn extract(
    archive: impl Read,
    partial: &Path,
    objects: &mut ObjectStore,
) -> Result<ExtractStats, AppError> {
    fs::create_dir(partial).map_err(|e| AppError::io("create", partial, e))?;
    let mut stats = ExtractStats::default();
    let mut archive = tar::Archive::new(archive);
    // Directories are made writable while they fill and get their own mode at the end.
    let mut dirs: Vec<(PathBuf, u32)> = vec![(partial.to_owned(), 0o755)];
    let mut known_dirs: HashSet<PathBuf> = HashSet::from([PathBuf::new()]);
    let entries = archive.entries().map_err(AppError::Image)?;
    for entry in entries {
        let mut entry = entry.map_err(AppError::Image)?;
        let relative = safe_relative_path(&entry.path().map_err(AppError::Image)?)?;
        let parent = relative.parent().unwrap_or(Path::new("")).to_owned();
        if !known_dirs.contains(&parent) {
            return Err(AppError::BadTree(format!(
                "{}: its directory {} is not a directory of the release",
                relative.display(),
                parent.display()
            )));
        }
        let target = partial.join(&relative);
        let mode = entry.header().mode().map_err(AppError::Image)?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir(&target).map_err(|e| AppError::io("create", &target, e))?;
                dirs.push((target, mode & 0o7777));
                known_dirs.insert(relative);
            }
            tar::EntryType::Regular => {
                let (object, length, new) = objects.store(&mut entry, mode)?;
                fs::hard_link(&object, &target).map_err(|e| AppError::io("link", &target, e))?;
                stats.files += 1;
                stats.file_bytes += length;
                if new {
                    stats.new_objects += 1;
                    stats.new_object_bytes += length;
                }
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name().map_err(AppError::Image)?.ok_or_else(|| {
                    AppError::BadTree(format!(
                        "{}: a symlink without a target",
                        relative.display()
                    ))
                })?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| AppError::io("symlink", &target, e))?;
            }
            other => {
                return Err(AppError::BadTree(format!(
                    "{}: entry type {other:?}; an app holds only files, directories and symlinks",
                    relative.display()
                )))
            }
        }
    }
    // The rest of the image (tar padding) still passes through the chunk checks.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(AppError::Image)?;
    objects.sync()?;
    for (dir, mode) in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
            .map_err(|e| AppError::io("chmod", dir, e))?;
        sync_dir(dir)?;
    }
    Ok(stats)
}

fn safe_relative_path(path: &Path) -> Result<PathBuf, AppError> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            _ => {
                return Err(AppError::BadTree(format!(
                    "{}: an entry must stay inside the release",
                    path.display()
                )))
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(AppError::BadTree("an entry with an empty path".into()));
    }
    Ok(relative)
}

pub fn sync_dir(dir: &Path) -> Result<(), AppError> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(|e| AppError::io("fsync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o755);
            header.set_size(data.len() as u64);
            match link {
                Some(link) => builder.append_link(&mut header, path, link).unwrap(),
                None => builder.append_data(&mut header, path, *data).unwrap(),
            }
        }
        builder.into_inner().unwrap()
    }

    fn extract_into(dir: &Path, archive: &[u8]) -> Result<ExtractStats, AppError> {
        let mut objects = ObjectStore::open(dir.join("objects")).unwrap();
        extract(archive, &dir.join("release"), &mut objects)
    }

    #[test]
    fn an_entry_cannot_write_through_a_symlink_of_the_same_archive() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let archive = tar_of(&[
            (
                "link",
                tar::EntryType::Symlink,
                b"",
                Some(outside.to_str().unwrap()),
            ),
            ("link/evil", tar::EntryType::Regular, b"x", None),
        ]);
        let error = extract_into(dir.path(), &archive).unwrap_err();
        assert!(matches!(error, AppError::BadTree(_)), "{error}");
        assert!(!outside.join("evil").exists());
    }

    #[test]
    fn hard_links_and_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tar_of(&[("fifo", tar::EntryType::Fifo, b"", None)]);
        assert!(matches!(
            extract_into(dir.path(), &archive),
            Err(AppError::BadTree(_))
        ));
    }

    #[test]
    fn a_stored_object_of_another_length_is_replaced_not_linked() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tar_of(&[("a", tar::EntryType::Regular, b"content", None)]);
        extract_into(dir.path(), &archive).unwrap();
        let object = fs::read_dir(dir.path().join("objects"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.is_file())
            .unwrap();
        fs::write(&object, b"").unwrap();
        let mut objects = ObjectStore::open(dir.path().join("objects")).unwrap();
        let stats = extract(&archive[..], &dir.path().join("second"), &mut objects).unwrap();
        assert_eq!(stats.new_objects, 1);
        assert_eq!(fs::read(dir.path().join("second/a")).unwrap(), b"content");
    }

    #[test]
    fn equal_files_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tar_of(&[
            ("a", tar::EntryType::Regular, b"same", None),
            ("b", tar::EntryType::Regular, b"same", None),
            ("c", tar::EntryType::Regular, b"other", None),
        ]);
        let stats = extract_into(dir.path(), &archive).unwrap();
        assert_eq!((stats.files, stats.new_objects), (3, 2));
        assert_eq!(fs::read(dir.path().join("release/b")).unwrap(), b"same");
    }
}
