//! App releases beside the OS: each a signed tree of files installed on the data partition,
//! switched to atomically, its units restarted and its checks run, switched back on failure;
//! rollback to any kept release needs no download and no reboot.
//!
//! Layout under `[apps] dir` (default `/data/rota/apps`):
//!
//! ```text
//! objects/HASH-MODE        every release file once (SHA-256, permissions), hard-linked below
//! NAME/meta/ID.json        what release ID is: version, commit, digest, units, checks
//! NAME/releases/ID/        a verified release tree, never changed; ID = VERSION-DIGEST12
//! NAME/releases/.ID.partial/   a release being extracted (removed when found)
//! NAME/current -> releases/ID  the current release, replaced by rename
//! NAME/state.json          the previous release, an activation not decided yet, the last outcome
//! ```
//!
//! Write order, so a power cut after any prefix leaves exactly one complete release current:
//! objects fsynced → meta written → tree fsynced and renamed into `releases/` → `state.json`
//! records the pending activation → `current` replaced and its directory fsynced → units
//! restarted and checks run → `state.json` records the outcome (or `current` goes back first).
//! A pending activation found later (a crash or a power cut during the checks) never passed its
//! checks: [`recover`] switches back.

mod activate;
mod assignment;
mod install;
mod release;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rota_bundle::AppSpec;
use serde::{Deserialize, Serialize};

pub use activate::{activate, recover, rollback, ActivationOutcome};
pub use assignment::{AppAssignment, Handled};
pub use install::{install_app, AppInstallOptions, AppInstallReport};
pub use release::{ExtractStats, ObjectStore};

use crate::atomic_file;
use crate::install::source::SourceError;

/// Releases kept per app unless `[apps] keep` says otherwise.
pub const DEFAULT_KEEP: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The bundle's header, manifest or signature: refused or cut short before the image.
    #[error("the app bundle cannot be opened")]
    Bundle(#[source] rota_bundle::Error),
    /// The image failed a check or ended early while it was extracted.
    #[error("the app image cannot be read")]
    Image(#[source] io::Error),
    #[error("the app image is not a valid release tree: {0}")]
    BadTree(String),
    #[error("{0}")]
    Refused(String),
    #[error("no app named {0:?} is installed")]
    UnknownApp(String),
    #[error("app {app:?} has no kept release {wanted:?} (kept: {kept})")]
    UnknownRelease {
        app: String,
        wanted: String,
        kept: String,
    },
    #[error("{path} is damaged")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl AppError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> AppError {
        AppError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// The transfer failed (the network, or the input ended or broke), not the bundle or the
    /// robot: trying again later may help. From a file, the same errors are the file's fault.
    pub fn is_transport(&self) -> bool {
        match self {
            AppError::Source(source) => matches!(
                source,
                SourceError::GaveUp { .. }
                    | SourceError::Status { .. }
                    | SourceError::WrongRange { .. }
            ),
            AppError::Bundle(_) | AppError::Image(_) => matches!(
                self.bundle_error(),
                Some(rota_bundle::Error::Read { .. } | rota_bundle::Error::Truncated { .. })
            ),
            _ => false,
        }
    }

    /// The bundle error inside, if the image failed because of what the bundle holds or how it
    /// arrived (not because of the robot's disk).
    pub fn bundle_error(&self) -> Option<&rota_bundle::Error> {
        let error = match self {
            AppError::Bundle(error) => return Some(error),
            AppError::Image(error) => error,
            _ => return None,
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(error) = cause {
            if let Some(found) = error.downcast_ref::<rota_bundle::Error>() {
                return Some(found);
            }
            cause = match error.downcast_ref::<io::Error>() {
                Some(io_error) => io_error.get_ref().map(|inner| inner as _),
                None => error.source(),
            };
        }
        None
    }
}

/// Where apps live and how many releases each keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct AppsConfig {
    pub dir: PathBuf,
    pub keep: usize,
}

/// What a kept release is; written before its tree is renamed into place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseMeta {
    pub id: String,
    pub app: String,
    pub version: String,
    pub git_commit: Option<String>,
    pub git_branch: Option<String>,
    pub bundle_digest: String,
    pub security_version: u32,
    /// Unix milliseconds: the order pruning goes by (oldest install first).
    pub installed_at_ms: u64,
    pub spec: AppSpec,
    pub stats: ExtractStats,
}

