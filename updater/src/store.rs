//! The state file: postcard inside a versioned envelope, written so that a power cut at any
//! instruction leaves either the old or the new file, never a mix.
//!
//! Layout: `b"ROTAST"`, a little-endian `u16` format version, then the postcard body of that
//! version. Version 3 is [`crate::state::State`] as it is now; when its shape changes, the old
//! shape is frozen in a module (see [`v1`], [`v2`]), the version bumps, and [`decode`]
//! upgrades old bodies.
//!
//! - 1: the first release.
//! - 2: adds `deployment_id` (the fleet deployment an install belongs to) at the end.
//! - 3: adds each slot's `security_version` (so a rollback may switch to the other slot only
//!   when it is above the anti-rollback floor) and the deployment's `update_window` at the end.
//! - 4: adds the install's `permissions` at the end (a resume keeps `--allow-downgrade` and
//!   `--allow-denied`) and the `Installed` lifecycle state (appended, so older bodies decode).
//!
//! Writers hold [`StoreLock`]: one process at a time touches the state and the slots.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::failpoint;
use crate::state::State;

const MAGIC: &[u8; 6] = b"ROTAST";
/// The version [`encode`] writes.
pub const CURRENT_VERSION: u16 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {}: not a Rota state file (bad magic)", path.display())]
    BadMagic { path: PathBuf },
    #[error("state file {}: format version {version} is newer than this updater reads ({CURRENT_VERSION}); refusing to overwrite it", path.display())]
    TooNew { path: PathBuf, version: u16 },
    #[error("state file {}: version {version} body does not decode: {source}", path.display())]
    Decode {
        path: PathBuf,
        version: u16,
        #[source]
        source: postcard::Error,
    },
    #[error("another install is running ({holder}); it holds {}", path.display())]
    Busy { path: PathBuf, holder: LockHolder },
}

/// Who holds the lock, as far as its file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder(pub Option<u32>);

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("pid unknown"),
        }
    }
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Serialises `state` into the current envelope.
pub fn encode(state: &State) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&CURRENT_VERSION.to_le_bytes());
    // Serialising plain data into a Vec has no failure mode.
    let body = postcard::to_stdvec(state).expect("state serialises");
    bytes.extend_from_slice(&body);
    bytes
}

/// Parses an envelope of any version this updater knows. `path` only names the file in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<State, StoreError> {
    let header_len = MAGIC.len() + 2;
    if bytes.len() < header_len || &bytes[..MAGIC.len()] != MAGIC {
        return Err(StoreError::BadMagic {
            path: path.to_owned(),
        });
    }
    let version = u16::from_le_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]);
    let body = &bytes[header_len..];
    let decode_error = |source| StoreError::Decode {
        path: path.to_owned(),
        version,
        source,
    };
    match version {
        1 => postcard::from_bytes::<v1::State>(body)
            .map(|old| State::from(v2::State::from(old)))
            .map_err(decode_error),
        2 => postcard::from_bytes::<v2::State>(body)
            .map(State::from)
            .map_err(decode_error),
        3 => postcard::from_bytes::<v3::State>(body)
            .map(State::from)
            .map_err(decode_error),
        4 => postcard::from_bytes(body).map_err(decode_error),
        newer => Err(StoreError::TooNew {
            path: path.to_owned(),
            version: newer,
        }),
    }
}

/// Version 1 of the state file, frozen: postcard is not self-describing, so an old body decodes
/// only with the old shape. Only the top-level struct changed in version 2; the types inside
/// it are shared with version 2.
pub mod v1 {
    use serde::Deserialize;

    use super::v2::SlotContent;
    use crate::state::{DeniedBundle, Lifecycle};

    #[derive(Deserialize)]
    pub struct State {
        pub lifecycle: Lifecycle,
        pub slot_a: Option<SlotContent>,
        pub slot_b: Option<SlotContent>,
        pub denylist: Vec<DeniedBundle>,
        pub security_floor: u32,
    }

