//! `rota-updater app ...`: parses nothing (clap did), calls the library's app functions under
//! the updater's lock, prints results, and picks exit codes.

use anyhow::{Context as _, Result};
use indicatif::HumanBytes;
use rota_updater::apps::{
    self, ActivationOutcome, AppDir, AppError, AppInstallOptions, AppStatus, ReleaseMeta,
};
use rota_updater::cli::AppCommand;
use rota_updater::install::source::{BundleSource, HttpFetcher, SourceError};
use rota_updater::notify::Notifier;
use rota_updater::store::StoreError;

/// `println!` that stops quietly when the reader went away (`app status --json | head`):
/// a closed pipe is not an error of the command, and `println!` would panic on it.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

use crate::{
    load_keyring, lock, robot_token_for, Loaded, EXIT_BAD_BUNDLE, EXIT_TRANSPORT,
    EXIT_TRIAL_FAILED, EXIT_USAGE,
};

/// Switches back every app activation a crash or power cut left pending; the caller holds the
/// lock.
fn settle_locked(loaded: &Loaded) -> Result<()> {
    for (name, outcome) in
        apps::recover_all(&loaded.config).context("settling interrupted app activations")?
    {
        log::warn!("app {name}: {}", apps::describe_outcome(&outcome));
    }
    Ok(())
}

/// [`settle_locked`] under the lock: the daemon's start, as the robot boots.
pub fn settle(loaded: &Loaded) -> Result<()> {
    let _lock = lock(loaded)?;
    settle_locked(loaded)
}

