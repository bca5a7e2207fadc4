//! Configuration: vendor defaults in `/usr/lib/rota/updater.toml`, then `/etc/rota/updater.toml`,
//! then `/etc/rota/updater.d/*.toml` in name order; later files win key by key.
//!
//! Parsed in stages: each file's text → [`RawConfig`] (all optional, unknown keys refused) →
//! merged, remembering which file set each key → validated [`Config`] whose errors name the file
//! and the key. Every path is configurable so tests and developers run without root.

use crate::apps::AppsConfig;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rota_bootctl::Slot;
use serde::Deserialize;

pub const VENDOR_CONFIG: &str = "/usr/lib/rota/updater.toml";
pub const SYSTEM_CONFIG: &str = "/etc/rota/updater.toml";
pub const DROP_IN_DIR: &str = "/etc/rota/updater.d";

pub const DEFAULT_KEYRING_DIR: &str = "/etc/rota/keys";
pub const DEFAULT_STATE_PATH: &str = "/data/rota/state";
pub const DEFAULT_APPS_DIR: &str = "/data/rota/apps";
pub const DEFAULT_BOOTCTL_CONFIG: &str = "/etc/rota/bootctl.toml";
pub const DEFAULT_SLOT_A: &str = "/dev/disk/by-partlabel/rootfs-a";
pub const DEFAULT_SLOT_B: &str = "/dev/disk/by-partlabel/rootfs-b";
pub const DEFAULT_TRIAL_ATTEMPTS: u32 = 1;
pub const DEFAULT_DEADLINE_SECS: u64 = 300;
pub const DEFAULT_HTTP_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_RETRIES: u32 = 10;
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 500;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// How long an install keeps reconnecting without verifying a new chunk: 10 minutes.
pub const DEFAULT_RETRY_BUDGET_SECS: u64 = 600;
pub const DEFAULT_SELF_UNIT: &str = "rota-commit.service";
pub const DEFAULT_ENROLLMENT_KEY_FILE: &str = "/etc/rota/enrollment-key";
pub const DEFAULT_TOKEN_PATH: &str = "/data/rota/token";
pub const DEFAULT_OUTBOX_PATH: &str = "/data/rota/outbox.json";
pub const DEFAULT_LONG_POLL_SECS: u64 = 30;
pub const DEFAULT_POLL_INTERVAL_SECS: u64 = 60;
pub const DEFAULT_POLL_JITTER_SECS: u64 = 10;
pub const DEFAULT_SERVER_BACKOFF_INITIAL_MS: u64 = 1_000;
pub const DEFAULT_SERVER_BACKOFF_MAX_MS: u64 = 60_000;
/// How often the daemon looks at its inventory again (it sends it only when it changed).
pub const DEFAULT_INVENTORY_INTERVAL_SECS: u64 = 600;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The file that set the key, or "defaults" when it was never set.
        file: String,
        key: String,
        message: String,
    },
}

/// One file's contents; everything optional so a drop-in can set a single key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub compatible: Option<String>,
    pub keyring_dir: Option<PathBuf>,
    pub state_path: Option<PathBuf>,
    pub bootctl_config: Option<PathBuf>,
    pub trial_attempts: Option<u32>,
    pub reboot_command: Option<Vec<String>>,
    pub slots: Option<RawSlots>,
    pub health: Option<RawHealth>,
    pub download: Option<RawDownload>,
    pub server: Option<RawServer>,
    pub apps: Option<RawApps>,
}

