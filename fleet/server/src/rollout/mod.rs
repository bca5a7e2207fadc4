//! The deployment engine: which robots a deployment reaches, what each robot is offered, how
//! robots' reports move their assignment, and when a stage starts, a rollout halts or a
//! deployment is over.
//!
//! A deployment has a [`Strategy`] and one assignment row per target robot with its `stage`
//! ([`stages`]). An assignment is offered to its robot while its state is one of
//! [`AssignmentState::is_offered`]; later stages wait in `waiting` until [`engine`] releases
//! them by flipping them to `pending` and waking the robots. A robot has at most one offered
//! assignment: releasing it supersedes the robot's older ones.
//!
//! Every function here runs inside the caller's write transaction, so a deployment and its
//! assignments, or an event and its effects, land together or not at all. Decisions about one
//! deployment take its row lock first (PostgreSQL) or the writer turn (SQLite), and stage
//! advances are compare-and-set on `current_stage`, so server replicas sharing a database never
//! take the same decision twice.

pub mod engine;
pub mod join;
pub mod previous;
pub mod stages;
pub mod verbs;

use std::collections::BTreeMap;

use rota_protocol::operator::{DeploymentKind, DeploymentState, DeploymentTarget, Strategy};
use rota_protocol::robot::{AssignmentState, RobotEvent, UpdateWindow};
use sqlx::AnyConnection;

use crate::db::Backend;
use crate::error::{ApiError, ApiResult};
use crate::inventory;
use crate::time::now_ms;

/// The states in which an assignment is offered to its robot, as SQL.
pub const OFFERED_STATES_SQL: &str =
    "('pending','downloading','installing','installed','rebooting','trial')";

/// What [`create_deployment`] needs to know about the release.
#[derive(Debug, Clone)]
pub struct ReleaseRef {
    pub id: String,
    pub version: String,
    pub compatible: String,
}

pub struct NewDeployment {
    pub release: ReleaseRef,
    pub target: DeploymentTarget,
    /// `None`: the environment's strategy, or immediate.
    pub strategy: Option<Strategy>,
    pub force: bool,
    pub created_by: String,
    pub kind: DeploymentKind,
    /// The deployment a rollback undoes.
    pub parent_id: Option<String>,
}

/// Outcome of creating a deployment.
pub struct Created {
    pub deployment_id: String,
    /// Robots with a new offer: wake their long-polls after commit.
    pub offered: Vec<String>,
    pub skipped: usize,
}

pub struct TargetRobot {
    pub id: String,
    pub compatible: String,
    pub approved: bool,
}

type RobotRow = (String, String, i64);

async fn robots_where(
    conn: &mut AnyConnection,
    condition: &str,
    value: &str,
) -> ApiResult<Vec<RobotRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT r.id, r.compatible, r.approved FROM robots r WHERE {condition} ORDER BY r.id"
    ))
    .bind(value)
    .fetch_all(&mut *conn)
    .await?)
}

fn facts_rows(robots: Vec<inventory::RobotFacts>) -> Vec<RobotRow> {
    robots
        .into_iter()
        .map(|robot| (robot.id, robot.compatible, i64::from(robot.approved)))
        .collect()
}