pub fn run(loaded: &Loaded, command: AppCommand) -> Result<u8> {
    let config = &loaded.config;
    let reads_only = matches!(command, AppCommand::List { .. } | AppCommand::Status { .. });
    // `list` and `status` also answer while an install holds the lock: they show a pending
    // activation as pending then, instead of settling it.
    let _lock = match loaded.store.lock() {
        Ok(lock) => {
            settle_locked(loaded)?;
            Some(lock)
        }
        Err(StoreError::Busy { .. }) if reads_only => None,
        Err(error) => return Err(anyhow::Error::new(error).context("taking the state lock")),
    };
    let notifier = Notifier::from_env();
    match command {
        AppCommand::Install {
            source,
            allow_downgrade,
            json,
        } => {
            let source = BundleSource::parse(&source);
            let keyring = load_keyring(loaded)?;
            let http = match &source {
                BundleSource::Http(_) => Some(
                    HttpFetcher::new(&config.download)?
                        .with_bearer(robot_token_for(config, &source)),
                ),
                _ => None,
            };
            let state = loaded.store.load().context("reading the state file")?;
            let os_version = loaded
                .bootctl
                .booted_slot()
                .ok()
                .and_then(|slot| state.slot(slot))
                .map(|content| content.version.clone());
            let installed = apps::install_app(
                config,
                &keyring,
                &source,
                http.as_ref(),
                os_version.as_deref(),
                &AppInstallOptions {
                    allow_downgrade,
                    environment: None,
                },
                &notifier,
            );
            let report = match installed {
                Ok(report) => report,
                // A file that ends early or cannot be read is a bad bundle, not a transfer
                // that a retry could finish.
                Err(error) if !source.is_network() && error.is_transport() => {
                    log::error!(
                        "installing the app release {}: {error:#}",
                        source.describe()
                    );
                    return Ok(EXIT_BAD_BUNDLE);
                }
                Err(error) => {
                    return Err(anyhow::Error::new(error)
                        .context(format!("installing the app release {}", source.describe())))
                }
            };
            if json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let stored = match &report.stats {
                    Some(stats) => format!(
                        "{} files, {} new on disk",
                        stats.files,
                        HumanBytes(stats.new_object_bytes)
                    ),
                    None => "kept already, nothing downloaded".into(),
                };
                match (&report.failed_check, &report.check_output) {
                    (Some(check), Some(output)) => out!(
                        "app {} {}: check {check:?} failed, switched back to {}: {}",
                        report.app,
                        report.release,
                        report.current.as_deref().unwrap_or("no release"),
                        output.trim()
                    ),
                    _ => out!(
                        "app {} {} is current ({stored}, {:.2} s)",
                        report.app,
                        report.release,
                        report.seconds
                    ),
                }
            }
            Ok(if report.failed_check.is_some() {
                EXIT_TRIAL_FAILED
            } else {
                0
            })
        }
        AppCommand::Rollback { name, to, json } => {
            let app = AppDir::new(&config.apps, &name)?;
            if !app.root.exists() {
                return Err(AppError::UnknownApp(name).into());
            }
            let (target, outcome) = apps::rollback(config, &app, to.as_deref(), &notifier)
                .with_context(|| format!("rolling back app {name}"))?;
            let failed = match &outcome {
                ActivationOutcome::Activated => None,
                ActivationOutcome::RolledBack { check, output } => Some((check, output)),
            };
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "app": name,
                        "release": target,
                        "result": if failed.is_some() { "rolled_back" } else { "activated" },
                        "failed_check": failed.map(|(check, _)| check),
                        "check_output": failed.map(|(_, output)| output),
                    }))?
                );
            } else if let Some((check, output)) = failed {
                out!("app {name} {target}: check {check:?} failed, switched back: {output}");
            } else {
                out!("app {name} {target} is current");
            }
            Ok(if failed.is_some() {
                EXIT_TRIAL_FAILED
            } else {
                0
            })
        }
        AppCommand::List { name, json } => {
            let read = statuses(loaded, name.as_deref())?;
            if json {
                let lists: Vec<_> = read
                    .iter()
                    .map(|(status, releases)| {
                        serde_json::json!({
                            "app": status.name,
                            "current": status.current.as_ref().map(|meta| &meta.id),
                            "releases": releases,
                        })
                    })
                    .collect();
                out!("{}", serde_json::to_string_pretty(&lists)?);
                return Ok(0);
            }
            for (status, releases) in &read {
                out!("{}:", status.name);
                let current = status.current.as_ref().map(|meta| meta.id.as_str());
                for meta in releases {
                    out!(
                        "  {} {:<32} {:<12} {}",
                        if Some(meta.id.as_str()) == current {
                            "*"
                        } else {
                            " "
                        },
                        meta.id,
                        meta.git_commit
                            .as_deref()
                            .map_or("", |commit| &commit[..commit.len().min(12)]),
                        HumanBytes(meta.stats.file_bytes)
                    );
                }
            }
            Ok(0)
        }
        AppCommand::Status { name, json } => {
            let statuses: Vec<AppStatus> = statuses(loaded, name.as_deref())?
                .into_iter()
                .map(|(status, _)| status)
                .collect();
            if json {
                out!("{}", serde_json::to_string_pretty(&statuses)?);
                return Ok(0);
            }
            if statuses.is_empty() {
                out!("no apps installed");
            }
            for status in &statuses {
                out!(
                    "{}: current {}, previous {}, {} kept",
                    status.name,
                    status
                        .current
                        .as_ref()
                        .map_or("none", |meta| meta.id.as_str()),
                    status.previous.as_deref().unwrap_or("none"),
                    status.kept.len()
                );
                if let Some(last) = &status.last {
                    out!("  last: {}", apps::describe_outcome(last));
                }
            }
            Ok(0)
        }
    }
}

/// Each app's status (or one app's) with its kept releases.
fn statuses(loaded: &Loaded, name: Option<&str>) -> Result<Vec<(AppStatus, Vec<ReleaseMeta>)>> {
    let names = match name {
        Some(name) => vec![name.to_owned()],
        None => apps::app_names(&loaded.config.apps)?,
    };
    names
        .iter()
        .map(|name| apps::status_and_releases(&loaded.config.apps, name).map_err(Into::into))
        .collect()
}

/// Exit code of a failed app command: a refused or damaged bundle is 3, a transfer that broke
/// is 4, as for OS installs.
pub fn exit_code(error: &anyhow::Error) -> Option<u8> {
    let app_error = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<AppError>())?;
    match app_error {
        AppError::Refused(_) | AppError::BadTree(_) => Some(EXIT_BAD_BUNDLE),
        AppError::Source(SourceError::File { .. } | SourceError::IsDirectory { .. }) => {
            Some(EXIT_USAGE)
        }
        // From a file these never get here: see the install command.
        error if error.is_transport() => Some(EXIT_TRANSPORT),
        // A signed image that is not a valid tar is as bad as a damaged one; the robot's own
        // disk errors are `AppError::Io`.
        AppError::Bundle(_) | AppError::Image(_) => Some(EXIT_BAD_BUNDLE),
        _ => None,
    }
}
