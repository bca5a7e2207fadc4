//! What a robot and the fleet server say to each other.
//!
//! ```text
//! POST /api/v1/robot/enroll       EnrollRequest  -> EnrollResponse          (fleet enrollment key)
//! GET  /api/v1/robot/assignment   ?wait=SECS, If-None-Match -> 200 Assignment | 204 | 304
//! POST /api/v1/robot/events       EventReport    -> 204                     (robot token)
//! PUT  /api/v1/robot/slots        SlotsReport    -> 204                     (robot token)
//! PUT  /api/v1/robot/inventory    Inventory      -> 204                     (robot token)
//! GET  <Assignment::bundle_url>   Range: bytes=N-  -> 206 bundle bytes
//! ```
//!
//! A deployment counts as succeeded on a robot only once it reports [`RobotEvent::Committed`].
//!
//! The inventory route came later than the others: a robot sends it at start-up and when its
//! inventory changed, and carries on when an older server answers 404. Every field of
//! [`Inventory`] is optional, so robots and servers of different ages read each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header carrying the robot's token (and operators' API keys) as `Authorization: Bearer <token>`.
pub const AUTHORIZATION_SCHEME: &str = "Bearer";

/// Longest long-poll a robot may ask for with `?wait=`; the server clamps larger values.
pub const MAX_WAIT_SECS: u64 = 60;

/// Asks the server for a robot token. Sent once, when the robot has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollRequest {
    /// The fleet-wide enrollment key the robot was provisioned with.
    pub enrollment_key: String,
    /// The robot's id, unique in the fleet; see [`validate_robot_id`].
    pub robot_id: String,
    /// The product/board string bundles must match (for example `lekiwi-rpi5`).
    pub compatible: String,
    /// A secret the robot generated and stored before its first attempt. When the answer to an
    /// enrollment is lost (the power went before the token was stored), the same request with
    /// the same nonce gets a fresh token instead of `409`; nobody else knows the nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_nonce: Option<String>,
}

/// The robot's credentials. The token is shown only here; the server keeps only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub robot_id: String,
    /// Secret to send as `Authorization: Bearer <token>` on every later robot call.
    pub token: String,
    /// False while the fleet requires approval and an admin has not given it yet.
    pub approved: bool,
}

/// What the robot should install next. Repeated on every poll until the robot reports an end
/// state (committed, rolled back or failed) for it or an operator replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    /// Echo this in every [`EventReport`] about the assignment.
    pub deployment_id: String,
    pub release_id: String,
    pub version: String,
    pub compatible: String,
    /// Absolute URL of the bundle; supports `Range` requests so downloads resume.
    pub bundle_url: String,
    /// True when `bundle_url` is the fleet server itself and wants the robot token; false for a
    /// CDN, which must never see the token.
    pub bundle_requires_token: bool,
    pub bundle_size: u64,
    /// sha256 of the bundle's signed manifest, hex: what identifies a build across renames.
    pub manifest_hash: String,
    /// The operator forced this release although the robot rolled back from it before.
    pub force: bool,
    /// A rollback: the robot may install a lower version than it runs (never a lower security
    /// version). When its other slot already holds this release it switches to it and reboots
    /// instead of downloading, and reports [`RobotEvent::Switched`].
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Install and reboot only inside this window of the robot's local time; outside it the
    /// robot reports [`RobotEvent::WaitingForWindow`] and waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_window: Option<UpdateWindow>,
    /// Set for an app release: its app's name. The robot installs it beside the OS
    /// (`rota-updater app`), restarts the app's units and runs its checks: no reboot; the
    /// outcome is `committed` or `rolled_back`, and a release it keeps needs no download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// For an app release: the variables and secrets of the robot's environment, which the
    /// robot writes to the app's `EnvironmentFile` (mode 0600) before its units restart.
    /// Secret values: never log this struct.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A daily window of the robot's local time, `HH:MM-HH:MM`, optionally on some weekdays only.
/// An end before the start wraps past midnight (`22:00-04:00`); `days` name the day the
/// window opens. Equal start and end mean the whole day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateWindow {
    /// `HH:MM`, 24-hour.
    pub start: String,
    /// `HH:MM`, 24-hour.
    pub end: String,
    /// `mon` .. `sun`; empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MINUTES_PER_DAY: u32 = 24 * 60;