/// `[apps]`: where app releases live and how many each app keeps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApps {
    pub dir: Option<PathBuf>,
    pub keep: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlots {
    #[serde(rename = "A")]
    pub a: Option<PathBuf>,
    #[serde(rename = "B")]
    pub b: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub deadline_secs: Option<u64>,
    pub boot_complete_units: Option<bool>,
    pub self_unit: Option<String>,
    pub systemctl: Option<String>,
    /// Appended across files; a check with the name of an earlier one replaces it.
    pub checks: Option<Vec<RawCheck>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: Option<String>,
    pub required: Option<bool>,
    pub unit: Option<String>,
    pub http: Option<String>,
    pub expect_status: Option<u16>,
    pub body_contains: Option<String>,
    pub command: Option<Vec<String>>,
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDownload {
    pub retries: Option<u32>,
    pub backoff_initial_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub timeout_secs: Option<u64>,
    pub retry_budget_secs: Option<u64>,
    pub ca_file: Option<PathBuf>,
}

/// `[server]`: the fleet server `rota-updater daemon` talks to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub url: Option<String>,
    pub robot_id: Option<String>,
    pub enrollment_key_file: Option<PathBuf>,
    pub token_path: Option<PathBuf>,
    pub outbox_path: Option<PathBuf>,
    /// Accepted and ignored: bundles stream into the slot; none is copied to the data
    /// partition any more.
    pub download_dir: Option<PathBuf>,
    pub long_poll_secs: Option<u64>,
    pub poll_interval_secs: Option<u64>,
    pub poll_jitter_secs: Option<u64>,
    pub backoff_initial_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub reboot: Option<String>,
    /// Merged tag by tag across files: a drop-in can add or change one tag.
    pub tags: Option<BTreeMap<String, String>>,
    pub inventory_interval_secs: Option<u64>,
}

impl RawConfig {
    /// Parses one file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// The validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Bundles for any other compatible string are refused.
    pub compatible: String,
    pub keyring_dir: PathBuf,
    pub state_path: PathBuf,
    pub bootctl_config: PathBuf,
    /// Boot attempts the new slot gets before the bootloader falls back.
    pub trial_attempts: u32,
    /// Run after a failed trial to reboot into the previous slot.
    pub reboot_command: Vec<String>,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    pub health: HealthConfig,
    pub download: DownloadConfig,
    pub server: Option<ServerConfig>,
    pub apps: AppsConfig,
}

impl Config {
    pub fn slot_device(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// All required checks must pass within this time after `commit` starts.
    pub deadline: Duration,
    /// Also wait for the units `boot-complete.target` requires (health checks written the
    /// systemd way) to succeed.
    pub boot_complete_units: bool,
    /// Our own unit, skipped among boot-complete.target's requirements.
    pub self_unit: String,
    pub systemctl: String,
    pub checks: Vec<HealthCheck>,
    /// Ask a check that failed again until the deadline (an app's checks: a service that is
    /// up but not ready yet answers 503 for a moment). Off for a trial boot, whose checks are
    /// final on their first answer so a broken slot is left quickly.
    pub retry_failures: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub name: String,
    /// Optional checks are run and logged; only required ones decide the trial.
    pub required: bool,
    pub kind: CheckKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// The systemd unit must reach `active` (or have exited successfully).
    Unit(String),
    Http {
        url: String,
        expect_status: u16,
        /// The answer's body must contain this text too (`{"status":"healthy"}`).
        body_contains: Option<String>,
        timeout: Duration,
    },
    /// argv; must exit 0.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DownloadConfig {
    /// Attempts of one request after a connection error or 408/429/5xx before it gives up.
    pub retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Connect and per-read timeout.
    pub timeout: Duration,
    /// How long an install goes on reconnecting after transfers that broke or stalled, counted
    /// from the last chunk it verified: every verified chunk starts the budget again.
    pub retry_budget: Duration,
    /// Extra PEM CA certificate for a private bundle host.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub url: String,
    /// `None`: the host name, read when the daemon starts.
    pub robot_id: Option<String>,
    /// The fleet enrollment key, read only while the robot has no token.
    pub enrollment_key_file: PathBuf,
    /// The robot token, written 0600 after enrollment (data partition: survives updates).
    pub token_path: PathBuf,
    /// Reports not yet acknowledged by the server.
    pub outbox_path: PathBuf,
    /// Long-poll: how long the server may hold a poll; zero polls every `poll_interval`.
    pub long_poll: Duration,
    pub poll_interval: Duration,
    /// Up to this much is added at random to each interval, so a fleet does not poll in step.
    pub poll_jitter: Duration,
    /// Retry delay while the server is unreachable: doubled per failure up to the max.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub reboot: RebootPolicy,
    /// The robot's own tags, reported with its inventory; operators add theirs on the server.
    pub tags: BTreeMap<String, String>,
    /// How often the inventory is collected again and, when it changed, sent; zero: only at
    /// start-up.
    pub inventory_interval: Duration,
}

/// When the daemon reboots into an installed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootPolicy {
    /// As soon as the install finished.
    Now,
    /// Never by itself: the update waits for the next reboot, whoever makes it.
    Manual,
    /// Inside a daily window of UTC minutes since midnight, `start..end` (wrapping past
    /// midnight when `end < start`).
    Window { start: u16, end: u16 },
}

