//! Making a kept release current: record the pending activation, replace `current`, restart the
//! release's units, run its checks, and on failure switch back and restart again.

use std::fs;
use std::io;
use std::process::{Command, Stdio};
use std::time::Duration;

use rota_bundle::{AppProbe, AppSpec};

use super::release::sync_dir;
use super::{AppDir, AppError, LastOutcome, PendingActivation};
use crate::config::{CheckKind, Config, HealthCheck, HealthConfig};
use crate::health::{self, CheckOutcome, Verdict};
use crate::notify::Notifier;
use crate::state::now_unix;

/// How an activation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationOutcome {
    Activated,
    /// The failing check (or unit restart) and its output; the release before is current again.
    RolledBack {
        check: String,
        output: String,
    },
}

/// Makes release `to` current, restarts its units and runs its checks; on failure the release
/// current before comes back (its units restarted too). The caller holds the updater's lock.
pub fn activate(
    config: &Config,
    app: &AppDir,
    to: &str,
    notifier: &Notifier,
) -> Result<ActivationOutcome, AppError> {
    let spec = app.load_meta(to)?.spec;
    let from = app.current()?;
    let mut state = app.load_state()?;
    state.pending = Some(PendingActivation {
        from: from.clone(),
        to: to.to_owned(),
        started_at: now_unix(),
    });
    app.save_state(&state)?;
    crate::failpoint::hit("app-pending-recorded");
    app.install_environment(to)?;
    point_current(app, Some(to))?;
    crate::failpoint::hit("app-switched");
    log::info!(
        "app {}: {to} is current, restarting {:?}",
        app.name,
        spec.units
    );

    let failure = match restart_units(config, &spec.units) {
        Err(output) => Some(CheckOutcome {
            name: "restart".into(),
            required: true,
            verdict: Verdict::Failed,
            output,
        }),
        Ok(()) => {
            crate::failpoint::hit("app-restarted");
            health::run_checks(&health_config(config, &spec), notifier)
                .first_required_failure()
                .cloned()
        }
    };
    let now = now_unix();
    match failure {
        None => {
            if from.as_deref() != Some(to) {
                state.previous = from;
            }
            state.pending = None;
            state.last = Some(LastOutcome::Activated {
                release: to.to_owned(),
                at: now,
            });
            app.save_state(&state)?;
            log::info!("app {}: {to} passed its checks", app.name);
            Ok(ActivationOutcome::Activated)
        }
        Some(failed) => {
            log::error!(
                "app {}: {to} failed check {:?} ({}): {}; switching back to {}",
                app.name,
                failed.name,
                failed.verdict,
                failed.output,
                from.as_deref().unwrap_or("no release")
            );
            switch_back(config, app, from.as_deref())?;
            state.pending = None;
            state.last = Some(LastOutcome::RolledBack {
                release: to.to_owned(),
                back_to: from,
                check: failed.name.clone(),
                output: failed.output.clone(),
                at: now,
            });
            app.save_state(&state)?;
            Ok(ActivationOutcome::RolledBack {
                check: failed.name,
                output: failed.output,
            })
        }
    }
}

/// Makes `to` (a kept release id, version or `commit:SHA`; default: the previous release)
/// current again, as [`activate`] does: no download, no reboot.
pub fn rollback(
    config: &Config,
    app: &AppDir,
    to: Option<&str>,
    notifier: &Notifier,
) -> Result<(String, ActivationOutcome), AppError> {
    let target = match to {
        Some(wanted) => app.find_release(wanted)?.id,
        None => app.load_state()?.previous.ok_or_else(|| {
            AppError::Refused(format!(
                "app {} has no previous release to roll back to; name one with --to",
                app.name
            ))
        })?,
    };
    if app.current()?.as_deref() == Some(target.as_str()) {
        return Err(AppError::Refused(format!(
            "release {target} of app {} is already current",
            app.name
        )));
    }
    let outcome = activate(config, app, &target, notifier)?;
    Ok((target, outcome))
}