const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY;

impl UpdateWindow {
    /// Parses `22:00-04:00` or `mon,tue,wed 09:00-17:00`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (days, times) = match text.split_once(' ') {
            Some((days, times)) => (days.split(',').map(str::to_string).collect(), times),
            None => (Vec::new(), text),
        };
        let (start, end) = times.split_once('-').ok_or_else(|| {
            format!("update window {text:?} must look like 22:00-04:00 or mon,fri 09:00-17:00")
        })?;
        let window = UpdateWindow {
            start: start.trim().to_string(),
            end: end.trim().to_string(),
            days,
        };
        window.validate()?;
        Ok(window)
    }

    /// Checks the times and day names.
    pub fn validate(&self) -> Result<(), String> {
        minute_of_day(&self.start)?;
        minute_of_day(&self.end)?;
        for day in &self.days {
            weekday_index(day)?;
        }
        Ok(())
    }

    /// Whether local time `weekday` (0 = Monday) `minute` (0..1440) is inside the window.
    pub fn contains(&self, weekday: u32, minute: u32) -> Result<bool, String> {
        Ok(self.minutes_until_open(weekday, minute)? == 0)
    }

    /// Minutes from local time `weekday` (0 = Monday) `minute` until the window is open: zero
    /// inside it.
    pub fn minutes_until_open(&self, weekday: u32, minute: u32) -> Result<u32, String> {
        let start = minute_of_day(&self.start)?;
        let end = minute_of_day(&self.end)?;
        let length = match (end + MINUTES_PER_DAY - start) % MINUTES_PER_DAY {
            0 => MINUTES_PER_DAY,
            length => length,
        };
        let open_days: Vec<u32> = if self.days.is_empty() {
            (0..7).collect()
        } else {
            self.days
                .iter()
                .map(|day| weekday_index(day))
                .collect::<Result<_, _>>()?
        };
        let now = (weekday % 7) * MINUTES_PER_DAY + minute % MINUTES_PER_DAY;
        let mut wait = u32::MAX;
        for day in open_days {
            let opens = day * MINUTES_PER_DAY + start;
            // Minutes since this weekly opening (it may have been last week).
            let since = (now + MINUTES_PER_WEEK - opens) % MINUTES_PER_WEEK;
            if since < length {
                return Ok(0);
            }
            wait = wait.min(MINUTES_PER_WEEK - since);
        }
        Ok(wait)
    }
}

impl std::fmt::Display for UpdateWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.days.is_empty() {
            write!(f, "{} ", self.days.join(","))?;
        }
        write!(f, "{}-{}", self.start, self.end)
    }
}

fn minute_of_day(time: &str) -> Result<u32, String> {
    let parsed = time.split_once(':').and_then(|(h, m)| {
        let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
        (h < 24 && m < 60 && time.len() == 5).then_some(h * 60 + m)
    });
    parsed.ok_or_else(|| format!("time {time:?} must be HH:MM between 00:00 and 23:59"))
}

fn weekday_index(day: &str) -> Result<u32, String> {
    WEEKDAYS
        .iter()
        .position(|known| known.eq_ignore_ascii_case(day.trim()))
        .map(|index| index as u32)
        .ok_or_else(|| format!("day {day:?} must be one of {}", WEEKDAYS.join(", ")))
}

/// One step of installing an assignment, as the robot lives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RobotEvent {
    Downloading {
        bytes_done: u64,
        bytes_total: u64,
    },
    Installing,
    /// Written and verified; not success yet: the trial boot and commit decide. A robot that
    /// plans against its booted slot says how the image arrived (absent from older robots).
    Installed {
        /// Stored bundle bytes downloaded for the image.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fetched_bytes: Option<u64>,
        /// Image bytes copied from the booted slot instead of downloaded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reused_bytes: Option<u64>,
    },
    Rebooting,
    /// Booted into the new slot, health checks running.
    Trial,
    /// The only event that makes a deployment succeed on a robot.
    Committed,
    RolledBack {
        reason: String,
    },
    Failed {
        error: String,
    },
    /// The other slot already held the release: a switch and reboot, no download.
    Switched {
        slot: Slot,
    },
    /// Outside the assignment's update window; the robot starts when it opens.
    WaitingForWindow {
        /// Local time the window opens next, `YYYY-MM-DD HH:MM`.
        opens_at: String,
    },
}

