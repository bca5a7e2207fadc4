//! What operators (the `rota` CLI, CI, the dashboard) and the fleet server exchange.
//! Times are RFC 3339 strings in UTC.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::robot::{AssignmentState, Inventory, SlotsReport};

/// What an operator API key may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also publishes releases, deploys, and manages groups.
    Deployer,
    /// Also manages API keys and approves or removes robots.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "deployer" => Ok(Role::Deployer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected viewer, deployer or admin"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error response: a stable machine word and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable code, for example `unauthorized`, `forbidden`, `not_found`, `conflict`.
    pub error: String,
    /// What went wrong, naming the offending input.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    pub key_id: String,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApiKeyRequest {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// Returned once when a key is created: the secret is not stored anywhere in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    pub key: String,
}

/// A published, signature-checked bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Release {
    pub id: String,
    pub version: String,
    pub compatible: String,
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub size: u64,
    /// sha256 of the signed manifest, hex.
    pub manifest_hash: String,
    /// sha256 of the whole bundle file, hex.
    pub bundle_sha256: String,
    pub created_at: String,
    pub created_by: String,
    /// The `git push` of this release's commit, when the GitHub webhook recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<GitPush>,
    /// The app of an app release (installed beside the OS, no reboot); absent for an OS
    /// release. Deploy one as `APP@VERSION` or by its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Robot {
    pub id: String,
    pub compatible: String,
    pub approved: bool,
    /// `pending_approval`, `idle`, `downloading`, `installing`, `installed`, `rebooting`,
    /// `trial`, `rolled_back` or `failed`.
    pub state: String,
    /// Download progress in percent while `downloading`.
    pub progress: Option<u8>,
    /// Version the booted slot holds, from the robot's last slot report or commit.
    pub version: Option<String>,
    pub groups: Vec<String>,
    pub enrolled_at: String,
    pub last_seen: Option<String>,
    pub slots: Option<SlotsReport>,
    /// What the robot last reported about itself; absent until it does (older robots never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// When the robot last reported a changed inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_at: Option<String>,
    /// Tags operators set on the server (`rota robots tag`). The robot's own tags are in
    /// `inventory.tags`; where both name a tag, this one counts.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The robot's latest rollback or failure, if it ever had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<RobotFailure>,
}

/// A rollback or failure a robot reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RobotFailure {
    /// `rolled_back` or `failed`.
    pub event: String,
    pub deployment_id: Option<String>,
    pub version: Option<String>,
    pub detail: Option<String>,
    pub at: String,
}

/// `PATCH /api/v1/robots/{id}/tags`: sets and removes operator tags in one step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TagsRequest {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Names of operator tags to remove; removing one that is not set is not an error.
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Group {
    pub name: String,
    /// Members: added by hand, or for a dynamic group, the robots its query matches now.
    pub robots: Vec<String>,
    /// A dynamic group's query over inventory and tags (see the fleet README's grammar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// `PUT /api/v1/groups/{name}/query`: makes a group dynamic, or changes its query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupQuery {
    /// For example `board ~ "Raspberry Pi 5" and tag.site = "lab"`.
    pub query: String,
}

/// Which robots a deployment is for, written `all`, `group:NAME`, `env:NAME`, `robot:ID` or
/// `robots:ID,ID,...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeploymentTarget {
    All,
    Group(String),
    Robot(String),
    /// The robots in the environment's groups.
    Env(String),
    /// An explicit list, as rollbacks use.
    Robots(Vec<String>),
}

impl FromStr for DeploymentTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "all" => Ok(DeploymentTarget::All),
            Some(("group", name)) if !name.is_empty() => Ok(DeploymentTarget::Group(name.into())),
            Some(("robot", id)) if !id.is_empty() => Ok(DeploymentTarget::Robot(id.into())),
            Some(("env", name)) if !name.is_empty() => Ok(DeploymentTarget::Env(name.into())),
            Some(("robots", ids)) if !ids.is_empty() && !ids.split(',').any(str::is_empty) => Ok(
                DeploymentTarget::Robots(ids.split(',').map(Into::into).collect()),
            ),
            _ => Err(format!(
                "target {s:?} must be all, group:NAME, env:NAME, robot:ID or robots:ID,ID,..."
            )),
        }
    }
}