pub async fn target_robots(
    conn: &mut AnyConnection,
    target: &DeploymentTarget,
) -> ApiResult<Vec<TargetRobot>> {
    let rows = match target {
        DeploymentTarget::All => robots_where(conn, "$1 = ''", "").await?,
        DeploymentTarget::Group(name) => match inventory::group_kind(conn, name).await? {
            None => return Err(ApiError::not_found(format!("no group named {name:?}"))),
            // Dynamic: whoever matches now, at deploy time.
            Some(Some(query)) => facts_rows(inventory::matching(conn, &query).await?),
            Some(None) => {
                robots_where(
                    conn,
                    "r.id IN (SELECT robot_id FROM group_members WHERE group_name = $1)",
                    name,
                )
                .await?
            }
        },
        DeploymentTarget::Env(name) => {
            environment_rules(conn, name).await?;
            let mut rows = robots_where(
                conn,
                "r.id IN (SELECT m.robot_id FROM group_members m
                          JOIN robot_groups g ON g.name = m.group_name WHERE g.environment = $1)",
                name,
            )
            .await?;
            let dynamic: Vec<(String, String)> = sqlx::query_as(
                "SELECT name, member_query FROM robot_groups
                 WHERE environment = $1 AND member_query IS NOT NULL",
            )
            .bind(name)
            .fetch_all(&mut *conn)
            .await?;
            if !dynamic.is_empty() {
                // The fleet's facts once, whatever the number of dynamic groups.
                let queries = dynamic
                    .iter()
                    .map(|(group, text)| inventory::parse_stored(group, text))
                    .collect::<ApiResult<Vec<_>>>()?;
                let matched = inventory::facts(conn, None)
                    .await?
                    .into_iter()
                    .filter(|robot| queries.iter().any(|query| query.matches(&robot.facts())))
                    .collect();
                rows.extend(facts_rows(matched));
            }
            rows.sort();
            rows.dedup();
            rows
        }
        DeploymentTarget::Robot(id) => {
            let rows = robots_where(conn, "r.id = $1", id).await?;
            if rows.is_empty() {
                return Err(ApiError::not_found(format!("no robot with id {id:?}")));
            }
            rows
        }
        DeploymentTarget::Robots(ids) => {
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                let found = robots_where(conn, "r.id = $1", id).await?;
                if found.is_empty() {
                    return Err(ApiError::not_found(format!("no robot with id {id:?}")));
                }
                rows.extend(found);
            }
            rows
        }
    };
    Ok(rows
        .into_iter()
        .map(|(id, compatible, approved)| TargetRobot {
            id,
            compatible,
            approved: approved != 0,
        })
        .collect())
}

/// What an environment imposes on its deployments.
pub(crate) struct EnvironmentRules {
    pub name: String,
    pub approval_required: bool,
    pub update_window: Option<UpdateWindow>,
    pub strategy: Strategy,
}

