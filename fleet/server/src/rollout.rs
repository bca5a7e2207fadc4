//! The deployment engine: which robots a deployment reaches, what each robot is offered, how
//! robots' reports move their assignment, and when a deployment is over.
//!
//! A deployment has a [`Strategy`] and one assignment row per target robot. An assignment is
//! offered to its robot while its state is one of [`AssignmentState::is_offered`]; rollout
//! strategies keep later stages in `waiting` (with a `stage` number) and release them by
//! flipping them to `pending` and waking the robots. A robot has at most one offered
//! assignment: a new deployment supersedes the robot's older ones.
//!
//! Every function here runs inside the caller's write transaction, so a deployment and its
//! assignments, or an event and its effects, land together or not at all.

use std::collections::BTreeMap;

use rota_protocol::operator::{DeploymentState, DeploymentTarget, Strategy};
use rota_protocol::robot::{AssignmentState, RobotEvent};
use sqlx::AnyConnection;

use crate::db::Backend;
use crate::error::{ApiError, ApiResult};
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
    pub strategy: Strategy,
    pub force: bool,
    pub created_by: String,
}

/// Outcome of creating a deployment.
pub struct Created {
    pub deployment_id: String,
    /// Robots with a new offer: wake their long-polls after commit.
    pub offered: Vec<String>,
    pub skipped: usize,
}

struct TargetRobot {
    id: String,
    compatible: String,
    approved: bool,
}