impl fmt::Display for DeploymentTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeploymentTarget::All => f.write_str("all"),
            DeploymentTarget::Group(name) => write!(f, "group:{name}"),
            DeploymentTarget::Robot(id) => write!(f, "robot:{id}"),
            DeploymentTarget::Env(name) => write!(f, "env:{name}"),
            DeploymentTarget::Robots(ids) => write!(f, "robots:{}", ids.join(",")),
        }
    }
}

impl Serialize for DeploymentTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeploymentTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for DeploymentTarget {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^(all|group:.+|robot:.+|env:.+|robots:.+)$"))
            .description(Some(
                "`all`, `group:NAME`, `env:NAME`, `robot:ID` or `robots:ID,ID,...`",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for DeploymentTarget {}

/// How a deployment reaches its robots.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    /// Every target robot is offered the release at once.
    #[default]
    Immediate,
    /// Stages of growing size, in percent of the target (for example 10, 50, 100); each starts
    /// `wait_secs` after the one before finished.
    Staged {
        percents: Vec<u8>,
        #[serde(default)]
        wait_secs: u64,
        #[serde(flatten)]
        guard: Guard,
    },
    /// A canary stage (the target's members of `group`, or `count` robots), then the rest,
    /// `wait_secs` after the canaries finished or, without it, when an operator approves.
    Canary {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_secs: Option<u64>,
        #[serde(flatten)]
        guard: Guard,
    },
}

/// When a staged or canary rollout stops itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Guard {
    /// More failures than this halt the deployment: no later stage starts.
    #[serde(default)]
    pub max_failures: FailureThreshold,
    /// A robot that neither reports nor polls for this long counts as failed.
    #[serde(default = "default_silence_timeout_secs")]
    pub silence_timeout_secs: u64,
    /// On halt, send the robots that took the release back to what they ran before.
    #[serde(default)]
    pub auto_rollback: bool,
}

fn default_silence_timeout_secs() -> u64 {
    30 * 60
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            max_failures: FailureThreshold::default(),
            silence_timeout_secs: default_silence_timeout_secs(),
            auto_rollback: false,
        }
    }
}

impl Strategy {
    /// How many stages the rollout has.
    pub fn stage_count(&self) -> u32 {
        match self {
            Strategy::Immediate => 1,
            Strategy::Staged { percents, .. } => percents.len().max(1) as u32,
            Strategy::Canary { .. } => 2,
        }
    }

    pub fn guard(&self) -> Option<&Guard> {
        match self {
            Strategy::Immediate => None,
            Strategy::Staged { guard, .. } | Strategy::Canary { guard, .. } => Some(guard),
        }
    }

    /// Seconds between one stage finishing and the next starting; `None`: on approval.
    pub fn wait_after_stage(&self) -> Option<u64> {
        match self {
            Strategy::Immediate => Some(0),
            Strategy::Staged { wait_secs, .. } => Some(*wait_secs),
            Strategy::Canary { wait_secs, .. } => *wait_secs,
        }
    }

    /// Rejects strategies that cannot run, with the reason.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Strategy::Immediate => Ok(()),
            Strategy::Staged { percents, .. } => {
                let rising = percents.windows(2).all(|pair| pair[0] < pair[1]);
                if percents.is_empty() || !rising || percents.last() != Some(&100) {
                    return Err(format!(
                        "stages {percents:?} must rise strictly and end at 100, like 10,50,100"
                    ));
                }
                if percents[0] == 0 {
                    return Err("the first stage must reach at least 1 percent".into());
                }
                Ok(())
            }
            Strategy::Canary { group, count, .. } => match (group, count) {
                (Some(_), None) | (None, Some(1..)) => Ok(()),
                _ => Err("a canary names either a group or a count of robots (at least 1)".into()),
            },
        }
    }
}

/// A failure budget: a count (`2`) or a percentage of the robots offered so far (`10%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureThreshold {
    Count(u32),
    Percent(u8),
}

impl Default for FailureThreshold {
    /// No failure is tolerated.
    fn default() -> Self {
        FailureThreshold::Count(0)
    }
}

impl FailureThreshold {
    /// Whether `failures` among `offered` robots is past the threshold.
    pub fn exceeded(self, failures: u64, offered: u64) -> bool {
        match self {
            FailureThreshold::Count(allowed) => failures > u64::from(allowed),
            FailureThreshold::Percent(percent) => failures * 100 > u64::from(percent) * offered,
        }
    }
}