    impl From<State> for super::v2::State {
        fn from(old: State) -> Self {
            super::v2::State {
                lifecycle: old.lifecycle,
                slot_a: old.slot_a,
                slot_b: old.slot_b,
                denylist: old.denylist,
                security_floor: old.security_floor,
                deployment_id: None,
            }
        }
    }
}

/// Version 2 of the state file, frozen. Version 3 added `SlotContent::security_version` and
/// `State::update_window`; the lifecycle and the denylist are shared with version 3.
pub mod v2 {
    use serde::Deserialize;

    use crate::state::{DeniedBundle, Lifecycle, Sha256Digest};

    #[derive(Deserialize)]
    pub struct SlotContent {
        pub version: String,
        pub bundle_digest: Sha256Digest,
        pub installed_at: u64,
    }

    #[derive(Deserialize)]
    pub struct State {
        pub lifecycle: Lifecycle,
        pub slot_a: Option<SlotContent>,
        pub slot_b: Option<SlotContent>,
        pub denylist: Vec<DeniedBundle>,
        pub security_floor: u32,
        pub deployment_id: Option<String>,
    }

    impl From<SlotContent> for crate::state::SlotContent {
        fn from(old: SlotContent) -> Self {
            crate::state::SlotContent {
                version: old.version,
                bundle_digest: old.bundle_digest,
                installed_at: old.installed_at,
                // Not recorded then: such a slot is reinstalled, never switched to.
                security_version: None,
            }
        }
    }

    impl From<State> for crate::state::State {
        fn from(old: State) -> Self {
            crate::state::State {
                lifecycle: old.lifecycle,
                slot_a: old.slot_a.map(Into::into),
                slot_b: old.slot_b.map(Into::into),
                denylist: old.denylist,
                security_floor: old.security_floor,
                deployment_id: old.deployment_id,
                update_window: None,
                permissions: Default::default(),
            }
        }
    }
}

/// Version 3 of the state file, frozen. Version 4 appended `State::permissions`; the lifecycle
/// gained a variant at its end, which leaves every version 3 body decodable with today's type.
pub mod v3 {
    use serde::Deserialize;

    use crate::state::{DeniedBundle, InstallPermissions, Lifecycle, SlotContent};

    #[derive(Deserialize)]
    pub struct State {
        pub lifecycle: Lifecycle,
        pub slot_a: Option<SlotContent>,
        pub slot_b: Option<SlotContent>,
        pub denylist: Vec<DeniedBundle>,
        pub security_floor: u32,
        pub deployment_id: Option<String>,
        pub update_window: Option<String>,
    }

    impl From<State> for crate::state::State {
        fn from(old: State) -> Self {
            crate::state::State {
                lifecycle: old.lifecycle,
                slot_a: old.slot_a,
                slot_b: old.slot_b,
                denylist: old.denylist,
                security_floor: old.security_floor,
                deployment_id: old.deployment_id,
                update_window: old.update_window,
                // An install interrupted under version 3 resumes with the defaults, as then.
                permissions: InstallPermissions::default(),
            }
        }
    }
}

/// Reads the state file; a missing file is a fresh robot: the default state.
pub fn load(path: &Path) -> Result<State, StoreError> {
    match fs::read(path) {
        Ok(bytes) => decode(&bytes, path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(State::default()),
        Err(error) => Err(io_error("read", path)(error)),
    }
}

/// Replaces the state file atomically: temp file in the same directory, fsync, rename over the
/// old file, fsync the directory (without it the rename itself may be lost on power cut).
pub fn save(path: &Path, state: &State) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let mut temp_name = path.file_name().unwrap_or_default().to_owned();
    temp_name.push(".tmp");
    let temp = dir.join(temp_name);

    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(io_error("create", &temp))?;
    file.write_all(&encode(state))
        .map_err(io_error("write", &temp))?;
    failpoint::hit("after-write-temp");
    file.sync_all().map_err(io_error("fsync", &temp))?;
    drop(file);
    failpoint::hit("after-fsync-temp");
    fs::rename(&temp, path).map_err(io_error("rename into", path))?;
    failpoint::hit("after-rename");
    File::open(dir)
        .and_then(|dir_handle| dir_handle.sync_all())
        .map_err(io_error("fsync directory", dir))?;
    Ok(())
}