impl RobotEvent {
    /// The assignment state this event moves to.
    pub fn state(&self) -> AssignmentState {
        match self {
            RobotEvent::Downloading { .. } => AssignmentState::Downloading,
            RobotEvent::Installing => AssignmentState::Installing,
            RobotEvent::Installed { .. } => AssignmentState::Installed,
            RobotEvent::Rebooting => AssignmentState::Rebooting,
            RobotEvent::Trial => AssignmentState::Trial,
            RobotEvent::Committed => AssignmentState::Committed,
            RobotEvent::RolledBack { .. } => AssignmentState::RolledBack,
            RobotEvent::Failed { .. } => AssignmentState::Failed,
            RobotEvent::Switched { .. } => AssignmentState::Installed,
            RobotEvent::WaitingForWindow { .. } => AssignmentState::Pending,
        }
    }

    /// The event's name as it appears on the wire (`rolled_back`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            RobotEvent::Switched { .. } => "switched",
            RobotEvent::WaitingForWindow { .. } => "waiting_for_window",
            other => other.state().as_str(),
        }
    }

    /// Human detail: the rollback reason, the failure, or download progress.
    pub fn detail(&self) -> Option<String> {
        match self {
            RobotEvent::Downloading {
                bytes_done,
                bytes_total,
            } => Some(format!("{bytes_done}/{bytes_total} bytes")),
            RobotEvent::RolledBack { reason } => Some(reason.clone()),
            RobotEvent::Failed { error } => Some(error.clone()),
            RobotEvent::Switched { slot } => Some(format!(
                "slot {slot:?} already held this release: switched, no download"
            )),
            RobotEvent::WaitingForWindow { opens_at } => {
                Some(format!("outside the update window; it opens at {opens_at}"))
            }
            RobotEvent::Installed {
                fetched_bytes: Some(fetched),
                reused_bytes: Some(reused),
            } => {
                let mib = |bytes: &u64| *bytes as f64 / f64::from(1 << 20);
                Some(format!(
                    "{:.1} MiB fetched, {:.1} MiB reused from the booted slot",
                    mib(fetched),
                    mib(reused)
                ))
            }
            _ => None,
        }
    }
}

/// A robot's report about one assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventReport {
    pub deployment_id: String,
    #[serde(flatten)]
    pub event: RobotEvent,
}

/// One of the two root partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Slot {
    A,
    B,
}

/// What one slot holds, as the robot's state file records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlotContent {
    pub slot: Slot,
    /// Release version in the slot; `None` when unknown (factory image without a manifest).
    pub version: Option<String>,
    pub manifest_hash: Option<String>,
    /// `good`, `trial` or `bad`, as the robot's boot state says.
    pub state: String,
}

/// The robot's view of its disk: which slot it booted and what each holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlotsReport {
    pub booted: Slot,
    pub slots: Vec<SlotContent>,
}

impl SlotsReport {
    /// Version of the slot the robot runs now.
    pub fn running_version(&self) -> Option<&str> {
        self.slots
            .iter()
            .find(|s| s.slot == self.booted)
            .and_then(|s| s.version.as_deref())
    }
}

/// What a robot is and has: the facts operators filter and group robots by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Inventory {
    /// Board model: the device tree's `model`, else DMI's product name, else the robot's
    /// configured `compatible`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    /// `PRETTY_NAME` of the running slot's `/etc/os-release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// `VERSION_ID` of the running slot's `/etc/os-release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// Kernel release, as `uname -r` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// IP addresses other than loopback and IPv6 link-local ones, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskInfo>,
    /// Tags from the robot's own config (`[server] tags`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// App releases installed beside the OS (`rota-updater app`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<AppInventory>,
}

/// One app on the robot: its current release, what it keeps, how its last activation ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppInventory {
    pub name: String,
    /// The current release's version; `None` when no release is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The current release's id on the robot (`VERSION-DIGEST12`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// Versions of every kept release, oldest install first: a rollback to one needs no download.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// How the last activation ended: `activated`, `rolled_back` or `interrupted`, with the
    /// release it was about and, for a rollback, the failing check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
}

/// Sizes in bytes; a size the robot could not read is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_a_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_b_bytes: Option<u64>,
    /// The file system holding the updater's state (the data partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_free_bytes: Option<u64>,
}

