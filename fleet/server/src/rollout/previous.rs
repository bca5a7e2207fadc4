//! Which release a robot ran at some point: before a deployment, before its current release,
//! at a time; and the rollback deployments that send robots back there.

use std::collections::BTreeMap;

use rota_protocol::operator::{DeploymentKind, DeploymentTarget, Strategy};
use rota_protocol::robot::SlotsReport;
use sqlx::AnyConnection;

use super::engine::Rollout;
use super::{create_deployment, Created, NewDeployment, ReleaseRef, TargetRobot};
use crate::db::Backend;
use crate::error::{ApiError, ApiResult};

/// Where rollbacks send robots.
#[derive(Default)]
pub struct RollbackPlan {
    /// Robots per release they go back to, in release id order.
    pub by_release: Vec<(ReleaseRef, Vec<String>)>,
    /// Robots that already run the release they would go back to.
    pub unchanged: Vec<String>,
    /// Robots whose release could not be found, and why.
    pub unresolved: Vec<(String, String)>,
}

/// What `--to` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTo {
    /// The release each robot ran before its current one.
    Previous,
    Version(String),
    /// A git commit or a prefix of one.
    Commit(String),
    /// What the deployment deployed.
    Deployment(String),
    /// What each robot had committed at this time (unix ms).
    Time(i64),
}

impl RollbackTo {
    pub fn parse(text: Option<&str>, now_ms: i64) -> Result<Self, String> {
        let Some(text) = text.map(str::trim) else {
            return Ok(RollbackTo::Previous);
        };
        if let Some(commit) = text.strip_prefix("commit:") {
            let hex = commit.len() >= 4 && commit.bytes().all(|b| b.is_ascii_hexdigit());
            return match hex {
                true => Ok(RollbackTo::Commit(commit.to_ascii_lowercase())),
                false => Err(format!("commit {commit:?} must be at least 4 hex digits")),
            };
        }
        if text.starts_with("dep_") {
            return Ok(RollbackTo::Deployment(text.to_string()));
        }
        let version = text.strip_prefix('v').unwrap_or(text);
        if semver::Version::parse(version).is_ok() {
            return Ok(RollbackTo::Version(version.to_string()));
        }
        let at = crate::time::parse_point(text, now_ms).map_err(|_| {
            format!(
                "--to {text:?} is not a version (v2.1.0), commit:SHA, a deployment id (dep_...), \
                 a time (2026-11-24T10:00:00Z) or an age (2-hours-ago)"
            )
        })?;
        if at > now_ms {
            return Err(format!(
                "--to {text} is in the future ({}, the server's clock says {} now): a rollback \
                 goes back to what robots ran at a time that has passed",
                crate::time::rfc3339(at),
                crate::time::rfc3339(now_ms)
            ));
        }
        Ok(RollbackTo::Time(at))
    }
}

async fn release_ref(conn: &mut AnyConnection, id: &str) -> ApiResult<ReleaseRef> {
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT id, version, compatible FROM releases WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let (id, version, compatible) =
        row.ok_or_else(|| ApiError::internal(format!("release {id:?} vanished")))?;
    Ok(ReleaseRef {
        id,
        version,
        compatible,
    })
}

/// Releases the robot committed on one track (`app`: `None` for the OS), newest first, with
/// when and their version: an app release's commit is not the robot's OS version. Read from
/// the robot's own `committed` events, which deployment retention never deletes (it deletes
/// old deployments with their assignments), and which also count a commit of an assignment
/// an operator had moved past.
async fn committed_versions(
    conn: &mut AnyConnection,
    robot_id: &str,
    app: Option<&str>,
) -> ApiResult<Vec<(String, i64, String)>> {
    Ok(sqlx::query_as(
        "SELECT x.release_id, x.at, r.version FROM robot_events x
         JOIN releases r ON r.id = x.release_id
         WHERE x.robot_id = $1 AND x.event = 'committed' AND x.deployment_id IS NOT NULL
           AND COALESCE(r.app, '') = $2
         ORDER BY x.at DESC, x.id DESC",
    )
    .bind(robot_id)
    .bind(app.unwrap_or(""))
    .fetch_all(&mut *conn)
    .await?)
}