/// The state file at one path. Anyone may read it (a save replaces it by rename); changing it,
/// or the slots and boot env it describes, takes [`Store::lock`].
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(path: impl Into<PathBuf>) -> Store {
        Store { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<State, StoreError> {
        load(&self.path)
    }

    /// `state.lock` beside the state file, on the data partition.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_owned();
        name.push(".lock");
        self.path.with_file_name(name)
    }

    /// The one writer: an exclusive `flock` held until the guard drops (or the process dies,
    /// power cut included: the kernel releases it, nothing stale is left to clean up).
    /// A second process gets [`StoreError::Busy`] at once, naming the holder's pid.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.lock_path();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error("open", &path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = io::Read::read_to_string(&mut file, &mut text);
                let holder = LockHolder(text.trim().parse().ok());
                return Err(StoreError::Busy { path, holder });
            }
            Err(errno) => return Err(io_error("lock", &path)(errno.into())),
        }
        // For the Busy message only: the lock itself is the flock, not this number.
        file.set_len(0)
            .and_then(|()| io::Seek::rewind(&mut file))
            .and_then(|_| write!(file, "{}", std::process::id()))
            .map_err(io_error("write", &path))?;
        Ok(StoreLock {
            store: self.clone(),
            _file: file,
        })
    }
}

/// Proof that this process is the one writer of the state (see [`Store::lock`]).
#[derive(Debug)]
pub struct StoreLock {
    store: Store,
    _file: File,
}

