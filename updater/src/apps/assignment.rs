//! An app release the fleet assigned: what the daemon does with it and what it reports. The
//! caller holds the updater's lock and queues the events in order.

use rota_protocol::robot::{Assignment, RobotEvent};

use super::activate::{activate, recover, ActivationOutcome};
use super::install::{install_app, AppInstallOptions};
use super::{AppDir, AppError, LastOutcome};
use crate::config::Config;
use crate::install::source::{error_chain, BundleSource, HttpFetcher};
use crate::notify::Notifier;
use rota_bundle::Keyring;

/// How an assignment went: the events to report, or a failure worth trying again later (the
/// network).
pub enum Handled {
    Report(Vec<RobotEvent>),
    Retry(AppError),
}

pub struct AppAssignment<'a> {
    pub config: &'a Config,
    pub keyring: &'a Keyring,
    pub http: &'a HttpFetcher,
    pub os_version: Option<&'a str>,
    pub notifier: &'a Notifier,
}

impl AppAssignment<'_> {
    /// Makes `assignment`'s release of app `name` current, from a kept release when the robot
    /// has it (no download), else from its bundle URL.
    pub fn handle(&self, assignment: &Assignment, name: &str) -> Handled {
        match self.try_handle(assignment, name) {
            Ok(events) => Handled::Report(events),
            // The network failed: the assignment is offered again.
            Err(error) if error.is_transport() => Handled::Retry(error),
            Err(error) => Handled::Report(vec![RobotEvent::Failed {
                error: error_chain(&error),
            }]),
        }
    }

    fn try_handle(&self, assignment: &Assignment, name: &str) -> Result<Vec<RobotEvent>, AppError> {
        let app = AppDir::new(&self.config.apps, name)?;
        recover(self.config, &app)?;
        let releases = app.releases()?;
        let current_id = app.current()?;
        let kept = releases
            .iter()
            .find(|meta| meta.bundle_digest == assignment.manifest_hash);
        if let Some(kept) = kept {
            if current_id.as_deref() == Some(kept.id.as_str()) {
                log::info!("app {name}: {} is current already", kept.id);
                return Ok(vec![RobotEvent::Committed]);
            }
            if let Some(LastOutcome::RolledBack { release, check, .. }) = app.load_state()?.last {
                if release == kept.id && !assignment.force {
                    return Ok(vec![RobotEvent::RolledBack {
                        reason: format!(
                            "release {release} failed check {check:?} here before; deploy with force to retry"
                        ),
                    }]);
                }
            }
            let current = current_id
                .as_deref()
                .and_then(|id| releases.iter().find(|meta| meta.id == id));
            let older = match (semver::Version::parse(&kept.version), current) {
                (Ok(kept), Some(current)) => {
                    semver::Version::parse(&current.version).is_ok_and(|current| kept < current)
                }
                _ => false,
            };
            if older && !assignment.allow_downgrade {
                return Err(AppError::Refused(format!(
                    "kept release {} is older than the current release of app {name}",
                    kept.id
                )));
            }
            log::info!("app {name}: {} is kept: switching, no download", kept.id);
            app.save_environment(&kept.id, &assignment.env)?;
            let outcome = activate(self.config, &app, &kept.id, self.notifier)?;
            return Ok(vec![RobotEvent::Installing, outcome_event(outcome)]);
        }
        let report = install_app(
            self.config,
            self.keyring,
            &BundleSource::Http(assignment.bundle_url.clone()),
            Some(self.http),
            self.os_version,
            &AppInstallOptions {
                allow_downgrade: assignment.allow_downgrade,
                environment: Some(assignment.env.clone()),
            },
            self.notifier,
        )?;
        let installed = RobotEvent::Installed {
            fetched_bytes: Some(report.fetched_bytes),
            reused_bytes: Some(0),
        };
        let outcome = match (report.failed_check, report.check_output) {
            (Some(check), Some(output)) => ActivationOutcome::RolledBack { check, output },
            _ => ActivationOutcome::Activated,
        };
        Ok(vec![
            RobotEvent::Installing,
            installed,
            outcome_event(outcome),
        ])
    }
}

fn outcome_event(outcome: ActivationOutcome) -> RobotEvent {
    match outcome {
        ActivationOutcome::Activated => RobotEvent::Committed,
        ActivationOutcome::RolledBack { check, output } => RobotEvent::RolledBack {
            reason: format!("check {check:?} failed: {output}"),
        },
    }
}