/// Tag names: 1 to 64 of `[A-Za-z0-9._-]`, so that `tag.NAME` reads unambiguously in a group
/// query. Values: up to 256 characters, no control characters.
pub fn validate_tag(name: &str, value: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > 64 || !ok_chars {
        return Err(format!(
            "tag name {name:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -"
        ));
    }
    if value.chars().count() > 256 || value.chars().any(char::is_control) {
        return Err(format!(
            "tag {name}: value must be at most 256 characters without control characters"
        ));
    }
    Ok(())
}

/// Where one robot stands in one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AssignmentState {
    /// Part of a later rollout stage, not offered yet.
    Waiting,
    /// Offered, the robot has not reported anything yet.
    Pending,
    Downloading,
    Installing,
    Installed,
    Rebooting,
    Trial,
    Committed,
    RolledBack,
    Failed,
    /// Never offered: the robot rolled back from this release before, or is not compatible.
    Skipped,
    /// A newer deployment took this robot over.
    Superseded,
    /// The deployment was aborted before the robot finished.
    Cancelled,
}

impl AssignmentState {
    pub const ALL: [AssignmentState; 13] = [
        AssignmentState::Waiting,
        AssignmentState::Pending,
        AssignmentState::Downloading,
        AssignmentState::Installing,
        AssignmentState::Installed,
        AssignmentState::Rebooting,
        AssignmentState::Trial,
        AssignmentState::Committed,
        AssignmentState::RolledBack,
        AssignmentState::Failed,
        AssignmentState::Skipped,
        AssignmentState::Superseded,
        AssignmentState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentState::Waiting => "waiting",
            AssignmentState::Pending => "pending",
            AssignmentState::Downloading => "downloading",
            AssignmentState::Installing => "installing",
            AssignmentState::Installed => "installed",
            AssignmentState::Rebooting => "rebooting",
            AssignmentState::Trial => "trial",
            AssignmentState::Committed => "committed",
            AssignmentState::RolledBack => "rolled_back",
            AssignmentState::Failed => "failed",
            AssignmentState::Skipped => "skipped",
            AssignmentState::Superseded => "superseded",
            AssignmentState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Whether the robot is done with this assignment, one way or another.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            AssignmentState::Committed
                | AssignmentState::RolledBack
                | AssignmentState::Failed
                | AssignmentState::Skipped
                | AssignmentState::Superseded
                | AssignmentState::Cancelled
        )
    }

    /// Final and bad: counts against a rollout's failure threshold.
    pub fn is_failure(self) -> bool {
        matches!(self, AssignmentState::RolledBack | AssignmentState::Failed)
    }

    /// The robot should be working on it: offered by polls.
    pub fn is_offered(self) -> bool {
        !self.is_final() && self != AssignmentState::Waiting
    }
}

