//! What an app release declares in its signed manifest (format version 3): the systemd units it
//! restarts, the checks that decide whether it works, and the OS versions it runs on. Signed,
//! so a fleet server can schedule an app but cannot change what the robot restarts or runs as
//! a check.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest app name: it is a directory name on the robot and part of unit file paths.
pub const MAX_APP_NAME_LENGTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    /// systemd units restarted, in this order, when a release of the app becomes current.
    pub units: Vec<String>,
    /// Every check must pass within `check_deadline_secs` of the restart, or the robot switches
    /// back to the release that was current before.
    pub checks: Vec<AppCheck>,
    pub check_deadline_secs: u32,
    /// A semver requirement on the OS release the robot runs (`>=1.4, <2`); `None`: any.
    pub os_versions: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCheck {
    pub name: String,
    pub probe: AppProbe,
    /// Longest one attempt may take (an HTTP request, a command run).
    pub attempt_timeout_secs: u32,
}

/// How a check asks; a failed attempt is tried again until the deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProbe {
    /// The unit is `active` (or exited successfully).
    Unit(String),
    /// A GET answers with `expect_status`, and its body contains `body_contains` when set.
    Http {
        url: String,
        expect_status: u16,
        body_contains: Option<String>,
    },
    /// argv, run without a shell; passes on exit status 0.
    Command(Vec<String>),
}

impl AppSpec {
    /// The OS requirement, parsed.
    pub fn os_requirement(&self) -> Result<Option<semver::VersionReq>> {
        self.os_versions
            .as_deref()
            .map(|text| {
                semver::VersionReq::parse(text)
                    .map_err(|error| Error::invalid(format!("app OS versions {text:?}: {error}")))
            })
            .transpose()
    }

    pub(crate) fn validate(&self, app_name: &str) -> Result<()> {
        check_app_name(app_name)?;
        for unit in &self.units {
            if unit.is_empty() || unit.contains('/') || unit.chars().any(char::is_whitespace) {
                return Err(Error::invalid(format!(
                    "app {app_name:?}: {unit:?} is not a systemd unit name"
                )));
            }
        }
        for check in &self.checks {
            if check.name.is_empty() {
                return Err(Error::invalid(format!(
                    "app {app_name:?}: a check has an empty name"
                )));
            }
            if let AppProbe::Command(argv) = &check.probe {
                if argv.is_empty() {
                    return Err(Error::invalid(format!(
                        "app {app_name:?}: check {:?} has an empty command",
                        check.name
                    )));
                }
            }
        }
        self.os_requirement()?;
        Ok(())
    }
}

/// An app name becomes a directory on the robot: lower-case letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit, so it can never be `..` or hide as a dot file.
pub fn check_app_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_APP_NAME_LENGTH
        && name
            .bytes()
            .next()
            .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
        && name.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"-_.".contains(&byte)
        });
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "app name {name:?}: use 1 to {MAX_APP_NAME_LENGTH} of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_cannot_leave_their_directory() {
        for good in ["nav", "telemetry-2", "a.b_c"] {
            check_app_name(good).unwrap();
        }
        for bad in ["", "..", ".hidden", "Nav", "a/b", "-x", &"x".repeat(65)] {
            assert!(check_app_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