/// Finishes what a crash or power cut interrupted: an activation still pending never passed
/// its checks, so the release before it becomes current again. Returns what was undone.
pub fn recover(config: &Config, app: &AppDir) -> Result<Option<LastOutcome>, AppError> {
    let mut state = app.load_state()?;
    let Some(pending) = state.pending.take() else {
        return Ok(None);
    };
    log::warn!(
        "app {}: the activation of {} was interrupted before its checks decided; switching back to {}",
        app.name,
        pending.to,
        pending.from.as_deref().unwrap_or("no release")
    );
    switch_back(config, app, pending.from.as_deref())?;
    let outcome = LastOutcome::Interrupted {
        release: pending.to,
        back_to: pending.from,
        at: now_unix(),
    };
    state.last = Some(outcome.clone());
    app.save_state(&state)?;
    Ok(Some(outcome))
}

/// `current` back to `from` (removed when there was none), then `from`'s units restarted. A
/// failed restart is logged, not fatal: that release passed its checks before.
fn switch_back(config: &Config, app: &AppDir, from: Option<&str>) -> Result<(), AppError> {
    if let Some(from) = from {
        app.install_environment(from)?;
    }
    point_current(app, from)?;
    if let Some(from) = from {
        let units = app.load_meta(from)?.spec.units;
        if let Err(output) = restart_units(config, &units) {
            log::error!(
                "app {}: restarting {from}'s units failed: {output}",
                app.name
            );
        }
    }
    Ok(())
}

/// Replaces the `current` link in one rename (or removes it), then fsyncs its directory so
/// the switch survives a power cut.
fn point_current(app: &AppDir, to: Option<&str>) -> Result<(), AppError> {
    let link = app.current_link();
    match to {
        Some(id) => {
            let temp = app.root.join(".current.new");
            match fs::remove_file(&temp) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(AppError::io("remove", &temp, error))
                }
                _ => {}
            }
            // Relative, so the data partition may be mounted anywhere.
            std::os::unix::fs::symlink(format!("releases/{id}"), &temp)
                .map_err(|error| AppError::io("create", &temp, error))?;
            fs::rename(&temp, &link).map_err(|error| AppError::io("replace", &link, error))?;
        }
        None => match fs::remove_file(&link) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(AppError::io("remove", &link, error))
            }
            _ => {}
        },
    }
    sync_dir(&app.root)
}

/// `systemctl restart UNIT...` in one call; the error is what systemctl said.
fn restart_units(config: &Config, units: &[String]) -> Result<(), String> {
    if units.is_empty() {
        return Ok(());
    }
    let systemctl = &config.health.systemctl;
    let output = Command::new(systemctl)
        .arg("restart")
        .args(units)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("run {systemctl} restart: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{systemctl} restart {}: {}: {}",
            units.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The app's signed checks as the health runner takes them: all required, one deadline, a
/// failed attempt asked again until it (as the bundle format promises).
fn health_config(config: &Config, spec: &AppSpec) -> HealthConfig {
    HealthConfig {
        deadline: Duration::from_secs(spec.check_deadline_secs.into()),
        retry_failures: true,
        boot_complete_units: false,
        self_unit: config.health.self_unit.clone(),
        systemctl: config.health.systemctl.clone(),
        checks: spec
            .checks
            .iter()
            .map(|check| {
                let timeout = Duration::from_secs(check.attempt_timeout_secs.max(1).into());
                HealthCheck {
                    name: check.name.clone(),
                    required: true,
                    kind: match &check.probe {
                        AppProbe::Unit(unit) => CheckKind::Unit(unit.clone()),
                        AppProbe::Http {
                            url,
                            expect_status,
                            body_contains,
                        } => CheckKind::Http {
                            url: url.clone(),
                            expect_status: *expect_status,
                            body_contains: body_contains.clone(),
                            timeout,
                        },
                        AppProbe::Command(argv) => CheckKind::Command {
                            argv: argv.clone(),
                            timeout,
                        },
                    },
                }
            })
            .collect(),
    }
}