pub(crate) async fn environment_rules(
    conn: &mut AnyConnection,
    name: &str,
) -> ApiResult<EnvironmentRules> {
    let row: Option<(i64, Option<String>, String)> = sqlx::query_as(
        "SELECT approval_required, update_window, strategy FROM environments WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    let (approval_required, window, strategy) =
        row.ok_or_else(|| ApiError::not_found(format!("no environment named {name:?}")))?;
    Ok(EnvironmentRules {
        name: name.to_string(),
        approval_required: approval_required != 0,
        update_window: window
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(ApiError::internal)?,
        strategy: serde_json::from_str(&strategy).map_err(ApiError::internal)?,
    })
}

/// The environment whose rules a deployment to `target` follows: the named one, or the one
/// every group involved belongs to.
pub(crate) async fn environment_of(
    conn: &mut AnyConnection,
    target: &DeploymentTarget,
) -> ApiResult<Option<EnvironmentRules>> {
    let names: Vec<Option<String>> = match target {
        DeploymentTarget::Env(name) => vec![Some(name.clone())],
        DeploymentTarget::Group(name) => {
            sqlx::query_scalar("SELECT environment FROM robot_groups WHERE name = $1")
                .bind(name)
                .fetch_all(&mut *conn)
                .await?
        }
        DeploymentTarget::Robot(id) => {
            sqlx::query_scalar(
                "SELECT DISTINCT g.environment FROM robot_groups g
                 JOIN group_members m ON m.group_name = g.name WHERE m.robot_id = $1",
            )
            .bind(id)
            .fetch_all(&mut *conn)
            .await?
        }
        DeploymentTarget::All | DeploymentTarget::Robots(_) => Vec::new(),
    };
    let mut names: Vec<String> = names.into_iter().flatten().collect();
    names.sort();
    names.dedup();
    match names.as_slice() {
        [one] => Ok(Some(environment_rules(conn, one).await?)),
        _ => Ok(None),
    }
}

/// Why `robot` must not be offered `release`, if it must not.
pub(crate) async fn skip_reason(
    conn: &mut AnyConnection,
    robot: &TargetRobot,
    release: &ReleaseRef,
    force: bool,
) -> ApiResult<Option<String>> {
    if !robot.approved {
        return Ok(Some("robot is waiting for approval".into()));
    }
    if robot.compatible != release.compatible {
        return Ok(Some(format!(
            "robot is {:?}, release is for {:?}",
            robot.compatible, release.compatible
        )));
    }
    if force {
        return Ok(None);
    }
    let blocked: Option<String> = sqlx::query_scalar(
        "SELECT reason FROM robot_release_blocks WHERE robot_id = $1 AND release_id = $2",
    )
    .bind(&robot.id)
    .bind(&release.id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(blocked.map(|reason| {
        format!("robot rolled back from this release before ({reason}); deploy with force to retry")
    }))
}

/// Whether `robot_id` is in the strategy's canary group.
pub(crate) async fn in_canary_group(
    conn: &mut AnyConnection,
    strategy: &Strategy,
    robot_id: &str,
) -> ApiResult<bool> {
    let Strategy::Canary {
        group: Some(group), ..
    } = strategy
    else {
        return Ok(false);
    };
    inventory::group_contains(conn, group, robot_id).await
}

pub async fn create_deployment(
    conn: &mut AnyConnection,
    backend: Backend,
    new: NewDeployment,
) -> ApiResult<Created> {
    let robots = target_robots(conn, &new.target).await?;
    if robots.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "target {} has no robots",
            new.target
        )));
    }
    let environment = environment_of(conn, &new.target).await?;
    let strategy = new
        .strategy
        .clone()
        .or_else(|| environment.as_ref().map(|env| env.strategy.clone()))
        .unwrap_or_default();
    strategy.validate().map_err(ApiError::unprocessable)?;
    // Rollbacks are the way out of trouble: they follow the strategy, not the approval gate.
    let needs_approval = environment
        .as_ref()
        .is_some_and(|env| env.approval_required)
        && new.kind != DeploymentKind::Rollback;
    let state = if needs_approval {
        DeploymentState::AwaitingApproval
    } else {
        DeploymentState::Running
    };
    let now = now_ms();
    let deployment_id = format!("dep_{}", crate::secrets::random_hex(8));

    let mut eligible = Vec::new();
    let mut skipped = Vec::new();
    for robot in &robots {
        match skip_reason(conn, robot, &new.release, new.force).await? {
            Some(reason) => skipped.push((robot.id.clone(), reason)),
            None => {
                let canary = in_canary_group(conn, &strategy, &robot.id).await?;
                eligible.push((robot.id.clone(), canary));
            }
        }
    }
    let members: Vec<stages::Member> = eligible
        .iter()
        .map(|(id, canary)| stages::Member {
            id,
            in_canary_group: *canary,
        })
        .collect();
    let planned = stages::plan(&strategy, &deployment_id, &members);
    if !eligible.is_empty() && !planned.contains(&0) {
        return Err(ApiError::unprocessable(format!(
            "the canary stage would be empty: no robot of {} is in the canary group",
            new.target
        )));
    }

    sqlx::query(
        "INSERT INTO deployments (id, release_id, target, strategy, forced, state, created_by,
                                  created_at, kind, environment, update_window, stage_count,
                                  current_stage, parent_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13)",
    )
    .bind(&deployment_id)
    .bind(&new.release.id)
    .bind(new.target.to_string())
    .bind(serde_json::to_string(&strategy).map_err(ApiError::internal)?)
    .bind(i64::from(new.force))
    .bind(state.as_str())
    .bind(&new.created_by)
    .bind(now)
    .bind(new.kind.as_str())
    .bind(environment.as_ref().map(|env| env.name.clone()))
    .bind(
        environment
            .as_ref()
            .and_then(|env| env.update_window.as_ref())
            .map(serde_json::to_string)
            .transpose()
            .map_err(ApiError::internal)?,
    )
    .bind(i64::from(strategy.stage_count()))
    .bind(&new.parent_id)
    .execute(&mut *conn)
    .await?;
    log(conn, &deployment_id, &new.created_by, "created", None, None).await?;

    for ((robot_id, _), stage) in eligible.iter().zip(&planned) {
        insert_assignment(
            conn,
            &deployment_id,
            robot_id,
            &new.release.id,
            *stage,
            AssignmentState::Waiting,
            None,
        )
        .await?;
    }
    for (robot_id, reason) in &skipped {
        insert_assignment(
            conn,
            &deployment_id,
            robot_id,
            &new.release.id,
            0,
            AssignmentState::Skipped,
            Some(reason),
        )
        .await?;
    }
    let offered = if state == DeploymentState::Running {
        engine::start_stage(conn, backend, &deployment_id, 0, "rollout").await?
    } else {
        Vec::new()
    };
    engine::evaluate(conn, backend, &deployment_id).await?;
    Ok(Created {
        deployment_id,
        offered,
        skipped: skipped.len(),
    })
}

