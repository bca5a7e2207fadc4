//! `rota-updater app install`: check the signed manifest, stream the image into a new release
//! through the object store, then activate it. A release already kept is activated without a
//! download.

use std::fs;
use std::io;
use std::time::Instant;

use rota_bundle::{BundleReader, Keyring, VerifiedManifest};
use serde::Serialize;

use super::activate::{activate, ActivationOutcome};
use super::release::{extract, sync_dir, ExtractStats, ObjectStore};
use super::{prune, AppDir, AppError, ReleaseMeta};
use crate::config::Config;
use crate::install::source::{BundleSource, HttpFetcher};
use crate::notify::Notifier;

#[derive(Debug, Clone, Default)]
pub struct AppInstallOptions {
    /// Install a lower version than the current release.
    pub allow_downgrade: bool,
    /// Variables and secrets from the fleet, the release's environment from now on; `None`
    /// (an install by hand) keeps the app's environment file as it is.
    pub environment: Option<std::collections::BTreeMap<String, String>>,
}

/// What `app install` did, as `--json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppInstallReport {
    pub app: String,
    pub release: String,
    pub version: String,
    /// The release was kept already: nothing was downloaded.
    pub reused_release: bool,
    /// `None` when the release was kept already.
    pub stats: Option<ExtractStats>,
    /// The bundle's length when its image was read; 0 for a kept release (header and
    /// manifest only).
    pub fetched_bytes: u64,
    /// `activated` or `rolled_back`.
    pub result: &'static str,
    pub failed_check: Option<String>,
    pub check_output: Option<String>,
    /// The current release afterwards: this one, or after a failed check the one before.
    pub current: Option<String>,
    pub previous: Option<String>,
    pub pruned: Vec<String>,
    pub seconds: f64,
}