impl RebootPolicy {
    /// `now`, `manual`, or `HH:MM-HH:MM` (UTC).
    pub fn parse(text: &str) -> Result<RebootPolicy, String> {
        match text {
            "now" => return Ok(RebootPolicy::Now),
            "manual" => return Ok(RebootPolicy::Manual),
            _ => {}
        }
        let minutes = |hh_mm: &str| -> Option<u16> {
            let (hours, minutes) = hh_mm.trim().split_once(':')?;
            let (hours, minutes): (u16, u16) = (hours.parse().ok()?, minutes.parse().ok()?);
            (hours < 24 && minutes < 60).then_some(hours * 60 + minutes)
        };
        let window = text
            .split_once('-')
            .and_then(|(start, end)| Some((minutes(start)?, minutes(end)?)));
        match window {
            Some((start, end)) if start != end => Ok(RebootPolicy::Window { start, end }),
            _ => Err(format!(
                "{text:?} is not \"now\", \"manual\" or a UTC window \"HH:MM-HH:MM\""
            )),
        }
    }

    /// Whether a reboot may happen at `minute_of_day` (UTC).
    pub fn allows(&self, minute_of_day: u16) -> bool {
        match *self {
            RebootPolicy::Now => true,
            RebootPolicy::Manual => false,
            RebootPolicy::Window { start, end } if start < end => {
                (start..end).contains(&minute_of_day)
            }
            RebootPolicy::Window { start, end } => minute_of_day >= start || minute_of_day < end,
        }
    }
}

/// Where each file is looked for; overridable for tests.
#[derive(Debug, Clone)]
pub struct ConfigPaths {
    pub vendor: PathBuf,
    pub system: PathBuf,
    pub drop_in_dir: PathBuf,
}

impl Default for ConfigPaths {
    fn default() -> Self {
        ConfigPaths {
            vendor: VENDOR_CONFIG.into(),
            system: SYSTEM_CONFIG.into(),
            drop_in_dir: DROP_IN_DIR.into(),
        }
    }
}

impl ConfigPaths {
    /// Only this one file (the `--config` flag): no vendor file, no drop-ins.
    pub fn single(path: impl Into<PathBuf>) -> ConfigPaths {
        ConfigPaths {
            vendor: PathBuf::new(),
            system: path.into(),
            drop_in_dir: PathBuf::new(),
        }
    }

    /// The files that exist, in merge order.
    pub fn files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let mut files = Vec::new();
        for path in [&self.vendor, &self.system] {
            if !path.as_os_str().is_empty() && path.exists() {
                files.push(path.clone());
            }
        }
        if !self.drop_in_dir.as_os_str().is_empty() {
            match fs::read_dir(&self.drop_in_dir) {
                Ok(entries) => {
                    let mut drop_ins: Vec<PathBuf> = entries
                        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
                        .collect();
                    drop_ins.sort();
                    files.extend(drop_ins);
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ConfigError::Read {
                        path: self.drop_in_dir.clone(),
                        source,
                    })
                }
            }
        }
        Ok(files)
    }
}

/// Reads, merges and validates every file `paths` names.
pub fn load(paths: &ConfigPaths) -> Result<Config, ConfigError> {
    let mut layers = Vec::new();
    for path in paths.files()? {
        let text = fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        layers.push((path.display().to_string(), RawConfig::parse(&text, &path)?));
    }
    merge_and_validate(layers)
}

/// A merged value and the file that set it.
struct Sourced<T> {
    value: Option<T>,
    file: String,
}

impl<T> Sourced<T> {
    fn new() -> Self {
        Sourced {
            value: None,
            file: "defaults".into(),
        }
    }