pub(crate) async fn insert_assignment(
    conn: &mut AnyConnection,
    deployment_id: &str,
    robot_id: &str,
    release_id: &str,
    stage: u32,
    state: AssignmentState,
    detail: Option<&str>,
) -> ApiResult<()> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO assignments
           (deployment_id, robot_id, release_id, stage, state, detail, created_at, updated_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(deployment_id)
    .bind(robot_id)
    .bind(release_id)
    .bind(i64::from(stage))
    .bind(state.as_str())
    .bind(detail)
    .bind(now)
    .bind(now)
    .bind(state.is_final().then_some(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The same track as deployment `$2`: the OS, or one app. A robot runs one deployment per
/// track; an app deployment leaves the robot's OS deployment alone, and the other way round.
const SAME_TRACK_SQL: &str = "COALESCE((SELECT r.app FROM releases r WHERE r.id = assignments.release_id), '')
     = COALESCE((SELECT r.app FROM releases r JOIN deployments d ON d.release_id = r.id WHERE d.id = $2), '')";

/// Offers `robot_id` its waiting assignment in `deployment_id`, ending its offers elsewhere on
/// the same track (a newer decision takes the robot over); returns the other deployments
/// touched.
pub(crate) async fn offer(
    conn: &mut AnyConnection,
    deployment_id: &str,
    robot_id: &str,
) -> ApiResult<Vec<String>> {
    let now = now_ms();
    let touched: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT deployment_id FROM assignments
         WHERE robot_id = $1 AND deployment_id <> $2 AND (state IN {OFFERED_STATES_SQL} OR state = 'waiting')
           AND {SAME_TRACK_SQL}"
    ))
    .bind(robot_id)
    .bind(deployment_id)
    .fetch_all(&mut *conn)
    .await?;
    if !touched.is_empty() {
        sqlx::query(&format!(
            "UPDATE assignments SET state = 'superseded', detail = 'a newer deployment took this robot over',
               updated_at = $3, finished_at = $3
             WHERE robot_id = $1 AND deployment_id <> $2 AND (state IN {OFFERED_STATES_SQL} OR state = 'waiting')
               AND {SAME_TRACK_SQL}"
        ))
        .bind(robot_id)
        .bind(deployment_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE assignments SET state = 'pending', detail = NULL, updated_at = $1
         WHERE deployment_id = $2 AND robot_id = $3 AND state = 'waiting'",
    )
    .bind(now)
    .bind(deployment_id)
    .bind(robot_id)
    .execute(&mut *conn)
    .await?;
    Ok(touched)
}

/// Serialises the transactions that change one deployment's assignments, so the last one to
/// recount sees every other's committed change and two replicas never decide at once. Without
/// it, two robots committing at once on PostgreSQL (READ COMMITTED) each count the other as
/// unfinished and the deployment never ends. SQLite needs nothing: write transactions already
/// take turns.
pub(crate) async fn lock_deployment(
    conn: &mut AnyConnection,
    backend: Backend,
    id: &str,
) -> ApiResult<()> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT id FROM deployments WHERE id = $1 FOR UPDATE")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Appends one decision to the deployment's log.
pub(crate) async fn log(
    conn: &mut AnyConnection,
    deployment_id: &str,
    actor: &str,
    action: &str,
    stage: Option<u32>,
    detail: Option<&str>,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO deployment_log (deployment_id, at, actor, action, stage, detail)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(deployment_id)
    .bind(now_ms())
    .bind(actor)
    .bind(action)
    .bind(stage.map(i64::from))
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn assignment_counts(
    conn: &mut AnyConnection,
    deployment_id: &str,
) -> ApiResult<BTreeMap<String, u64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, COUNT(*) FROM assignments WHERE deployment_id = $1 GROUP BY state",
    )
    .bind(deployment_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(state, n)| (state, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// What the robot state column shows after `event`.
fn robot_state_after(event: &RobotEvent) -> &'static str {
    match event {
        RobotEvent::Committed => "idle",
        other => other.name(),
    }
}

/// Applies a robot's report about one of its assignments; returns robots whose offers changed
/// as a consequence (a stage started), to wake after commit.
pub async fn apply_event(
    conn: &mut AnyConnection,
    backend: Backend,
    robot_id: &str,
    deployment_id: &str,
    event: &RobotEvent,
) -> ApiResult<Vec<String>> {
    // Taken first, so repeated reports of one robot are applied one after the other too.
    lock_deployment(conn, backend, deployment_id).await?;
    let row: Option<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT a.state, a.release_id, r.version, r.app FROM assignments a
         JOIN releases r ON r.id = a.release_id
         WHERE a.deployment_id = $1 AND a.robot_id = $2",
    )
    .bind(deployment_id)
    .bind(robot_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (current, release_id, version, app) = row.ok_or_else(|| {
        ApiError::not_found(format!(
            "robot {robot_id} has no assignment in deployment {deployment_id:?}"
        ))
    })?;
    let current = AssignmentState::parse(&current).ok_or_else(|| {
        ApiError::internal(format!(
            "unknown assignment state {current:?} in the database"
        ))
    })?;
    let next = event.state();
    let now = now_ms();

    if current.is_final() && current != next {
        let operator_ended = matches!(
            current,
            AssignmentState::Superseded | AssignmentState::Cancelled
        );
        if !operator_ended {
            return Err(ApiError::conflict(format!(
                "assignment of {robot_id} in {deployment_id} already ended as {current}; cannot become {next}"
            )));
        }
        // The operator moved on, but what happened on the robot is still true: keep it in the
        // history and the robot's state, leave the assignment as it is.
    } else if current != next
        || matches!(
            event,
            RobotEvent::Downloading { .. } | RobotEvent::WaitingForWindow { .. }
        )
    {
        let detail = event.detail();
        sqlx::query(
            "UPDATE assignments SET state = $1, detail = $2, updated_at = $3, finished_at = $4
             WHERE deployment_id = $5 AND robot_id = $6",
        )
        .bind(next.as_str())
        .bind(detail)
        .bind(now)
        .bind(next.is_final().then_some(now))
        .bind(deployment_id)
        .bind(robot_id)
        .execute(&mut *conn)
        .await?;
    } else {
        // A repeated report (the robot retried after a lost answer): already applied.
        return Ok(Vec::new());
    }

    if let RobotEvent::RolledBack { reason } = event {
        sqlx::query(
            "INSERT INTO robot_release_blocks (robot_id, release_id, reason, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (robot_id, release_id) DO NOTHING",
        )
        .bind(robot_id)
        .bind(&release_id)
        .bind(reason)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO robot_events (robot_id, deployment_id, release_id, event, detail, at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(robot_id)
    .bind(deployment_id)
    .bind(&release_id)
    .bind(event.name())
    .bind(event.detail())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let progress = match event {
        RobotEvent::Downloading {
            bytes_done,
            bytes_total,
        } if *bytes_total > 0 => Some(
            i64::try_from(bytes_done.saturating_mul(100) / bytes_total)
                .unwrap_or(100)
                .min(100),
        ),
        _ => None,
    };
    // The robot's version is its OS's: an app release's commit leaves it (the inventory
    // names the apps).
    if matches!(event, RobotEvent::Committed) && app.is_none() {
        sqlx::query("UPDATE robots SET state = $1, progress = NULL, version = $2 WHERE id = $3")
            .bind(robot_state_after(event))
            .bind(&version)
            .bind(robot_id)
            .execute(&mut *conn)
            .await?;
    } else {
        sqlx::query("UPDATE robots SET state = $1, progress = $2 WHERE id = $3")
            .bind(robot_state_after(event))
            .bind(progress)
            .bind(robot_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(engine::evaluate(conn, backend, deployment_id)
        .await?
        .offered)
}