/// Installs and activates the app release at `source`. The caller holds the updater's lock
/// and settled interrupted activations first ([`super::recover`]); `os_version` is what the
/// booted slot runs (`None`: unknown).
pub fn install_app(
    config: &Config,
    keyring: &Keyring,
    source: &BundleSource,
    http: Option<&HttpFetcher>,
    os_version: Option<&str>,
    options: &AppInstallOptions,
    notifier: &Notifier,
) -> Result<AppInstallReport, AppError> {
    let started = Instant::now();
    let opened = source.open_range(0, None, http, None)?;
    let mut bundle = BundleReader::open(opened.reader, keyring).map_err(AppError::Bundle)?;
    let verified = bundle.verified_manifest().clone();
    let app = check_app_bundle(config, &verified, os_version, options)?;
    let id = release_id(&verified);

    let reused_release = app.release_dir(&id).exists();
    let stats = if reused_release {
        log::info!(
            "app {}: release {id} is kept already: no download",
            app.name
        );
        None
    } else {
        let image = bundle
            .next_image()
            .map_err(AppError::Bundle)?
            .ok_or_else(|| AppError::BadTree("the bundle has no image".into()))?;
        Some(store_release(config, &app, &verified, &id, image)?)
    };
    if let Some(environment) = &options.environment {
        app.save_environment(&id, environment)?;
    }
    log::info!("app {}: activating {id}", app.name);
    let outcome = activate(config, &app, &id, notifier)?;
    let pruned = prune(&config.apps, &app)?;
    let (result, failed_check, check_output) = match outcome {
        ActivationOutcome::Activated => ("activated", None, None),
        ActivationOutcome::RolledBack { check, output } => {
            ("rolled_back", Some(check), Some(output))
        }
    };
    Ok(AppInstallReport {
        app: app.name.clone(),
        release: id,
        version: verified.manifest().version.to_string(),
        reused_release,
        fetched_bytes: if reused_release {
            0
        } else {
            verified.bundle_length()
        },
        stats,
        result,
        failed_check,
        check_output,
        current: app.current()?,
        previous: app.load_state()?.previous,
        pruned,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Everything decided from the signed manifest before a byte of the image is read.
fn check_app_bundle(
    config: &Config,
    verified: &VerifiedManifest,
    os_version: Option<&str>,
    options: &AppInstallOptions,
) -> Result<AppDir, AppError> {
    let manifest = verified.manifest();
    let Some(spec) = &manifest.app else {
        return Err(AppError::Refused(
            "not an app release (an OS bundle: install it with `rota-updater install`)".into(),
        ));
    };
    if manifest.compatible != config.compatible {
        return Err(AppError::Refused(format!(
            "built for {:?}, this robot is {:?}",
            manifest.compatible, config.compatible
        )));
    }
    let app = AppDir::new(&config.apps, &manifest.images[0].name)?;
    if let Some(requirement) = spec
        .os_requirement()
        .map_err(|error| AppError::Refused(error.to_string()))?
    {
        let running = os_version.ok_or_else(|| {
            AppError::Refused(format!(
                "app {} needs OS {requirement}, and this robot has no record of the OS version it runs",
                app.name
            ))
        })?;
        let supported = semver::Version::parse(running)
            .map(|version| requirement.matches(&version))
            .unwrap_or(false);
        if !supported {
            return Err(AppError::Refused(format!(
                "app {} {} needs OS {requirement}; this robot runs {running}",
                app.name, manifest.version
            )));
        }
    }
    if let Some(current) = app.current()? {
        let current = app.load_meta(&current)?;
        if current.security_version > manifest.security_version {
            return Err(AppError::Refused(format!(
                "security version {} is below the current release's {} (anti-rollback)",
                manifest.security_version, current.security_version
            )));
        }
        let older = semver::Version::parse(&current.version)
            .map(|running| manifest.version < running)
            .unwrap_or(false);
        if older && !options.allow_downgrade {
            return Err(AppError::Refused(format!(
                "version {} is older than the current {} of app {} (use --allow-downgrade, or `app rollback --to` for a kept release)",
                manifest.version, current.version, app.name
            )));
        }
    }
    Ok(app)
}

/// `VERSION-DIGEST12`: readable, and unique per signed manifest.
fn release_id(verified: &VerifiedManifest) -> String {
    let digest = verified.digest().to_string();
    format!("{}-{}", verified.manifest().version, &digest[..12])
}

/// Extracts the image into `releases/.ID.partial`, writes the metadata, and renames the tree
/// into place: the release exists only once every byte of it is verified and durable.
fn store_release(
    config: &Config,
    app: &AppDir,
    verified: &VerifiedManifest,
    id: &str,
    image: impl io::Read,
) -> Result<ExtractStats, AppError> {
    let releases = app.releases_dir();
    fs::create_dir_all(&releases).map_err(|error| AppError::io("create", &releases, error))?;
    let partial = releases.join(format!(".{id}.partial"));
    match fs::remove_dir_all(&partial) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            return Err(AppError::io("remove", &partial, error))
        }
        _ => {}
    }
    let mut objects = ObjectStore::open(config.apps.dir.join("objects"))?;
    let stats = match extract(image, &partial, &mut objects) {
        Ok(stats) => stats,
        Err(error) => {
            // Nothing links a half-extracted tree; its new objects go with the next prune.
            let _ = fs::remove_dir_all(&partial);
            return Err(error);
        }
    };
    crate::failpoint::hit("app-extracted");
    let manifest = verified.manifest();
    app.save_meta(&ReleaseMeta {
        id: id.to_owned(),
        app: app.name.clone(),
        version: manifest.version.to_string(),
        git_commit: manifest.source.as_ref().map(|s| s.git_commit.clone()),
        git_branch: manifest.source.as_ref().and_then(|s| s.git_branch.clone()),
        bundle_digest: verified.digest().to_string(),
        security_version: manifest.security_version,
        installed_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64),
        spec: manifest.app.clone().expect("checked to be an app release"),
        stats,
    })?;
    let tree = app.release_dir(id);
    fs::rename(&partial, &tree).map_err(|error| AppError::io("rename", &partial, error))?;
    sync_dir(&releases)?;
    log::info!(
        "app {}: release {id} stored: {} files, {} new ({} bytes)",
        app.name,
        stats.files,
        stats.new_objects,
        stats.new_object_bytes
    );
    Ok(stats)
}