async fn target_robots(
    conn: &mut AnyConnection,
    target: &DeploymentTarget,
) -> ApiResult<Vec<TargetRobot>> {
    let rows: Vec<(String, String, i64)> = match target {
        DeploymentTarget::All => {
            sqlx::query_as("SELECT id, compatible, approved FROM robots ORDER BY id")
                .fetch_all(&mut *conn)
                .await?
        }
        DeploymentTarget::Group(name) => {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT name FROM robot_groups WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *conn)
                    .await?;
            if exists.is_none() {
                return Err(ApiError::not_found(format!("no group named {name:?}")));
            }
            sqlx::query_as(
                "SELECT r.id, r.compatible, r.approved FROM robots r
                 JOIN group_members m ON m.robot_id = r.id WHERE m.group_name = $1 ORDER BY r.id",
            )
            .bind(name)
            .fetch_all(&mut *conn)
            .await?
        }
        DeploymentTarget::Robot(id) => {
            let rows: Vec<(String, String, i64)> =
                sqlx::query_as("SELECT id, compatible, approved FROM robots WHERE id = $1")
                    .bind(id)
                    .fetch_all(&mut *conn)
                    .await?;
            if rows.is_empty() {
                return Err(ApiError::not_found(format!("no robot with id {id:?}")));
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

/// Why `robot` must not be offered `release`, if it must not.
async fn skip_reason(
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
    let now = now_ms();
    let deployment_id = format!("dep_{}", crate::secrets::random_hex(8));
    let strategy = serde_json::to_string(&new.strategy).map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO deployments (id, release_id, target, strategy, forced, state, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&deployment_id)
    .bind(&new.release.id)
    .bind(new.target.to_string())
    .bind(strategy)
    .bind(i64::from(new.force))
    .bind(DeploymentState::Running.as_str())
    .bind(&new.created_by)
    .bind(now)
    .execute(&mut *conn)
    .await?;

    let mut offered = Vec::new();
    let mut skipped = 0;
    let mut superseded_deployments = Vec::new();
    for robot in &robots {
        let reason = skip_reason(conn, robot, &new.release, new.force).await?;
        let (state, finished) = match &reason {
            Some(_) => (AssignmentState::Skipped, Some(now)),
            None => (AssignmentState::Pending, None),
        };
        if reason.is_none() {
            superseded_deployments.extend(supersede_offers(conn, &robot.id, now).await?);
            offered.push(robot.id.clone());
        } else {
            skipped += 1;
        }
        sqlx::query(
            "INSERT INTO assignments
               (deployment_id, robot_id, release_id, stage, state, detail, created_at, updated_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&deployment_id)
        .bind(&robot.id)
        .bind(&new.release.id)
        .bind(0_i64)
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .bind(now)
        .bind(finished)
        .execute(&mut *conn)
        .await?;
    }
    superseded_deployments.sort();
    superseded_deployments.dedup();
    for other in superseded_deployments {
        recompute_deployment(conn, backend, &other).await?;
    }
    recompute_deployment(conn, backend, &deployment_id).await?;
    Ok(Created {
        deployment_id,
        offered,
        skipped,
    })
}

/// Ends the robot's current offers (a newer deployment takes the robot over); returns the
/// deployments touched.
async fn supersede_offers(
    conn: &mut AnyConnection,
    robot_id: &str,
    now: i64,
) -> ApiResult<Vec<String>> {
    let touched: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT deployment_id FROM assignments WHERE robot_id = $1 AND (state IN {OFFERED_STATES_SQL} OR state = 'waiting')"
    ))
    .bind(robot_id)
    .fetch_all(&mut *conn)
    .await?;
    if !touched.is_empty() {
        sqlx::query(&format!(
            "UPDATE assignments SET state = 'superseded', detail = 'a newer deployment took this robot over',
               updated_at = $1, finished_at = $2
             WHERE robot_id = $3 AND (state IN {OFFERED_STATES_SQL} OR state = 'waiting')"
        ))
        .bind(now)
        .bind(now)
        .bind(robot_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(touched)
}

/// Serialises the transactions that change one deployment's assignments, so the last one to
/// recount sees every other's committed change. Without it, two robots committing at once on
/// PostgreSQL (READ COMMITTED) each count the other as unfinished and the deployment never
/// ends. SQLite needs nothing: write transactions already take turns.
async fn lock_deployment(conn: &mut AnyConnection, backend: Backend, id: &str) -> ApiResult<()> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT id FROM deployments WHERE id = $1 FOR UPDATE")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Derives the deployment's state from its assignments and stores it if it changed.
pub async fn recompute_deployment(
    conn: &mut AnyConnection,
    backend: Backend,
    deployment_id: &str,
) -> ApiResult<DeploymentState> {
    lock_deployment(conn, backend, deployment_id).await?;
    let counts = assignment_counts(conn, deployment_id).await?;
    let total: u64 = counts.values().sum();
    let count = |state: AssignmentState| counts.get(state.as_str()).copied().unwrap_or(0);
    let unfinished = AssignmentState::ALL
        .iter()
        .filter(|s| !s.is_final())
        .map(|s| count(*s))
        .sum::<u64>();
    let failures = count(AssignmentState::RolledBack) + count(AssignmentState::Failed);
    let state = if unfinished > 0 {
        DeploymentState::Running
    } else if failures > 0 {
        DeploymentState::Failed
    } else if total > 0 && count(AssignmentState::Superseded) == total {
        DeploymentState::Superseded
    } else {
        DeploymentState::Succeeded
    };
    let finished_at = state.is_final().then(now_ms);
    sqlx::query(
        "UPDATE deployments SET state = $1, finished_at = $2 WHERE id = $3 AND state <> $4",
    )
    .bind(state.as_str())
    .bind(finished_at)
    .bind(deployment_id)
    .bind(state.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(state)
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

/// Applies a robot's report about one of its assignments.
pub async fn apply_event(
    conn: &mut AnyConnection,
    backend: Backend,
    robot_id: &str,
    deployment_id: &str,
    event: &RobotEvent,
) -> ApiResult<()> {
    // Taken first, so repeated reports of one robot are applied one after the other too.
    lock_deployment(conn, backend, deployment_id).await?;
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT a.state, a.release_id, r.version FROM assignments a
         JOIN releases r ON r.id = a.release_id
         WHERE a.deployment_id = $1 AND a.robot_id = $2",
    )
    .bind(deployment_id)
    .bind(robot_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (current, release_id, version) = row.ok_or_else(|| {
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
    } else if current != next || next == AssignmentState::Downloading {
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
        return Ok(());
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
    if matches!(event, RobotEvent::Committed) {
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
    recompute_deployment(conn, backend, deployment_id).await?;
    Ok(())
}