impl FromStr for FailureThreshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("failure threshold {s:?} must be a count like 2 or a percentage like 10%");
        match s.strip_suffix('%') {
            Some(percent) => match percent.parse::<u8>() {
                Ok(p) if p <= 100 => Ok(FailureThreshold::Percent(p)),
                _ => Err(bad()),
            },
            None => s.parse().map(FailureThreshold::Count).map_err(|_| bad()),
        }
    }
}

impl fmt::Display for FailureThreshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureThreshold::Count(n) => write!(f, "{n}"),
            FailureThreshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for FailureThreshold {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FailureThreshold {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Count(n) => Ok(FailureThreshold::Count(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for FailureThreshold {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9]+%?$"))
            .description(Some("a count (`2`) or a percentage (`10%`)"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for FailureThreshold {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDeploymentRequest {
    /// Release id, or a version when exactly one release has it.
    pub release: String,
    pub target: DeploymentTarget,
    /// Defaults to the target environment's strategy, or `immediate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Offer the release even to robots that rolled back from it before.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Waiting for an operator other than its creator to approve it.
    AwaitingApproval,
    /// Some robots have not finished.
    Running,
    /// An operator paused it: robots that started finish, nobody new starts.
    Paused,
    /// Too many robots failed: no later stage starts. `retry` reopens it.
    Halted,
    /// An operator ended it; robots that had not started never will.
    Aborted,
    /// Every robot finished and none rolled back or failed.
    Succeeded,
    /// Every robot finished and at least one rolled back or failed.
    Failed,
    /// A newer deployment took over all of its unfinished robots.
    Superseded,
    /// Every robot finished and not one installed the release: all were skipped (they rolled
    /// back from it before) or cancelled. Not a success.
    NoRobotUpdated,
}

impl DeploymentState {
    pub const ALL: [DeploymentState; 9] = [
        Self::AwaitingApproval,
        Self::Running,
        Self::Paused,
        Self::Halted,
        Self::Aborted,
        Self::Succeeded,
        Self::Failed,
        Self::Superseded,
        Self::NoRobotUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::AwaitingApproval => "awaiting_approval",
            DeploymentState::Running => "running",
            DeploymentState::Paused => "paused",
            DeploymentState::Halted => "halted",
            DeploymentState::Aborted => "aborted",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::Failed => "failed",
            DeploymentState::Superseded => "superseded",
            DeploymentState::NoRobotUpdated => "no_robot_updated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Nothing more happens on its own (an operator may still retry a halted one).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            DeploymentState::AwaitingApproval | DeploymentState::Running | DeploymentState::Paused
        )
    }
}

/// An operator's verb on a deployment: `POST /api/v1/deployments/{id}/{verb}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeploymentVerb {
    Pause,
    Resume,
    Abort,
    /// Starts a deployment awaiting approval, or the next stage of one waiting for it.
    Approve,
    /// Offers the release again to the robots that failed or rolled back, and reopens a halted
    /// deployment.
    Retry,
}

impl DeploymentVerb {
    pub const ALL: [DeploymentVerb; 5] = [
        Self::Pause,
        Self::Resume,
        Self::Abort,
        Self::Approve,
        Self::Retry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentVerb::Pause => "pause",
            DeploymentVerb::Resume => "resume",
            DeploymentVerb::Abort => "abort",
            DeploymentVerb::Approve => "approve",
            DeploymentVerb::Retry => "retry",
        }
    }
}

impl FromStr for DeploymentVerb {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|verb| verb.as_str() == s)
            .ok_or_else(|| {
                format!("unknown verb {s:?}: expected pause, resume, abort, approve or retry")
            })
    }
}

/// How a deployment came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    #[default]
    Deploy,
    Rollback,
    Promote,
    /// Created on publish for the environment the release's branch maps to.
    Auto,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Deploy => "deploy",
            DeploymentKind::Rollback => "rollback",
            DeploymentKind::Promote => "promote",
            DeploymentKind::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Deploy, Self::Rollback, Self::Promote, Self::Auto]
            .into_iter()
            .find(|kind| kind.as_str() == s)
    }
}

/// One decision in a deployment's life: a stage started, a halt, an operator's verb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentLogEntry {
    pub at: String,
    /// `rollout` for the engine's own decisions, else the operator.
    pub actor: String,
    /// `created`, `stage_started`, `halted`, `paused`, `resumed`, `aborted`, `approved`, `retried`,
    /// `rollback_created`, `finished`.
    pub action: String,
    pub stage: Option<u32>,
    pub detail: Option<String>,
}