    fn set(&mut self, value: Option<T>, file: &str) {
        if value.is_some() {
            self.value = value;
            self.file = file.to_owned();
        }
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Merges `(file name, contents)` layers in order and validates the result.
pub fn merge_and_validate(layers: Vec<(String, RawConfig)>) -> Result<Config, ConfigError> {
    let mut compatible = Sourced::new();
    let mut keyring_dir = Sourced::new();
    let mut state_path = Sourced::new();
    let mut bootctl_config = Sourced::new();
    let mut trial_attempts = Sourced::new();
    let mut reboot_command = Sourced::new();
    let mut slot_a = Sourced::new();
    let mut slot_b = Sourced::new();
    let mut deadline = Sourced::new();
    let mut boot_complete_units = Sourced::new();
    let mut self_unit = Sourced::new();
    let mut systemctl = Sourced::new();
    let mut retries = Sourced::new();
    let mut backoff_initial = Sourced::new();
    let mut backoff_max = Sourced::new();
    let mut timeout = Sourced::new();
    let mut retry_budget = Sourced::new();
    let mut ca_file = Sourced::new();
    let mut server_url = Sourced::new();
    let mut robot_id = Sourced::new();
    let mut enrollment_key_file = Sourced::new();
    let mut token_path = Sourced::new();
    let mut outbox_path = Sourced::new();
    let mut long_poll = Sourced::new();
    let mut poll_interval = Sourced::new();
    let mut poll_jitter = Sourced::new();
    let mut server_backoff_initial = Sourced::new();
    let mut server_backoff_max = Sourced::new();
    let mut reboot = Sourced::new();
    let mut inventory_interval = Sourced::new();
    let mut apps_dir = Sourced::new();
    let mut apps_keep = Sourced::new();
    // Tag name -> (value, the file that set it).
    let mut tags: BTreeMap<String, (String, String)> = BTreeMap::new();
    // In order of first appearance; a later check with the same name replaces the earlier one.
    let mut checks: Vec<(String, RawCheck)> = Vec::new();

    for (file, raw) in layers {
        let file = file.as_str();
        compatible.set(raw.compatible, file);
        keyring_dir.set(raw.keyring_dir, file);
        state_path.set(raw.state_path, file);
        bootctl_config.set(raw.bootctl_config, file);
        trial_attempts.set(raw.trial_attempts, file);
        reboot_command.set(raw.reboot_command, file);
        if let Some(slots) = raw.slots {
            slot_a.set(slots.a, file);
            slot_b.set(slots.b, file);
        }
        if let Some(health) = raw.health {
            deadline.set(health.deadline_secs, file);
            boot_complete_units.set(health.boot_complete_units, file);
            self_unit.set(health.self_unit, file);
            systemctl.set(health.systemctl, file);
            for (index, check) in health.checks.unwrap_or_default().into_iter().enumerate() {
                let name = check.name.clone().ok_or_else(|| ConfigError::Invalid {
                    file: file.to_owned(),
                    key: format!("health.checks[{index}].name"),
                    message: "every check needs a name (it is what a rollback reports)".into(),
                })?;
                let validated = (format!("{file}: health.checks[{index}] ({name})"), check);
                match checks
                    .iter_mut()
                    .find(|(_, existing)| existing.name.as_deref() == Some(&name))
                {
                    Some(slot) => *slot = validated,
                    None => checks.push(validated),
                }
            }
        }
        if let Some(apps) = raw.apps {
            apps_dir.set(apps.dir, file);
            apps_keep.set(apps.keep, file);
        }
        if let Some(download) = raw.download {
            retries.set(download.retries, file);
            backoff_initial.set(download.backoff_initial_ms, file);
            backoff_max.set(download.backoff_max_ms, file);
            timeout.set(download.timeout_secs, file);
            retry_budget.set(download.retry_budget_secs, file);
            ca_file.set(download.ca_file, file);
        }
        if let Some(server) = raw.server {
            server_url.set(server.url, file);
            robot_id.set(server.robot_id, file);
            enrollment_key_file.set(server.enrollment_key_file, file);
            token_path.set(server.token_path, file);
            outbox_path.set(server.outbox_path, file);
            if server.download_dir.is_some() {
                log::info!(
                    "{}: server.download_dir is no longer used (bundles stream into the slot)",
                    file
                );
            }
            long_poll.set(server.long_poll_secs, file);
            poll_interval.set(server.poll_interval_secs, file);
            poll_jitter.set(server.poll_jitter_secs, file);
            server_backoff_initial.set(server.backoff_initial_ms, file);
            server_backoff_max.set(server.backoff_max_ms, file);
            reboot.set(server.reboot, file);
            inventory_interval.set(server.inventory_interval_secs, file);
            for (name, value) in server.tags.unwrap_or_default() {
                tags.insert(name, (value, file.to_owned()));
            }
        }
    }

    let compatible_value = compatible.value.clone().ok_or_else(|| {
        compatible.invalid(
            "compatible",
            "must be set (the board string bundles are built for)",
        )
    })?;
    if compatible_value.trim().is_empty() {
        return Err(compatible.invalid("compatible", "must not be empty"));
    }
    let trial_attempts_value = trial_attempts.value.unwrap_or(DEFAULT_TRIAL_ATTEMPTS);
    if trial_attempts_value == 0 {
        return Err(trial_attempts.invalid("trial_attempts", "must be at least 1"));
    }
    let reboot_value = reboot_command
        .value
        .clone()
        .unwrap_or_else(|| vec!["systemctl".into(), "reboot".into()]);
    if reboot_value.is_empty() {
        return Err(reboot_command.invalid("reboot_command", "must name a program"));
    }
    let deadline_secs = deadline.value.unwrap_or(DEFAULT_DEADLINE_SECS);
    if deadline_secs == 0 {
        return Err(deadline.invalid("health.deadline_secs", "must be at least 1"));
    }
    let slot_a_value = slot_a.value.take().unwrap_or_else(|| DEFAULT_SLOT_A.into());
    let slot_b_value = slot_b.value.take().unwrap_or_else(|| DEFAULT_SLOT_B.into());
    if slot_a_value == slot_b_value {
        return Err(slot_b.invalid("slots.B", "must differ from slots.A"));
    }
    let backoff_initial_ms = backoff_initial.value.unwrap_or(DEFAULT_BACKOFF_INITIAL_MS);
    let backoff_max_ms = backoff_max.value.unwrap_or(DEFAULT_BACKOFF_MAX_MS);
    if backoff_max_ms < backoff_initial_ms {
        return Err(backoff_max.invalid(
            "download.backoff_max_ms",
            format!("{backoff_max_ms} is below download.backoff_initial_ms ({backoff_initial_ms})"),
        ));
    }
    let server = match server_url.value.clone() {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            if let Some(id) = &robot_id.value {
                rota_protocol::robot::validate_robot_id(id)
                    .map_err(|message| robot_id.invalid("server.robot_id", message))?;
            }
            let long_poll_secs = long_poll.value.unwrap_or(DEFAULT_LONG_POLL_SECS);
            if long_poll_secs > rota_protocol::robot::MAX_WAIT_SECS {
                return Err(long_poll.invalid(
                    "server.long_poll_secs",
                    format!(
                        "{long_poll_secs} is above the protocol's maximum of {}",
                        rota_protocol::robot::MAX_WAIT_SECS
                    ),
                ));
            }
            let interval_secs = poll_interval.value.unwrap_or(DEFAULT_POLL_INTERVAL_SECS);
            if interval_secs == 0 && long_poll_secs == 0 {
                return Err(poll_interval.invalid(
                    "server.poll_interval_secs",
                    "must be at least 1 when server.long_poll_secs is 0",
                ));
            }
            let backoff_initial_ms = server_backoff_initial
                .value
                .unwrap_or(DEFAULT_SERVER_BACKOFF_INITIAL_MS)
                .max(1);
            let backoff_max_ms = server_backoff_max
                .value
                .unwrap_or(DEFAULT_SERVER_BACKOFF_MAX_MS);
            if backoff_max_ms < backoff_initial_ms {
                return Err(server_backoff_max.invalid(
                    "server.backoff_max_ms",
                    format!("{backoff_max_ms} is below server.backoff_initial_ms"),
                ));
            }
            let reboot_policy = match &reboot.value {
                Some(text) => RebootPolicy::parse(text)
                    .map_err(|message| reboot.invalid("server.reboot", message))?,
                None => RebootPolicy::Now,
            };
            for (name, (value, file)) in &tags {
                rota_protocol::robot::validate_tag(name, value).map_err(|message| {
                    ConfigError::Invalid {
                        file: file.clone(),
                        key: format!("server.tags.{name}"),
                        message,
                    }
                })?;
            }
            Some(ServerConfig {
                url,
                robot_id: robot_id.value.clone(),
                enrollment_key_file: enrollment_key_file
                    .value
                    .unwrap_or_else(|| DEFAULT_ENROLLMENT_KEY_FILE.into()),
                token_path: token_path
                    .value
                    .unwrap_or_else(|| DEFAULT_TOKEN_PATH.into()),
                outbox_path: outbox_path
                    .value
                    .unwrap_or_else(|| DEFAULT_OUTBOX_PATH.into()),
                long_poll: Duration::from_secs(long_poll_secs),
                poll_interval: Duration::from_secs(interval_secs),
                poll_jitter: Duration::from_secs(
                    poll_jitter.value.unwrap_or(DEFAULT_POLL_JITTER_SECS),
                ),
                backoff_initial: Duration::from_millis(backoff_initial_ms),
                backoff_max: Duration::from_millis(backoff_max_ms),
                reboot: reboot_policy,
                tags: tags
                    .iter()
                    .map(|(name, (value, _))| (name.clone(), value.clone()))
                    .collect(),
                inventory_interval: Duration::from_secs(
                    inventory_interval
                        .value
                        .unwrap_or(DEFAULT_INVENTORY_INTERVAL_SECS),
                ),
            })
        }
        Some(url) => {
            return Err(server_url.invalid("server.url", format!("{url:?} is not an http(s) URL")))
        }
        None => None,
    };

    let checks = checks
        .into_iter()
        .map(|(location, raw)| validate_check(&location, raw))
        .collect::<Result<Vec<_>, _>>()?;
    let apps_keep_value = apps_keep.value.unwrap_or(crate::apps::DEFAULT_KEEP);
    if apps_keep_value < 2 {
        return Err(apps_keep.invalid(
            "apps.keep",
            "keep at least 2 releases (the current one and the one to roll back to)",
        ));
    }

    Ok(Config {
        compatible: compatible_value,
        keyring_dir: keyring_dir
            .value
            .unwrap_or_else(|| DEFAULT_KEYRING_DIR.into()),
        state_path: state_path
            .value
            .unwrap_or_else(|| DEFAULT_STATE_PATH.into()),
        bootctl_config: bootctl_config
            .value
            .unwrap_or_else(|| DEFAULT_BOOTCTL_CONFIG.into()),
        trial_attempts: trial_attempts_value,
        reboot_command: reboot_value,
        slot_a: slot_a_value,
        slot_b: slot_b_value,
        health: HealthConfig {
            deadline: Duration::from_secs(deadline_secs),
            boot_complete_units: boot_complete_units.value.unwrap_or(true),
            self_unit: self_unit.value.unwrap_or_else(|| DEFAULT_SELF_UNIT.into()),
            systemctl: systemctl.value.unwrap_or_else(|| "systemctl".into()),
            checks,
            retry_failures: false,
        },
        download: DownloadConfig {
            retries: retries.value.unwrap_or(DEFAULT_RETRIES),
            backoff_initial: Duration::from_millis(backoff_initial_ms),
            backoff_max: Duration::from_millis(backoff_max_ms),
            timeout: Duration::from_secs(timeout.value.unwrap_or(30)),
            retry_budget: Duration::from_secs(
                retry_budget.value.unwrap_or(DEFAULT_RETRY_BUDGET_SECS),
            ),
            ca_file: ca_file.value,
        },
        server,
        apps: AppsConfig {
            dir: apps_dir.value.unwrap_or_else(|| DEFAULT_APPS_DIR.into()),
            keep: apps_keep_value,
        },
    })
}

fn validate_check(location: &str, raw: RawCheck) -> Result<HealthCheck, ConfigError> {
    let (file, key) = location.split_once(": ").unwrap_or((location, ""));
    let invalid = |message: String| ConfigError::Invalid {
        file: file.to_owned(),
        key: key.to_owned(),
        message,
    };
    let name = raw.name.unwrap_or_default();
    let timeout = Duration::from_secs(raw.timeout_secs.unwrap_or(DEFAULT_HTTP_TIMEOUT_SECS));
    let kind = match (raw.unit, raw.http, raw.command) {
        (Some(unit), None, None) => {
            if unit.is_empty() {
                return Err(invalid("unit must not be empty".into()));
            }
            CheckKind::Unit(unit)
        }
        (None, Some(url), None) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(format!("http = {url:?} is not an http(s) URL")));
            }
            CheckKind::Http {
                url,
                expect_status: raw.expect_status.unwrap_or(200),
                body_contains: raw.body_contains.clone(),
                timeout,
            }
        }
        (None, None, Some(argv)) => {
            if argv.is_empty() {
                return Err(invalid("command must name a program".into()));
            }
            CheckKind::Command { argv, timeout }
        }
        _ => return Err(invalid("give exactly one of unit, http, command".into())),
    };
    if (raw.expect_status.is_some() || raw.body_contains.is_some())
        && !matches!(kind, CheckKind::Http { .. })
    {
        return Err(invalid(
            "expect_status and body_contains only apply to http checks".into(),
        ));
    }
    Ok(HealthCheck {
        name,
        required: raw.required.unwrap_or(true),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(files: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let parsed = files
            .iter()
            .map(|(name, text)| {
                RawConfig::parse(text, Path::new(name)).map(|raw| (name.to_string(), raw))
            })
            .collect::<Result<Vec<_>, _>>()?;
        merge_and_validate(parsed)
    }

    #[test]
    fn defaults_apply_when_only_compatible_is_set() {
        let config = layers(&[("/etc/rota/updater.toml", "compatible = \"board\"")]).unwrap();
        assert_eq!(config.state_path, Path::new(DEFAULT_STATE_PATH));
        assert_eq!(config.keyring_dir, Path::new(DEFAULT_KEYRING_DIR));
        assert_eq!(config.slot_device(Slot::A), Path::new(DEFAULT_SLOT_A));
        assert_eq!(config.trial_attempts, 1);
        assert_eq!(
            config.health.deadline,
            Duration::from_secs(DEFAULT_DEADLINE_SECS)
        );
        assert!(config.health.checks.is_empty());
        assert!(config.server.is_none());
    }

    #[test]
    fn later_files_win_key_by_key_and_checks_accumulate() {
        let config = layers(&[
            (
                "/usr/lib/rota/updater.toml",
                r#"
                compatible = "vendor-board"
                trial_attempts = 3
                [slots]
                A = "/dev/a"
                B = "/dev/b"
                [[health.checks]]
                name = "core"
                unit = "core.service"
                "#,
            ),
            (
                "/etc/rota/updater.toml",
                "compatible = \"board\"\n[slots]\nB = \"/dev/b2\"",
            ),
            (
                "/etc/rota/updater.d/10-api.toml",
                r#"
                [[health.checks]]
                name = "api"
                http = "http://127.0.0.1:8080/health"
                expect_status = 204
                required = false
                [[health.checks]]
                name = "core"
                command = ["true"]
                "#,
            ),
        ])
        .unwrap();
        assert_eq!(config.compatible, "board");
        assert_eq!(config.trial_attempts, 3);
        assert_eq!(config.slot_a, Path::new("/dev/a"));
        assert_eq!(config.slot_b, Path::new("/dev/b2"));
        let names: Vec<_> = config
            .health
            .checks
            .iter()
            .map(|check| check.name.as_str())
            .collect();
        assert_eq!(names, ["core", "api"]);
        assert!(matches!(
            config.health.checks[0].kind,
            CheckKind::Command { .. }
        ));
        assert!(!config.health.checks[1].required);
        assert!(matches!(
            config.health.checks[1].kind,
            CheckKind::Http {
                expect_status: 204,
                ..
            }
        ));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            ("missing compatible", &[("/etc/a.toml", "trial_attempts = 1")], &["defaults", "compatible"]),
            ("zero attempts", &[("/etc/a.toml", "compatible = \"x\""), ("/etc/b.toml", "trial_attempts = 0")], &["/etc/b.toml", "trial_attempts"]),
            ("unknown key", &[("/etc/a.toml", "compatible = \"x\"\ncompatibel = 1")], &["/etc/a.toml", "compatibel"]),
            ("wrong type", &[("/etc/a.toml", "compatible = 5")], &["/etc/a.toml", "compatible"]),
            (
                "two kinds in one check",
                &[("/etc/a.toml", "compatible = \"x\"\n[[health.checks]]\nname = \"n\"\nunit = \"u\"\ncommand = [\"true\"]")],
                &["/etc/a.toml", "health.checks[0]", "exactly one"],
            ),
            (
                "check without name",
                &[("/etc/a.toml", "compatible = \"x\"\n[[health.checks]]\nunit = \"u\"")],
                &["/etc/a.toml", "health.checks[0].name"],
            ),
            (
                "bad url",
                &[("/etc/d/1.toml", "compatible = \"x\"\n[[health.checks]]\nname = \"n\"\nhttp = \"ftp://x\"")],
                &["/etc/d/1.toml", "health.checks[0] (n)", "ftp://x"],
            ),
            ("same slots", &[("/etc/a.toml", "compatible = \"x\"\n[slots]\nA = \"/d\"\nB = \"/d\"")], &["/etc/a.toml", "slots.B"]),
            ("server url", &[("/etc/a.toml", "compatible = \"x\"\n[server]\nurl = \"x\"")], &["/etc/a.toml", "server.url"]),
            ("reboot policy", &[("/etc/a.toml", "compatible = \"x\"\n[server]\nurl = \"http://s\"\nreboot = \"later\"")], &["/etc/a.toml", "server.reboot", "later"]),
            ("robot id", &[("/etc/a.toml", "compatible = \"x\"\n[server]\nurl = \"http://s\"\nrobot_id = \"a/b\"")], &["/etc/a.toml", "server.robot_id"]),
            ("long poll", &[("/etc/a.toml", "compatible = \"x\"\n[server]\nurl = \"http://s\"\nlong_poll_secs = 61")], &["/etc/a.toml", "server.long_poll_secs"]),
            ("tag name", &[("/etc/a.toml", "compatible = \"x\"\n[server]\nurl = \"http://s\""), ("/etc/d/1.toml", "[server]\ntags = { \"a b\" = \"x\" }")], &["/etc/d/1.toml", "server.tags.a b"]),
        ];
        for (name, files, needles) in cases {
            let error = layers(files).expect_err(name).to_string();
            for needle in *needles {
                assert!(error.contains(needle), "{name}: {error:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn server_tags_merge_tag_by_tag() {
        let config = layers(&[
            (
                "/usr/lib/rota/updater.toml",
                "compatible = \"x\"\n[server]\nurl = \"http://s\"\ntags = { site = \"factory\", arm = \"so-100\" }",
            ),
            ("/etc/rota/updater.d/10-site.toml", "[server.tags]\nsite = \"lab\""),
        ])
        .unwrap();
        let server = config.server.unwrap();
        let tags: Vec<_> = server
            .tags
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        assert_eq!(tags, ["arm=so-100", "site=lab"]);
        assert_eq!(
            server.inventory_interval,
            Duration::from_secs(DEFAULT_INVENTORY_INTERVAL_SECS)
        );
    }

    #[test]
    fn reboot_policies_parse_and_windows_wrap_past_midnight() {
        let cases: &[(&str, &[(u16, bool)])] = &[
            ("now", &[(0, true), (720, true)]),
            ("manual", &[(0, false), (720, false)]),
            (
                "02:00-04:30",
                &[(119, false), (120, true), (269, true), (270, false)],
            ),
            (
                "23:00-01:00",
                &[
                    (1380, true),
                    (0, true),
                    (59, true),
                    (60, false),
                    (720, false),
                ],
            ),
        ];
        for (text, checks) in cases {
            let policy = RebootPolicy::parse(text).unwrap();
            for (minute, allowed) in *checks {
                assert_eq!(
                    policy.allows(*minute),
                    *allowed,
                    "{text} at minute {minute}"
                );
            }
        }
        for bad in ["", "soon", "02:00", "25:00-01:00", "02:00-02:00", "2-3"] {
            assert!(RebootPolicy::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn load_reads_drop_ins_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ConfigPaths {
            vendor: dir.path().join("vendor.toml"),
            system: dir.path().join("etc.toml"),
            drop_in_dir: dir.path().join("updater.d"),
        };
        fs::write(&paths.vendor, "compatible = \"v\"\ntrial_attempts = 2").unwrap();
        fs::create_dir(&paths.drop_in_dir).unwrap();
        fs::write(paths.drop_in_dir.join("20-b.toml"), "trial_attempts = 5").unwrap();
        fs::write(
            paths.drop_in_dir.join("10-a.toml"),
            "trial_attempts = 4\ncompatible = \"d\"",
        )
        .unwrap();
        fs::write(paths.drop_in_dir.join("README"), "not toml").unwrap();
        let config = load(&paths).unwrap();
        assert_eq!(config.compatible, "d");
        assert_eq!(config.trial_attempts, 5);
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("updater.toml");
        let config = load(&ConfigPaths::single(&example)).unwrap();
        assert_eq!(config.compatible, "lekiwi-rpi5");
        assert_eq!(config.state_path, Path::new(DEFAULT_STATE_PATH));
        assert_eq!(config.health.checks.len(), 3);
        assert!(!config.health.checks[2].required);
    }
}