/// `NAME/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// The release current before the last successful activation: rollback's default, never
    /// pruned.
    pub previous: Option<String>,
    /// An activation whose checks have not decided yet.
    pub pending: Option<PendingActivation>,
    pub last: Option<LastOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingActivation {
    /// `None`: the app had no current release.
    pub from: Option<String>,
    pub to: String,
    pub started_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum LastOutcome {
    Activated {
        release: String,
        at: u64,
    },
    /// A check failed (or a unit did not restart): the release before is current again.
    RolledBack {
        release: String,
        back_to: Option<String>,
        check: String,
        output: String,
        at: u64,
    },
    /// The updater stopped (crash, power cut) before the checks decided.
    Interrupted {
        release: String,
        back_to: Option<String>,
        at: u64,
    },
}

/// One app's directory.
#[derive(Debug, Clone)]
pub struct AppDir {
    pub name: String,
    pub root: PathBuf,
}

impl AppDir {
    pub fn new(config: &AppsConfig, name: &str) -> Result<AppDir, AppError> {
        rota_bundle::check_app_name(name).map_err(|error| AppError::Refused(error.to_string()))?;
        Ok(AppDir {
            name: name.to_owned(),
            root: config.dir.join(name),
        })
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub fn release_dir(&self, id: &str) -> PathBuf {
        self.releases_dir().join(id)
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.root.join("meta").join(format!("{id}.json"))
    }

    /// The environment a fleet delivered with release `id` (0600), installed as
    /// [`Self::environment_file`] when the release becomes current.
    fn environment_snapshot(&self, id: &str) -> PathBuf {
        self.root.join("meta").join(format!("{id}.env"))
    }

    /// What the app's units read: `EnvironmentFile=/data/rota/apps/NAME/environment`.
    pub fn environment_file(&self) -> PathBuf {
        self.root.join("environment")
    }

    /// Keeps `env` as the environment of release `id`, in systemd's `EnvironmentFile` format
    /// (values double-quoted, with backslash, double quote, dollar and backquote escaped),
    /// readable by root only.
    pub fn save_environment(
        &self,
        id: &str,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), AppError> {
        let mut text = String::from("# Written by rota-updater from the fleet's environment.\n");
        for (name, value) in env {
            let mut quoted = String::with_capacity(value.len() + 2);
            for c in value.chars() {
                if matches!(c, '\\' | '"' | '$' | '`') {
                    quoted.push('\\');
                }
                quoted.push(c);
            }
            text.push_str(&format!("{name}=\"{quoted}\"\n"));
        }
        let path = self.environment_snapshot(id);
        atomic_file::replace(&path, text.as_bytes(), 0o600)
            .map_err(|error| AppError::io("write", &path, error))
    }

    /// Makes release `id`'s environment the app's, when the fleet delivered one with it; a
    /// release installed by hand leaves the file as it is.
    fn install_environment(&self, id: &str) -> Result<(), AppError> {
        let snapshot = self.environment_snapshot(id);
        let bytes = match fs::read(&snapshot) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(AppError::io("read", &snapshot, error)),
        };
        let path = self.environment_file();
        atomic_file::replace(&path, &bytes, 0o600)
            .map_err(|error| AppError::io("write", &path, error))
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// The current release's id, read from the `current` link.
    pub fn current(&self) -> Result<Option<String>, AppError> {
        let link = self.current_link();
        match fs::read_link(&link) {
            Ok(target) => Ok(target
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(AppError::io("read", &link, error)),
        }
    }

    pub fn load_state(&self) -> Result<AppState, AppError> {
        let path = self.state_path();
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| AppError::Corrupt { path, source })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(AppState::default()),
            Err(error) => Err(AppError::io("read", &path, error)),
        }
    }

    pub fn save_state(&self, state: &AppState) -> Result<(), AppError> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state).expect("the app state serializes");
        atomic_file::replace(&path, &bytes, 0o644)
            .map_err(|error| AppError::io("write", &path, error))
    }

    pub fn load_meta(&self, id: &str) -> Result<ReleaseMeta, AppError> {
        let path = self.meta_path(id);
        let bytes = fs::read(&path).map_err(|error| AppError::io("read", &path, error))?;
        serde_json::from_slice(&bytes).map_err(|source| AppError::Corrupt { path, source })
    }

    fn save_meta(&self, meta: &ReleaseMeta) -> Result<(), AppError> {
        let path = self.meta_path(&meta.id);
        let bytes = serde_json::to_vec_pretty(meta).expect("release metadata serializes");
        atomic_file::replace(&path, &bytes, 0o644)
            .map_err(|error| AppError::io("write", &path, error))
    }

    /// Kept releases (tree and metadata both there), oldest install first.
    pub fn releases(&self) -> Result<Vec<ReleaseMeta>, AppError> {
        let dir = self.releases_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(AppError::io("list", &dir, error)),
        };
        let mut releases = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| AppError::io("list", &dir, error))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match self.load_meta(&name) {
                Ok(meta) => releases.push(meta),
                Err(error) => log::warn!("app {}: release {name} skipped: {error}", self.name),
            }
        }
        releases.sort_by(|a, b| (a.installed_at_ms, &a.id).cmp(&(b.installed_at_ms, &b.id)));
        Ok(releases)
    }

    /// A kept release by id, version, or `commit:SHA` (prefix), newest first.
    pub fn find_release(&self, wanted: &str) -> Result<ReleaseMeta, AppError> {
        let releases = self.releases()?;
        let commit = wanted.strip_prefix("commit:");
        let found = releases.iter().rev().find(|meta| match commit {
            Some(commit) => meta
                .git_commit
                .as_deref()
                .is_some_and(|full| !commit.is_empty() && full.starts_with(commit)),
            None => meta.id == wanted || meta.version == wanted,
        });
        found.cloned().ok_or_else(|| AppError::UnknownRelease {
            app: self.name.clone(),
            wanted: wanted.to_owned(),
            kept: releases
                .iter()
                .map(|meta| meta.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// Installed apps (those with a directory), by name.
pub fn app_names(config: &AppsConfig) -> Result<Vec<String>, AppError> {
    let entries = match fs::read_dir(&config.dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(AppError::io("list", &config.dir, error)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| AppError::io("list", &config.dir, error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "objects" && rota_bundle::check_app_name(&name).is_ok() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Settles what a crash or power cut left: every app's pending activation is undone
/// ([`recover`]) and half-extracted trees are removed. Run under the updater's lock before any
/// app command and when the daemon starts.
pub fn recover_all(config: &crate::config::Config) -> Result<Vec<(String, LastOutcome)>, AppError> {
    let mut undone = Vec::new();
    for name in app_names(&config.apps)? {
        let app = AppDir::new(&config.apps, &name)?;
        if let Some(outcome) = recover(config, &app)? {
            undone.push((name, outcome));
        }
        let releases = app.releases_dir();
        let Ok(entries) = fs::read_dir(&releases) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(|error| AppError::io("remove", &path, error))?;
            }
        }
    }
    Ok(undone)
}

/// The current app releases that do not run on OS version `os_version`: (app, release id,
/// requirement). An OS install that would break one is refused before a byte is written.
pub fn apps_not_supporting(
    config: &AppsConfig,
    os_version: &semver::Version,
) -> Result<Vec<(String, String, String)>, AppError> {
    let mut unsupported = Vec::new();
    for name in app_names(config)? {
        let app = AppDir::new(config, &name)?;
        let Some(current) = app.current()? else {
            continue;
        };
        let spec = app.load_meta(&current)?.spec;
        if let Some(requirement) = spec
            .os_requirement()
            .map_err(|error| AppError::Refused(error.to_string()))?
        {
            if !requirement.matches(os_version) {
                unsupported.push((name, current, requirement.to_string()));
            }
        }
    }
    Ok(unsupported)
}

/// One app as `app status` and the fleet report show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppStatus {
    pub name: String,
    pub current: Option<ReleaseMeta>,
    pub previous: Option<String>,
    pub pending: Option<PendingActivation>,
    pub last: Option<LastOutcome>,
    /// Ids of every kept release, oldest first.
    pub kept: Vec<String>,
}

pub fn status(config: &AppsConfig, name: &str) -> Result<AppStatus, AppError> {
    Ok(status_and_releases(config, name)?.0)
}

/// [`status`] and the kept releases it was made from, read once.
pub fn status_and_releases(
    config: &AppsConfig,
    name: &str,
) -> Result<(AppStatus, Vec<ReleaseMeta>), AppError> {
    let app = AppDir::new(config, name)?;
    if !app.root.exists() {
        return Err(AppError::UnknownApp(name.to_owned()));
    }
    let state = app.load_state()?;
    let releases = app.releases()?;
    let current = match app.current()? {
        Some(id) => match releases.iter().find(|meta| meta.id == id) {
            Some(meta) => Some(meta.clone()),
            None => Some(app.load_meta(&id)?),
        },
        None => None,
    };
    let status = AppStatus {
        name: name.to_owned(),
        current,
        previous: state.previous,
        pending: state.pending,
        last: state.last,
        kept: releases.iter().map(|meta| meta.id.clone()).collect(),
    };
    Ok((status, releases))
}

/// What the fleet server is told about the apps: each one's current release, the versions it
/// keeps and how its last activation ended. Read without the lock (an activation may be under
/// way: the next report tells); an app that cannot be read is left out.
pub fn inventory(config: &AppsConfig) -> Vec<rota_protocol::robot::AppInventory> {
    let names = app_names(config).unwrap_or_default();
    names
        .iter()
        .filter_map(|name| match status_and_releases(config, name) {
            Ok(read) => Some(read),
            Err(error) => {
                log::debug!("inventory: app {name}: {error}");
                None
            }
        })
        .map(|(status, releases)| {
            let current = status.current.as_ref();
            rota_protocol::robot::AppInventory {
                version: current.map(|meta| meta.version.clone()),
                release: current.map(|meta| meta.id.clone()),
                git_commit: current.and_then(|meta| meta.git_commit.clone()),
                kept: releases.into_iter().map(|meta| meta.version).collect(),
                last: status.last.as_ref().map(describe_outcome),
                name: status.name,
            }
        })
        .collect()
}

/// One line for people: how an activation ended.
pub fn describe_outcome(outcome: &LastOutcome) -> String {
    match outcome {
        LastOutcome::Activated { release, .. } => format!("activated {release}"),
        LastOutcome::RolledBack {
            release,
            back_to,
            check,
            output,
            ..
        } => format!(
            "rolled back {release} to {}: check {check:?} failed: {output}",
            back_to.as_deref().unwrap_or("no release")
        ),
        LastOutcome::Interrupted {
            release, back_to, ..
        } => format!(
            "interrupted {release} before its checks decided; back to {}",
            back_to.as_deref().unwrap_or("no release")
        ),
    }
}

/// Removes the oldest releases beyond `keep`, never the current or previous one, then the
/// objects nothing links any more. Returns the ids removed.
pub fn prune(config: &AppsConfig, app: &AppDir) -> Result<Vec<String>, AppError> {
    let current = app.current()?;
    let previous = app.load_state()?.previous;
    let releases = app.releases()?;
    let mut excess = releases.len().saturating_sub(config.keep.max(1));
    let mut removed = Vec::new();
    for meta in &releases {
        if excess == 0 {
            break;
        }
        if Some(&meta.id) == current.as_ref() || Some(&meta.id) == previous.as_ref() {
            continue;
        }
        // Tree first: a release without its tree is not kept, whatever meta remains.
        let tree = app.release_dir(&meta.id);
        fs::remove_dir_all(&tree).map_err(|error| AppError::io("remove", &tree, error))?;
        let meta_path = app.meta_path(&meta.id);
        fs::remove_file(&meta_path).map_err(|error| AppError::io("remove", &meta_path, error))?;
        let snapshot = app.environment_snapshot(&meta.id);
        match fs::remove_file(&snapshot) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(AppError::io("remove", &snapshot, error))
            }
            _ => {}
        }
        removed.push(meta.id.clone());
        excess -= 1;
    }
    if !removed.is_empty() {
        release::sync_dir(&app.releases_dir())?;
        let objects = ObjectStore::open(config.dir.join("objects"))?;
        let (count, bytes) = objects.collect_garbage()?;
        log::info!(
            "app {}: pruned {} release(s), {count} unused file(s), {bytes} bytes",
            app.name,
            removed.len()
        );
    }
    Ok(removed)
}