/// An environment: groups of robots and the rules their deployments follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Environment {
    pub name: String,
    /// Releases published from a branch mapped to this environment deploy themselves.
    pub auto_deploy: bool,
    /// Deployments wait for an approver who is not their creator.
    pub approval_required: bool,
    /// Robots install and reboot only inside this window of their local time.
    pub update_window: Option<crate::robot::UpdateWindow>,
    /// Used when a deployment names no strategy.
    pub strategy: Strategy,
    pub groups: Vec<String>,
}

/// A variable of an environment, delivered to its robots' apps (`EnvironmentFile`). A secret's
/// value is never answered after it is set: only its name and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvVar {
    pub name: String,
    pub secret: bool,
    /// Absent for a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// 1 when first set, one more at every change.
    pub version: u64,
    pub updated_at: String,
    pub updated_by: String,
}

/// `PUT /api/v1/environments/{name}/vars/{var}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetEnvVar {
    pub value: String,
    #[serde(default)]
    pub secret: bool,
}

/// A variable name as a systemd `EnvironmentFile` and a shell read it: a letter or `_`, then
/// letters, digits and `_`, at most 128 bytes. A value: one line (no newline or NUL), at most
/// 64 KiB.
pub fn validate_env_var(name: &str, value: &str) -> Result<(), String> {
    let valid_name = name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid_name {
        return Err(format!(
            "variable name {name:?}: use a letter or _ then letters, digits and _ (at most 128)"
        ));
    }
    if value.contains(['\n', '\r', '\0']) || value.len() > 64 << 10 {
        return Err(format!(
            "the value of {name} must be one line of at most 64 KiB"
        ));
    }
    Ok(())
}

/// `PUT /api/v1/environments/{name}`: creates or replaces an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnvironmentSpec {
    #[serde(default)]
    pub auto_deploy: bool,
    #[serde(default)]
    pub approval_required: bool,
    #[serde(default)]
    pub update_window: Option<crate::robot::UpdateWindow>,
    #[serde(default)]
    pub strategy: Strategy,
    /// Groups in this environment (created when missing; moved from another environment).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `POST /api/v1/environments/{from}/promote`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromoteRequest {
    /// The environment that gets what `from` runs now, under its own rules.
    pub to: String,
    /// Promote this app's release instead of the OS release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// `POST /api/v1/rollbacks`: new deployments of what the target ran at a point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackRequest {
    /// `2.1.0` or `v2.1.0`, `commit:abc123`, a time (`2026-11-24T10:00:00Z`, `2-hours-ago`,
    /// `90m`), or a deployment id (`dep_...`). Absent: the release each robot ran before
    /// its current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub target: DeploymentTarget,
    /// Offer at once instead of with the environment's strategy.
    #[serde(default)]
    pub immediate: bool,
    /// Only say where each robot would go; create nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Roll back this app's releases (to a kept release: no download) instead of the OS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// One robot's part in a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RobotAssignment {
    pub robot_id: String,
    pub state: AssignmentState,
    /// Rollout stage (0 for immediate deployments).
    pub stage: u32,
    /// Why it was skipped, the rollback reason, the failure, or download progress.
    pub detail: Option<String>,
    pub updated_at: String,
    /// Seconds from the deployment's creation to this robot's final state.
    pub finished_after_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    pub id: String,
    pub release_id: String,
    pub version: String,
    /// The app of an app release's deployment; absent for an OS release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub target: DeploymentTarget,
    pub strategy: Strategy,
    pub force: bool,
    pub state: DeploymentState,
    pub kind: DeploymentKind,
    pub environment: Option<String>,
    pub update_window: Option<crate::robot::UpdateWindow>,
    /// Stages offered so far are `0..=current_stage`, of `stage_count`.
    pub current_stage: u32,
    pub stage_count: u32,
    /// Why the deployment halted.
    pub halt_reason: Option<String>,
    /// Running, its current stage finished, and nothing but an operator's `approve` starts
    /// the next one (a canary without `wait_secs`). With `awaiting_approval`, the states in
    /// which an approve is what the deployment waits for.
    #[serde(default)]
    pub stage_awaits_approval: bool,
    pub approved_by: Option<String>,
    /// The deployment a rollback undoes.
    pub parent_id: Option<String>,
    pub created_by: String,
    pub created_at: String,
    /// Robots per assignment state.
    pub counts: BTreeMap<String, u64>,
    /// Per-robot status; present on single-deployment reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robots: Option<Vec<RobotAssignment>>,
    /// The rollout's decisions, oldest first; present on single-deployment reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Vec<DeploymentLogEntry>>,
}