/// The version the robot runs: what it last reported, else its last commit through Rota.
async fn running_version(
    conn: &mut AnyConnection,
    robot_id: &str,
    history: &[(String, i64, String)],
) -> ApiResult<Option<String>> {
    let reported: Option<Option<String>> =
        sqlx::query_scalar("SELECT version FROM robots WHERE id = $1")
            .bind(robot_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(reported
        .flatten()
        .or_else(|| history.first().map(|(_, _, version)| version.clone())))
}

/// Whether `version` is lower than `than` (semver; an unreadable version is never lower).
fn is_lower(version: &str, than: &str) -> bool {
    match (
        semver::Version::parse(version.trim_start_matches('v')),
        semver::Version::parse(than.trim_start_matches('v')),
    ) {
        (Ok(version), Ok(than)) => version < than,
        _ => false,
    }
}

/// The release "previous" means for a robot running `current`: the newest release it
/// committed with a lower version. Not simply the one committed before the current one: after
/// a rollback from 2.1.0 to 2.0.0 that one is 2.1.0, and "previous" must never mean up.
fn previous_release(history: &[(String, i64, String)], current: &str) -> Option<String> {
    history
        .iter()
        .find(|(_, _, version)| is_lower(version, current))
        .map(|(release, _, _)| release.clone())
}

async fn release_version(conn: &mut AnyConnection, id: &str) -> ApiResult<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT version FROM releases WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Releases the robot committed on one track, newest first, with when.
async fn committed_history(
    conn: &mut AnyConnection,
    robot_id: &str,
    app: Option<&str>,
) -> ApiResult<Vec<(String, i64)>> {
    Ok(committed_versions(conn, robot_id, app)
        .await?
        .into_iter()
        .map(|(release, finished, _)| (release, finished))
        .collect())
}

/// The release in the slot the robot did not boot, from its last slot report.
async fn other_slot_release(
    conn: &mut AnyConnection,
    robot_id: &str,
    compatible: &str,
) -> ApiResult<Option<String>> {
    let report: Option<Option<String>> =
        sqlx::query_scalar("SELECT slots_json FROM robots WHERE id = $1")
            .bind(robot_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(report) = report
        .flatten()
        .and_then(|json| serde_json::from_str::<SlotsReport>(&json).ok())
    else {
        return Ok(None);
    };
    let Some(hash) = report
        .slots
        .iter()
        .find(|slot| slot.slot != report.booted && slot.state == "good")
        .and_then(|slot| slot.manifest_hash.clone())
    else {
        return Ok(None);
    };
    Ok(sqlx::query_scalar(
        "SELECT id FROM releases WHERE manifest_hash = $1 AND compatible = $2 AND app IS NULL",
    )
    .bind(hash)
    .bind(compatible)
    .fetch_optional(&mut *conn)
    .await?)
}

/// The release the robot runs now on one track, as far as the server knows.
async fn current_release(
    conn: &mut AnyConnection,
    robot_id: &str,
    app: Option<&str>,
) -> ApiResult<Option<String>> {
    Ok(committed_history(conn, robot_id, app)
        .await?
        .into_iter()
        .next()
        .map(|(release, _)| release))
}

/// The release of the deployment `id`.
async fn deployment_release(conn: &mut AnyConnection, id: &str) -> ApiResult<String> {
    let release: Option<String> =
        sqlx::query_scalar("SELECT release_id FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    release.ok_or_else(|| ApiError::not_found(format!("no deployment with id {id:?}")))
}

/// Where `robot` goes back to for `to`; `Err` says why nowhere.
async fn resolve_one(
    conn: &mut AnyConnection,
    robot: &TargetRobot,
    to: &RollbackTo,
    app: Option<&str>,
) -> ApiResult<Result<String, String>> {
    let history = committed_versions(conn, &robot.id, app).await?;
    let mut current_version = None;
    let found = match to {
        // An app has no slots: its previous release is the one committed before.
        RollbackTo::Previous if app.is_some() => {
            current_version = history.first().map(|(_, _, version)| version.clone());
            current_version
                .as_deref()
                .and_then(|current| previous_release(&history, current))
        }
        RollbackTo::Previous => {
            current_version = running_version(conn, &robot.id, &history).await?;
            let Some(current) = current_version.clone() else {
                return Ok(Err(
                    "no release on record: it never reported a version".into()
                ));
            };
            match previous_release(&history, &current) {
                Some(release) => Some(release),
                None => match other_slot_release(conn, &robot.id, &robot.compatible).await? {
                    Some(release) => release_version(conn, &release)
                        .await?
                        .filter(|version| is_lower(version, &current))
                        .map(|_| release),
                    None => None,
                },
            }
        }
        RollbackTo::Time(at) => history
            .iter()
            .find(|(_, finished, _)| finished <= at)
            .map(|(release, _, _)| release.clone()),
        RollbackTo::Version(version) => {
            sqlx::query_scalar(
                "SELECT id FROM releases
                 WHERE version = $1 AND compatible = $2 AND COALESCE(app, '') = $3",
            )
            .bind(version)
            .bind(&robot.compatible)
            .bind(app.unwrap_or(""))
            .fetch_optional(&mut *conn)
            .await?
        }
        RollbackTo::Commit(prefix) => {
            sqlx::query_scalar(
                "SELECT id FROM releases WHERE LOWER(git_commit) LIKE $1 AND compatible = $2
                   AND COALESCE(app, '') = $3
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(format!("{prefix}%"))
            .bind(&robot.compatible)
            .bind(app.unwrap_or(""))
            .fetch_optional(&mut *conn)
            .await?
        }
        RollbackTo::Deployment(id) => {
            let release = deployment_release(conn, id).await?;
            let compatible: Option<String> =
                sqlx::query_scalar("SELECT compatible FROM releases WHERE id = $1")
                    .bind(&release)
                    .fetch_optional(&mut *conn)
                    .await?;
            (compatible.as_deref() == Some(robot.compatible.as_str())).then_some(release)
        }
    };
    Ok(found.ok_or_else(|| match to {
        RollbackTo::Previous => format!(
            "no release older than v{} on record",
            current_version.as_deref().unwrap_or("?")
        ),
        RollbackTo::Time(_) => match history.last() {
            Some((_, first, version)) => format!(
                "its history starts later, at {} (v{version} committed)",
                crate::time::rfc3339(*first)
            ),
            None => "it has committed nothing through Rota yet".to_string(),
        },
        RollbackTo::Version(v) => format!("no release {v} for {}", robot.compatible),
        RollbackTo::Commit(c) => {
            format!("no release built from commit {c} for {}", robot.compatible)
        }
        RollbackTo::Deployment(d) => format!("{d} deployed a release for another board"),
    }))
}

/// Where each robot goes for `to` on one track (`app`: `None` for the OS), grouped by release.
pub async fn resolve(
    conn: &mut AnyConnection,
    robots: &[TargetRobot],
    to: &RollbackTo,
    app: Option<&str>,
) -> ApiResult<RollbackPlan> {
    let mut plan = RollbackPlan::default();
    let mut by_release: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for robot in robots {
        match resolve_one(conn, robot, to, app).await? {
            Ok(release)
                if current_release(conn, &robot.id, app).await? == Some(release.clone()) =>
            {
                plan.unchanged.push(robot.id.clone());
            }
            Ok(release) => by_release
                .entry(release)
                .or_default()
                .push(robot.id.clone()),
            Err(why) => plan.unresolved.push((robot.id.clone(), why)),
        }
    }
    for (release, robots) in by_release {
        plan.by_release
            .push((release_ref(conn, &release).await?, robots));
    }
    Ok(plan)
}

/// Where robots that took `rollout`'s release go back to: what each committed before it.
pub(crate) async fn before_deployment(
    conn: &mut AnyConnection,
    robot_ids: &[String],
    rollout: &Rollout,
) -> ApiResult<RollbackPlan> {
    let mut plan = RollbackPlan::default();
    let mut by_release: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // The rollout's own track: an app rollout goes back to the app's earlier release.
    let app: Option<String> = sqlx::query_scalar("SELECT app FROM releases WHERE id = $1")
        .bind(&rollout.release_id)
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
    for robot in robot_ids {
        let earlier = committed_history(conn, robot, app.as_deref())
            .await?
            .into_iter()
            .find(|(release, finished)| {
                *finished < rollout.created_at && *release != rollout.release_id
            })
            .map(|(release, _)| release);
        let earlier = match earlier {
            Some(release) => Some(release),
            None => {
                let compatible: String =
                    sqlx::query_scalar("SELECT compatible FROM robots WHERE id = $1")
                        .bind(robot)
                        .fetch_one(&mut *conn)
                        .await?;
                other_slot_release(conn, robot, &compatible)
                    .await?
                    .filter(|release| *release != rollout.release_id)
            }
        };
        match earlier {
            Some(release) => by_release.entry(release).or_default().push(robot.clone()),
            None => plan
                .unresolved
                .push((robot.clone(), "no earlier release on record".into())),
        }
    }
    for (release, robots) in by_release {
        plan.by_release
            .push((release_ref(conn, &release).await?, robots));
    }
    Ok(plan)
}

/// A deployment sending `robots` back to `release`: downgrades allowed, no approval gate.
pub async fn create_rollback(
    conn: &mut AnyConnection,
    backend: Backend,
    release: &ReleaseRef,
    robots: Vec<String>,
    strategy: Option<Strategy>,
    parent_id: Option<String>,
    actor: &str,
) -> ApiResult<Created> {
    create_deployment(
        conn,
        backend,
        NewDeployment {
            release: release.clone(),
            target: DeploymentTarget::Robots(robots),
            strategy: Some(strategy.unwrap_or(Strategy::Immediate)),
            // What a robot ran before is not on its denylist; force covers a release it once
            // rolled back from and later committed after all.
            force: true,
            created_by: actor.to_string(),
            kind: DeploymentKind::Rollback,
            parent_id,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_never_means_a_newer_release() {
        // Newest first: rolled back from 2.1.0 to 2.0.0, which it had run before 2.1.0.
        let history = [
            ("rel_200b".to_string(), 30, "2.0.0".to_string()),
            ("rel_210".to_string(), 20, "2.1.0".to_string()),
            ("rel_200".to_string(), 10, "2.0.0".to_string()),
            ("rel_190".to_string(), 5, "1.9.0".to_string()),
        ];
        assert_eq!(previous_release(&history, "2.0.0"), Some("rel_190".into()));
        assert_eq!(previous_release(&history, "2.1.0"), Some("rel_200b".into()));
        assert_eq!(previous_release(&history[..3], "2.0.0"), None);
        assert!(is_lower("2.0.0", "v2.1.0") && !is_lower("2.1.0", "2.0.0"));
        assert!(!is_lower("2.0.0-rc.1", "junk"));
    }

    #[test]
    fn a_time_in_the_future_is_refused() {
        let now = 10_000_000;
        let err = RollbackTo::parse(Some("2999-01-01T00:00:00Z"), now).unwrap_err();
        assert!(err.contains("in the future"), "{err}");
    }

    #[test]
    fn rollback_targets_parse() {
        let now = 10_000_000;
        let parse = |text| RollbackTo::parse(Some(text), now).unwrap();
        assert_eq!(RollbackTo::parse(None, now).unwrap(), RollbackTo::Previous);
        assert_eq!(parse("v2.1.0"), RollbackTo::Version("2.1.0".into()));
        assert_eq!(
            parse("2.1.0-rc.1"),
            RollbackTo::Version("2.1.0-rc.1".into())
        );
        assert_eq!(parse("commit:ABC123"), RollbackTo::Commit("abc123".into()));
        assert_eq!(parse("dep_0011"), RollbackTo::Deployment("dep_0011".into()));
        assert_eq!(parse("2-hours-ago"), RollbackTo::Time(now - 7_200_000));
        for bad in ["commit:xyz", "commit:ab", "last tuesday"] {
            assert!(RollbackTo::parse(Some(bad), now).is_err(), "{bad}");
        }
    }
}