impl StoreLock {
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn load(&self) -> Result<State, StoreError> {
        self.store.load()
    }

    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        save(&self.store.path, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{
        BundleInfo, InstallPermissions, InstallProgress, Lifecycle, Sha256Digest, SlotContent,
    };
    use rota_bootctl::Slot;

    fn sample() -> State {
        State {
            lifecycle: Lifecycle::Installing {
                slot: Slot::B,
                bundle: BundleInfo {
                    digest: Sha256Digest([7; 32]),
                    version: "1.2.3".into(),
                    compatible: "board".into(),
                    security_version: 2,
                },
                source: "https://example.invalid/b.rota".into(),
                progress: InstallProgress {
                    image: 0,
                    next_chunk: 3,
                    bytes_done: 4096,
                },
            },
            slot_a: Some(SlotContent {
                version: "1.0.0".into(),
                bundle_digest: Sha256Digest([1; 32]),
                installed_at: 1_700_000_000,
                security_version: None,
            }),
            slot_b: None,
            denylist: Vec::new(),
            security_floor: 0,
            deployment_id: None,
            update_window: None,
            permissions: Default::default(),
        }
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state");
        assert_eq!(load(&path).unwrap(), State::default());
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), sample());
        assert!(!dir.path().join("sub/state.tmp").exists());
    }

    /// The body of a version 1 file holding [`sample`].
    fn version_1_body() -> Vec<u8> {
        vec![
            1, 1, // Installing, slot B
            7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
            7, 7, 7, // digest
            5, b'1', b'.', b'2', b'.', b'3', // version
            5, b'b', b'o', b'a', b'r', b'd', // compatible
            2,    // security version
            30, b'h', b't', b't', b'p', b's', b':', b'/', b'/', b'e', b'x', b'a', b'm', b'p', b'l',
            b'e', b'.', b'i', b'n', b'v', b'a', b'l', b'i', b'd', b'/', b'b', b'.', b'r', b'o',
            b't', b'a', // source
            0, 3, 0x80, 0x20, // progress: image 0, chunk 3, 4096 bytes
            1,    // slot A present
            5, b'1', b'.', b'0', b'.', b'0', // slot A version
            1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
            1, 1, 1, // slot A digest
            0x80, 0xe2, 0xcf, 0xaa, 0x06, // installed_at
            0,    // slot B absent
            0,    // empty denylist
            0,    // security floor
        ]
    }

    fn envelope(version: u16, body: &[u8]) -> Vec<u8> {
        let mut bytes = b"ROTAST".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    /// Files written by every earlier release must stay readable by every later one: if one
    /// of these tests breaks, freeze the old types in a `vN` module and upgrade instead of
    /// editing them.
    #[test]
    fn reads_version_1_files_byte_for_byte() {
        let golden = envelope(1, &version_1_body());
        let expected = sample();
        match decode(&golden, Path::new("golden")) {
            Ok(state) => assert_eq!(state, expected),
            Err(error) => panic!("{error}\nencoded now: {:?}", encode(&expected)),
        }
    }

    /// Version 2 appended the deployment id to the version 1 body.
    #[test]
    fn reads_version_2_files_byte_for_byte() {
        let mut body = version_1_body();
        body.extend_from_slice(&[1, 5, b'd', b'e', b'p', b'_', b'7']);
        let mut expected = sample();
        expected.deployment_id = Some("dep_7".into());
        assert_eq!(
            decode(&envelope(2, &body), Path::new("v2")).unwrap(),
            expected
        );
    }

    /// Version 3 records each slot's security version and the deployment's update window.
    #[test]
    fn reads_version_3_files_byte_for_byte() {
        let mut state = sample();
        state.slot_a.as_mut().unwrap().security_version = Some(4);
        state.deployment_id = Some("dep_7".into());
        state.update_window = Some("02:00-04:00".into());
        let encoded = encode(&state);
        // A version 4 body is a version 3 body with the permissions appended.
        let body = &encoded[8..encoded.len() - 2];
        assert_eq!(
            &body[body.len() - 13..],
            &[1, 11, b'0', b'2', b':', b'0', b'0', b'-', b'0', b'4', b':', b'0', b'0']
        );
        assert_eq!(decode(&envelope(3, body), Path::new("v3")).unwrap(), state);
    }

    /// Version 4 records what the install was allowed; `Installed` is the last variant.
    #[test]
    fn version_4_records_the_install_permissions() {
        let mut state = sample();
        state.permissions = InstallPermissions {
            allow_downgrade: true,
            allow_denied: false,
        };
        let encoded = encode(&state);
        assert_eq!(&encoded[6..8], &[4, 0]);
        assert_eq!(&encoded[encoded.len() - 2..], &[1, 0]);
        assert_eq!(decode(&encoded, Path::new("v4")).unwrap(), state);
        state.lifecycle = Lifecycle::Installed {
            slot: Slot::A,
            bundle: BundleInfo {
                digest: Sha256Digest([7; 32]),
                version: "1".into(),
                compatible: "b".into(),
                security_version: 0,
            },
        };
        let encoded = encode(&state);
        assert_eq!(encoded[8], 7, "Installed is variant 7, after RolledBack");
        assert_eq!(decode(&encoded, Path::new("v4")).unwrap(), state);
    }

    #[test]
    fn a_second_writer_is_told_who_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("rota/state"));
        let held = store.lock().unwrap();
        match store.lock() {
            Err(StoreError::Busy { holder, .. }) => {
                assert_eq!(holder, LockHolder(Some(std::process::id())))
            }
            other => panic!("{other:?}"),
        }
        let message = store.lock().unwrap_err().to_string();
        assert!(
            message.contains(&format!(
                "another install is running (pid {})",
                std::process::id()
            )),
            "{message}"
        );
        drop(held);
        store.lock().expect("free again once the holder is gone");
    }

    #[test]
    fn refuses_garbage_and_newer_versions_with_the_path() {
        let path = Path::new("/data/rota/state");
        let bad = decode(b"hello world", path).unwrap_err();
        assert!(bad.to_string().contains("/data/rota/state"), "{bad}");
        let mut newer = encode(&sample());
        newer[6] = 9;
        assert!(matches!(
            decode(&newer, path),
            Err(StoreError::TooNew { version: 9, .. })
        ));
        let truncated = &encode(&sample())[..20];
        assert!(matches!(
            decode(truncated, path),
            Err(StoreError::Decode { .. })
        ));
    }
}