/// A release as people write it: `v1.4.0` for an OS release, `nav@1.4.0` for an app's (the
/// form `rota deploy` takes).
pub fn release_label(app: Option<&str>, version: &str) -> String {
    match app {
        Some(app) => format!("{app}@{version}"),
        None => format!("v{version}"),
    }
}

impl Deployment {
    /// What it deploys, as [`release_label`] writes it.
    pub fn release_label(&self) -> String {
        release_label(self.app.as_deref(), &self.version)
    }
}

/// What `POST /api/v1/rollbacks` and promote did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackOutcome {
    /// Where the robots go: one entry per release.
    pub plan: Vec<RollbackGroup>,
    /// One deployment per entry of `plan`; empty on a dry run.
    pub deployments: Vec<Deployment>,
    /// Robots that already run the release they would go back to.
    pub unchanged: Vec<String>,
    /// Robots left alone, with the reason (no earlier release on record, ...).
    pub unresolved: Vec<UnresolvedRobot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackGroup {
    pub release_id: String,
    pub version: String,
    pub robots: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnresolvedRobot {
    pub robot_id: String,
    pub reason: String,
}

/// One line of a robot's history: an event it reported or an operator decision about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEntry {
    pub id: i64,
    pub robot_id: String,
    pub deployment_id: Option<String>,
    pub version: Option<String>,
    pub event: String,
    pub detail: Option<String>,
    pub at: String,
}

/// One operator action, as the append-only audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    /// `key:<id> (<name>)`, `robot:<id>`, or `server` for the bootstrap.
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub details: Option<serde_json::Value>,
    pub source_ip: Option<String>,
}

/// The fleet at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetStatus {
    pub robots: u64,
    pub robots_by_state: BTreeMap<String, u64>,
    pub robots_by_version: BTreeMap<String, u64>,
    pub releases: u64,
    pub running_deployments: Vec<Deployment>,
}

/// A `git push` that GitHub reported through the push webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GitPush {
    pub id: i64,
    /// GitHub's `X-GitHub-Delivery` id: a redelivery of the same push is recorded once.
    pub delivery_id: Option<String>,
    /// `owner/name`.
    pub repository: String,
    /// The full ref pushed, `refs/heads/main` or `refs/tags/v1.2.0`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The branch, for pushes to `refs/heads/...`.
    pub branch: Option<String>,
    /// Commit the ref pointed at before the push (all zeros for a new ref).
    pub before: String,
    /// Commit the ref points at after the push (all zeros for a deleted ref).
    pub after: String,
    /// GitHub login of who pushed.
    pub pusher: Option<String>,
    /// First line of the head commit's message.
    pub head_commit_message: Option<String>,
    /// Commits in the push, as GitHub counted them.
    pub commit_count: u64,
    pub received_at: String,
}

/// What the server did with one webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookReceipt {
    /// The `X-GitHub-Event` header: `push`, `ping`, ...
    pub event: String,
    /// `recorded`, `already_recorded` (a redelivery), `pong` or `ignored`.
    pub outcome: String,
    /// The push, for `push` deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<GitPush>,
}

/// How a robot came to run a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunOrigin {
    /// A deployment offered it and the robot booted it.
    Deployment {
        deployment_id: String,
        /// `deploy`, `rollback`, `promote` or `auto`; absent when the server does not know.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment_kind: Option<String>,
        created_by: String,
    },
    /// The robot went back to it by itself: the release `deployment_id` gave it rolled back or
    /// failed in its trial boot.
    RobotRollback {
        deployment_id: String,
        from_version: String,
    },
    /// The robot reported it in its slots and no deployment gave it (a factory image, a
    /// manual install).
    LocalInstall,
}

/// How a robot's run of a release ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunEnd {
    /// The robot still runs it.
    Running,
    /// Another release took over.
    Replaced { by_version: String, at: String },
    /// Its trial boot failed the health check and the robot went back.
    RolledBack { reason: String, at: String },
    /// The robot reported a failure after booting it.
    Failed { error: String, at: String },
}