impl std::fmt::Display for AssignmentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Robot ids go into URLs, file names and log lines: 1 to 64 of `[A-Za-z0-9._-]`, not starting
/// with a dot or dash.
pub fn validate_robot_id(id: &str) -> Result<(), String> {
    let ok_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if id.is_empty() || id.len() > 64 || !ok_chars || id.starts_with(['.', '-']) {
        return Err(format!(
            "robot id {id:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ - and not start with . or -"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_windows_wrap_midnight_and_honour_days() {
        let night = UpdateWindow::parse("22:00-04:00").unwrap();
        let at = |day, h: u32, m: u32| night.minutes_until_open(day, h * 60 + m).unwrap();
        assert_eq!(at(0, 23, 0), 0);
        assert_eq!(at(1, 3, 59), 0);
        assert_eq!(at(1, 4, 0), 18 * 60);
        assert_eq!(at(1, 21, 59), 1);
        let weekdays = UpdateWindow::parse("mon,fri 09:00-17:00").unwrap();
        assert_eq!(weekdays.to_string(), "mon,fri 09:00-17:00");
        assert!(weekdays.contains(4, 9 * 60).unwrap());
        assert!(!weekdays.contains(5, 10 * 60).unwrap());
        // Saturday 10:00 to Monday 09:00.
        assert_eq!(
            weekdays.minutes_until_open(5, 10 * 60).unwrap(),
            14 * 60 + 24 * 60 + 9 * 60
        );
        assert!(UpdateWindow::parse("00:00-00:00")
            .unwrap()
            .contains(6, 1439)
            .unwrap());
        for bad in [
            "22-04",
            "25:00-01:00",
            "9:00-10:00",
            "noon",
            "xyz 09:00-10:00",
        ] {
            assert!(UpdateWindow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn events_are_tagged_snake_case_and_flatten_into_reports() {
        let report = EventReport {
            deployment_id: "dep_1".into(),
            event: RobotEvent::RolledBack {
                reason: "health check nginx failed".into(),
            },
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"deployment_id": "dep_1", "event": "rolled_back", "reason": "health check nginx failed"})
        );
        let back: EventReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        let progress: EventReport = serde_json::from_str(
            r#"{"deployment_id":"d","event":"downloading","bytes_done":5,"bytes_total":10}"#,
        )
        .unwrap();
        assert_eq!(
            progress.event,
            RobotEvent::Downloading {
                bytes_done: 5,
                bytes_total: 10
            }
        );
    }

    #[test]
    fn installed_says_what_was_fetched_and_older_robots_need_not() {
        let old: EventReport =
            serde_json::from_str(r#"{"deployment_id":"d","event":"installed"}"#).unwrap();
        assert_eq!(
            old.event,
            RobotEvent::Installed {
                fetched_bytes: None,
                reused_bytes: None
            }
        );
        assert_eq!(old.event.detail(), None);
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"deployment_id":"d","event":"installed"}"#
        );
        let delta = RobotEvent::Installed {
            fetched_bytes: Some(3 << 20),
            reused_bytes: Some(700 << 20),
        };
        assert_eq!(
            delta.detail().as_deref(),
            Some("3.0 MiB fetched, 700.0 MiB reused from the booted slot")
        );
        assert_eq!(delta.name(), "installed");
    }

    #[test]
    fn unknown_event_is_rejected() {
        let err =
            serde_json::from_str::<EventReport>(r#"{"deployment_id":"d","event":"exploded"}"#);
        assert!(err.is_err());
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in AssignmentState::ALL {
            assert_eq!(AssignmentState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert_eq!(AssignmentState::parse("bogus"), None);
    }

    #[test]
    fn only_committed_is_success_and_installed_is_not_final() {
        assert!(!AssignmentState::Installed.is_final());
        assert!(AssignmentState::Committed.is_final());
        assert!(!AssignmentState::Committed.is_failure());
        assert!(AssignmentState::RolledBack.is_failure());
        assert!(!AssignmentState::Waiting.is_offered());
        assert!(AssignmentState::Trial.is_offered());
    }

    #[test]
    fn robot_ids_are_validated() {
        for good in ["robot-001", "lekiwi_7", "a", "A.b-c_d", &"x".repeat(64)] {
            assert!(validate_robot_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(validate_robot_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_empty_inventory_is_an_empty_object_and_unknown_fields_are_ignored() {
        assert_eq!(serde_json::to_string(&Inventory::default()).unwrap(), "{}");
        let newer: Inventory =
            serde_json::from_str(r#"{"kernel":"6.6.31","gpu":"none","disk":{"cache_bytes":1}}"#)
                .unwrap();
        assert_eq!(newer.kernel.as_deref(), Some("6.6.31"));
        assert_eq!(newer.disk, Some(DiskInfo::default()));
    }

    #[test]
    fn tags_are_validated() {
        for (name, value) in [("site", "lab"), ("rack.row-2_a", ""), ("x", "Zürich 3")] {
            assert!(validate_tag(name, value).is_ok(), "{name}={value}");
        }
        for (name, value) in [("", "x"), ("a b", "x"), ("a=b", "x"), ("ok", "new\nline")] {
            assert!(validate_tag(name, value).is_err(), "{name}={value}");
        }
        assert!(validate_tag("long", &"v".repeat(257)).is_err());
    }

    #[test]
    fn running_version_is_the_booted_slots() {
        let report = SlotsReport {
            booted: Slot::B,
            slots: vec![
                SlotContent {
                    slot: Slot::A,
                    version: Some("1.0.0".into()),
                    manifest_hash: None,
                    state: "good".into(),
                },
                SlotContent {
                    slot: Slot::B,
                    version: Some("2.0.0".into()),
                    manifest_hash: None,
                    state: "trial".into(),
                },
            ],
        };
        assert_eq!(report.running_version(), Some("2.0.0"));
    }
}
