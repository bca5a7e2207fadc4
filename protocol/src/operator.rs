//! What operators (the `rota` CLI, CI, the dashboard) and the fleet server exchange.
//! Times are RFC 3339 strings in UTC.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::robot::{AssignmentState, SlotsReport};

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Group {
    pub name: String,
    pub robots: Vec<String>,
}

/// Which robots a deployment is for, written `all`, `group:NAME` or `robot:ID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeploymentTarget {
    All,
    Group(String),
    Robot(String),
}

impl FromStr for DeploymentTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "all" => Ok(DeploymentTarget::All),
            Some(("group", name)) if !name.is_empty() => Ok(DeploymentTarget::Group(name.into())),
            Some(("robot", id)) if !id.is_empty() => Ok(DeploymentTarget::Robot(id.into())),
            _ => Err(format!("target {s:?} must be all, group:NAME or robot:ID")),
        }
    }
}

impl fmt::Display for DeploymentTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeploymentTarget::All => f.write_str("all"),
            DeploymentTarget::Group(name) => write!(f, "group:{name}"),
            DeploymentTarget::Robot(id) => write!(f, "robot:{id}"),
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
            .pattern(Some("^(all|group:.+|robot:.+)$"))
            .description(Some("`all`, `group:NAME` or `robot:ID`"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for DeploymentTarget {}

/// How a deployment reaches its robots. Only `immediate` exists now; staged and canary rollouts
/// add variants here and decide per-robot `stage` numbers when assignments are created.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    /// Every target robot is offered the release at once.
    #[default]
    Immediate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDeploymentRequest {
    /// Release id, or a version when exactly one release has it.
    pub release: String,
    pub target: DeploymentTarget,
    #[serde(default)]
    pub strategy: Strategy,
    /// Offer the release even to robots that rolled back from it before.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Some robots have not finished.
    Running,
    /// Every robot finished and none rolled back or failed.
    Succeeded,
    /// Every robot finished and at least one rolled back or failed.
    Failed,
    /// A newer deployment took over all of its unfinished robots.
    Superseded,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Running => "running",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::Failed => "failed",
            DeploymentState::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Superseded,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        self != DeploymentState::Running
    }
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
    pub target: DeploymentTarget,
    pub strategy: Strategy,
    pub force: bool,
    pub state: DeploymentState,
    pub created_by: String,
    pub created_at: String,
    /// Robots per assignment state.
    pub counts: BTreeMap<String, u64>,
    /// Per-robot status; present on single-deployment reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robots: Option<Vec<RobotAssignment>>,
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

/// Every release one robot ran, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RobotReleaseHistory {
    pub robot_id: String,
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
        ] {
            assert_eq!(text.parse::<DeploymentTarget>().unwrap(), target);
            assert_eq!(target.to_string(), text);
        }
        for bad in ["", "everything", "group:", "robot:", "fleet:x"] {
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
        assert_eq!(req.strategy, Strategy::Immediate);
        assert!(!req.force);
        assert_eq!(
            serde_json::to_value(&req.strategy).unwrap(),
            serde_json::json!({"kind": "immediate"})
        );
    }
}