impl RunEnd {
    /// When it ended; `None` while running.
    pub fn at(&self) -> Option<&str> {
        match self {
            RunEnd::Running => None,
            RunEnd::Replaced { at, .. }
            | RunEnd::RolledBack { at, .. }
            | RunEnd::Failed { at, .. } => Some(at),
        }
    }
}

/// One stretch of time during which a robot ran one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseRun {
    pub version: String,
    /// The release with that version, when the server has it (a local install may not).
    pub release_id: Option<String>,
    /// When the robot booted it (its trial boot, or when it reported it).
    pub started_at: String,
    /// When the robot committed it, for deployed releases that passed their trial.
    pub committed_at: Option<String>,
    pub origin: RunOrigin,
    pub end: RunEnd,
}

/// Every release one robot ran on one track, oldest first: its OS, or one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RobotReleaseHistory {
    pub robot_id: String,
    /// The app whose releases these are; absent: the robot's OS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub runs: Vec<ReleaseRun>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        for (text, target) in [
            ("all", DeploymentTarget::All),
            ("group:lab", DeploymentTarget::Group("lab".into())),
            ("robot:r-1", DeploymentTarget::Robot("r-1".into())),
            ("env:production", DeploymentTarget::Env("production".into())),
            (
                "robots:a,b",
                DeploymentTarget::Robots(vec!["a".into(), "b".into()]),
            ),
        ] {
            assert_eq!(text.parse::<DeploymentTarget>().unwrap(), target);
            assert_eq!(target.to_string(), text);
        }
        for bad in [
            "",
            "everything",
            "group:",
            "robot:",
            "fleet:x",
            "env:",
            "robots:a,,b",
        ] {
            assert!(bad.parse::<DeploymentTarget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Viewer < Role::Deployer && Role::Deployer < Role::Admin);
        assert_eq!("deployer".parse::<Role>().unwrap(), Role::Deployer);
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn deployment_request_defaults_to_immediate_unforced() {
        let req: CreateDeploymentRequest =
            serde_json::from_str(r#"{"release":"2.1.0","target":"group:lab"}"#).unwrap();
        assert_eq!(req.strategy, None);
        assert!(!req.force);
        assert_eq!(
            serde_json::to_value(Strategy::Immediate).unwrap(),
            serde_json::json!({"kind": "immediate"})
        );
    }

    #[test]
    fn strategies_read_their_guard_inline_and_validate() {
        let staged: Strategy = serde_json::from_value(serde_json::json!({
            "kind": "staged", "percents": [10, 50, 100], "wait_secs": 300,
            "max_failures": "10%", "auto_rollback": true
        }))
        .unwrap();
        let Strategy::Staged { guard, .. } = &staged else {
            panic!("{staged:?}")
        };
        assert_eq!(guard.max_failures, FailureThreshold::Percent(10));
        assert_eq!(guard.silence_timeout_secs, 1800);
        assert!(guard.auto_rollback);
        assert_eq!(staged.stage_count(), 3);
        staged.validate().unwrap();
        let round: Strategy =
            serde_json::from_value(serde_json::to_value(&staged).unwrap()).unwrap();
        assert_eq!(round, staged);
        let canary: Strategy =
            serde_json::from_str(r#"{"kind":"canary","count":2,"max_failures":1}"#).unwrap();
        assert_eq!(canary.wait_after_stage(), None);
        assert_eq!(
            canary.guard().unwrap().max_failures,
            FailureThreshold::Count(1)
        );
        for bad in [
            r#"{"kind":"staged","percents":[50,10,100]}"#,
            r#"{"kind":"staged","percents":[10,50]}"#,
            r#"{"kind":"staged","percents":[0,100]}"#,
            r#"{"kind":"canary"}"#,
            r#"{"kind":"canary","group":"lab","count":2}"#,
        ] {
            let strategy: Strategy = serde_json::from_str(bad).unwrap();
            assert!(strategy.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn failure_thresholds_count_or_percent() {
        assert!(!FailureThreshold::Count(0).exceeded(0, 10));
        assert!(FailureThreshold::Count(0).exceeded(1, 10));
        assert!(!FailureThreshold::Percent(10).exceeded(1, 10));
        assert!(FailureThreshold::Percent(10).exceeded(2, 10));
        assert!("10%".parse::<FailureThreshold>().is_ok());
        assert!("101%".parse::<FailureThreshold>().is_err());
        assert!("x".parse::<FailureThreshold>().is_err());
    }
}
