//! The rollout engine's decisions about one deployment: robots gone silent count as failed,
//! too many failures halt it, a finished stage releases the next one after its wait, and the
//! last one ends the deployment.
//!
//! [`evaluate`] runs after every robot report and operator verb, and on every server replica's
//! tick (for waits and silence, which no report triggers).

use rota_protocol::operator::{DeploymentKind, DeploymentState, Strategy};
use rota_protocol::robot::AssignmentState;
use sqlx::AnyConnection;

use super::{lock_deployment, log, offer, previous, OFFERED_STATES_SQL};
use crate::db::Backend;
use crate::error::{ApiError, ApiResult};
use crate::time::now_ms;

/// The actor of the engine's own decisions in deployment logs.
pub const ENGINE: &str = "rollout";

/// A deployment as the engine sees it.
pub(crate) struct Rollout {
    pub id: String,
    pub release_id: String,
    pub strategy: Strategy,
    pub state: DeploymentState,
    pub kind: DeploymentKind,
    pub current_stage: u32,
    pub stage_count: u32,
    pub stage_done_at: Option<i64>,
    pub created_at: i64,
    pub created_by: String,
}

pub(crate) async fn load(conn: &mut AnyConnection, id: &str) -> ApiResult<Rollout> {
    type Row = (
        String,
        String,
        String,
        String,
        i64,
        i64,
        Option<i64>,
        i64,
        String,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT release_id, strategy, state, kind, current_stage, stage_count, stage_done_at,
                created_at, created_by
         FROM deployments WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let (release_id, strategy, state, kind, current, count, done_at, created_at, created_by) =
        row.ok_or_else(|| ApiError::not_found(format!("no deployment with id {id:?}")))?;
    Ok(Rollout {
        id: id.to_string(),
        release_id,
        strategy: serde_json::from_str(&strategy).map_err(ApiError::internal)?,
        state: DeploymentState::parse(&state)
            .ok_or_else(|| ApiError::internal(format!("unknown deployment state {state:?}")))?,
        kind: DeploymentKind::parse(&kind).unwrap_or_default(),
        current_stage: u32::try_from(current).unwrap_or(0),
        stage_count: u32::try_from(count).unwrap_or(1),
        stage_done_at: done_at,
        created_at,
        created_by,
    })
}

/// What [`evaluate`] decided.
pub struct Evaluation {
    pub state: DeploymentState,
    /// Robots offered something new: wake them after commit.
    pub offered: Vec<String>,
}

/// Takes every decision due for the deployment now.
pub async fn evaluate(
    conn: &mut AnyConnection,
    backend: Backend,
    deployment_id: &str,
) -> ApiResult<Evaluation> {
    lock_deployment(conn, backend, deployment_id).await?;
    let rollout = load(conn, deployment_id).await?;
    let mut offered = Vec::new();
    if rollout.state != DeploymentState::Running {
        return Ok(Evaluation {
            state: rollout.state,
            offered,
        });
    }
    let now = now_ms();
    if let Some(guard) = rollout.strategy.guard() {
        fail_silent_robots(conn, &rollout, guard.silence_timeout_secs, now).await?;
        let (failures, offered_so_far) = released_failures(conn, &rollout).await?;
        if guard.max_failures.exceeded(failures, offered_so_far) {
            let reason = format!(
                "{failures} of {offered_so_far} offered failed, more than the {} allowed",
                guard.max_failures
            );
            offered = halt(conn, backend, &rollout, &reason, guard.auto_rollback).await?;
            return Ok(Evaluation {
                state: DeploymentState::Halted,
                offered,
            });
        }
    }
    let stage_unfinished = count(
        conn,
        &format!(
            "SELECT COUNT(*) FROM assignments WHERE deployment_id = $1 AND stage = $2
             AND (state IN {OFFERED_STATES_SQL} OR state = 'waiting')"
        ),
        &rollout,
    )
    .await?;
    let next = rollout.current_stage + 1;
    if stage_unfinished == 0 && next < rollout.stage_count {
        let done_at = match rollout.stage_done_at {
            Some(at) => at,
            None => {
                sqlx::query("UPDATE deployments SET stage_done_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&rollout.id)
                    .execute(&mut *conn)
                    .await?;
                now
            }
        };
        let due = rollout
            .strategy
            .wait_after_stage()
            .is_some_and(|wait| now >= done_at.saturating_add((wait as i64).saturating_mul(1000)));
        if due {
            offered = start_stage(conn, backend, &rollout.id, next, ENGINE).await?;
        }
        return Ok(Evaluation {
            state: DeploymentState::Running,
            offered,
        });
    }
    let state = finish_if_done(conn, &rollout).await?;
    Ok(Evaluation { state, offered })
}

/// Whether only an operator's `approve` can move the deployment on: it runs, its current stage
/// finished (`stage_done_at`, set by [`evaluate`]), a later stage exists, and the strategy sets
/// no wait after which the engine would start it by itself.
pub fn stage_awaits_approval(
    strategy: &Strategy,
    state: DeploymentState,
    current_stage: u32,
    stage_count: u32,
    stage_done_at: Option<i64>,
) -> bool {
    state == DeploymentState::Running
        && stage_done_at.is_some()
        && current_stage + 1 < stage_count
        && strategy.wait_after_stage().is_none()
}

/// Offers stage `stage` (and any robot still waiting in an earlier one) if it has not started
/// yet; returns the robots offered. The compare-and-set on `current_stage` makes a second
/// replica's attempt at the same advance a no-op.
pub async fn start_stage(
    conn: &mut AnyConnection,
    backend: Backend,
    deployment_id: &str,
    stage: u32,
    actor: &str,
) -> ApiResult<Vec<String>> {
    if stage > 0 {
        let advanced = sqlx::query(
            "UPDATE deployments SET current_stage = $1, stage_done_at = NULL
             WHERE id = $2 AND current_stage = $3",
        )
        .bind(i64::from(stage))
        .bind(deployment_id)
        .bind(i64::from(stage - 1))
        .execute(&mut *conn)
        .await?;
        if advanced.rows_affected() == 0 {
            return Ok(Vec::new());
        }
    }
    let offered = offer_waiting(conn, backend, deployment_id, stage).await?;
    let detail = match offered.len() {
        1 => "1 robot offered".to_string(),
        n => format!("{n} robots offered"),
    };
    log(
        conn,
        deployment_id,
        actor,
        "stage_started",
        Some(stage),
        Some(&detail),
    )
    .await?;
    tracing::info!(deployment = %deployment_id, stage, robots = offered.len(), "stage started");
    Ok(offered)
}

/// Offers every waiting robot of stages up to `stage`.
pub(crate) async fn offer_waiting(
    conn: &mut AnyConnection,
    backend: Backend,
    deployment_id: &str,
    stage: u32,
) -> ApiResult<Vec<String>> {
    let robots: Vec<String> = sqlx::query_scalar(
        "SELECT robot_id FROM assignments
         WHERE deployment_id = $1 AND state = 'waiting' AND stage <= $2 ORDER BY robot_id",
    )
    .bind(deployment_id)
    .bind(i64::from(stage))
    .fetch_all(&mut *conn)
    .await?;
    let mut touched = Vec::new();
    for robot in &robots {
        touched.extend(offer(conn, deployment_id, robot).await?);
    }
    settle(conn, backend, touched).await?;
    Ok(robots)
}

/// Re-evaluates, once each, the deployments an offer took robots from: one may have just lost
/// its last unfinished robot.
pub(crate) async fn settle(
    conn: &mut AnyConnection,
    backend: Backend,
    mut touched: Vec<String>,
) -> ApiResult<()> {
    touched.sort();
    touched.dedup();
    for other in touched {
        // Boxed: evaluating may start a stage, which offers robots and settles again.
        Box::pin(evaluate(conn, backend, &other)).await?;
    }
    Ok(())
}

async fn count(conn: &mut AnyConnection, sql: &str, rollout: &Rollout) -> ApiResult<u64> {
    let n: i64 = sqlx::query_scalar(sql)
        .bind(&rollout.id)
        .bind(i64::from(rollout.current_stage))
        .fetch_one(&mut *conn)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Failed or rolled back robots, and robots offered, in the stages started so far.
async fn released_failures(conn: &mut AnyConnection, rollout: &Rollout) -> ApiResult<(u64, u64)> {
    let failures = count(
        conn,
        "SELECT COUNT(*) FROM assignments WHERE deployment_id = $1 AND stage <= $2
         AND state IN ('failed', 'rolled_back')",
        rollout,
    )
    .await?;
    let offered = count(
        conn,
        "SELECT COUNT(*) FROM assignments WHERE deployment_id = $1 AND stage <= $2
         AND state NOT IN ('skipped', 'waiting')",
        rollout,
    )
    .await?;
    Ok((failures, offered))
}

/// Offered robots that neither reported on the assignment nor polled for `timeout_secs` count
/// as failed.
async fn fail_silent_robots(
    conn: &mut AnyConnection,
    rollout: &Rollout,
    timeout_secs: u64,
    now: i64,
) -> ApiResult<()> {
    let since = now.saturating_sub((timeout_secs as i64).saturating_mul(1000));
    let silent: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT a.robot_id FROM assignments a JOIN robots r ON r.id = a.robot_id
         WHERE a.deployment_id = $1 AND a.state IN {OFFERED_STATES_SQL}
           AND a.updated_at < $2 AND COALESCE(r.last_seen, 0) < $3"
    ))
    .bind(&rollout.id)
    .bind(since)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let detail = format!("silent for more than {timeout_secs} s: no report and no poll");
    for robot in silent {
        sqlx::query(
            "UPDATE assignments SET state = 'failed', detail = $1, updated_at = $2, finished_at = $3
             WHERE deployment_id = $4 AND robot_id = $5",
        )
        .bind(&detail)
        .bind(now)
        .bind(now)
        .bind(&rollout.id)
        .bind(&robot)
        .execute(&mut *conn)
        .await?;
        tracing::warn!(deployment = %rollout.id, robot = %robot, "robot silent: counted as failed");
    }
    Ok(())
}

/// Stops the rollout: nobody who has not started will, and with `auto_rollback` the robots
/// that took the release are sent back to what they ran before. Returns robots offered.
async fn halt(
    conn: &mut AnyConnection,
    backend: Backend,
    rollout: &Rollout,
    reason: &str,
    auto_rollback: bool,
) -> ApiResult<Vec<String>> {
    let now = now_ms();
    sqlx::query(
        "UPDATE deployments SET state = 'halted', halt_reason = $1, finished_at = $2
         WHERE id = $3 AND state = 'running'",
    )
    .bind(reason)
    .bind(now)
    .bind(&rollout.id)
    .execute(&mut *conn)
    .await?;
    cancel_unstarted(conn, &rollout.id, &format!("deployment halted: {reason}")).await?;
    log(
        conn,
        &rollout.id,
        ENGINE,
        "halted",
        Some(rollout.current_stage),
        Some(reason),
    )
    .await?;
    tracing::warn!(deployment = %rollout.id, reason, "rollout halted");
    if !auto_rollback || rollout.kind == DeploymentKind::Rollback {
        return Ok(Vec::new());
    }
    let took_it: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT robot_id FROM assignments WHERE deployment_id = $1
         AND (state = 'committed' OR state IN {OFFERED_STATES_SQL}) ORDER BY robot_id"
    ))
    .bind(&rollout.id)
    .fetch_all(&mut *conn)
    .await?;
    let plan = previous::before_deployment(conn, &took_it, rollout).await?;
    let mut offered = Vec::new();
    for (release, robots) in plan.by_release {
        // Boxed: creating a deployment evaluates it, which may come back here.
        let created = Box::pin(previous::create_rollback(
            conn,
            backend,
            &release,
            robots,
            None,
            Some(rollout.id.clone()),
            ENGINE,
        ))
        .await?;
        let detail = format!("{} to {}", created.deployment_id, release.version);
        log(
            conn,
            &rollout.id,
            ENGINE,
            "rollback_created",
            None,
            Some(&detail),
        )
        .await?;
        offered.extend(created.offered);
    }
    for (robot, why) in plan.unresolved {
        let detail = format!("{robot}: {why}");
        log(
            conn,
            &rollout.id,
            ENGINE,
            "rollback_impossible",
            None,
            Some(&detail),
        )
        .await?;
    }
    Ok(offered)
}

/// Ends the assignments no robot has started.
pub(crate) async fn cancel_unstarted(
    conn: &mut AnyConnection,
    deployment_id: &str,
    detail: &str,
) -> ApiResult<()> {
    let now = now_ms();
    sqlx::query(
        "UPDATE assignments SET state = 'cancelled', detail = $1, updated_at = $2, finished_at = $3
         WHERE deployment_id = $4 AND state IN ('waiting', 'pending')",
    )
    .bind(detail)
    .bind(now)
    .bind(now)
    .bind(deployment_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The deployment's final state once every robot is done; `Running` before.
async fn finish_if_done(conn: &mut AnyConnection, rollout: &Rollout) -> ApiResult<DeploymentState> {
    let counts = super::assignment_counts(conn, &rollout.id).await?;
    let total: u64 = counts.values().sum();
    let of = |state: AssignmentState| counts.get(state.as_str()).copied().unwrap_or(0);
    let unfinished: u64 = AssignmentState::ALL
        .iter()
        .filter(|s| !s.is_final())
        .map(|s| of(*s))
        .sum();
    if unfinished > 0 {
        return Ok(DeploymentState::Running);
    }
    let state = if of(AssignmentState::RolledBack) + of(AssignmentState::Failed) > 0 {
        DeploymentState::Failed
    } else if total > 0 && of(AssignmentState::Superseded) == total {
        DeploymentState::Superseded
    } else if of(AssignmentState::Committed) == 0 {
        // Every robot skipped it (it rolled back from that release before) or was cancelled:
        // the release reached nobody, which is no success.
        DeploymentState::NoRobotUpdated
    } else {
        DeploymentState::Succeeded
    };
    let changed = sqlx::query(
        "UPDATE deployments SET state = $1, finished_at = $2 WHERE id = $3 AND state = 'running'",
    )
    .bind(state.as_str())
    .bind(now_ms())
    .bind(&rollout.id)
    .execute(&mut *conn)
    .await?;
    if changed.rows_affected() > 0 {
        log(
            conn,
            &rollout.id,
            ENGINE,
            "finished",
            None,
            Some(state.as_str()),
        )
        .await?;
    }
    Ok(state)
}

/// Deployments the tick must look at: running ones (waits and silence need the clock).
pub async fn running(conn: &mut AnyConnection) -> ApiResult<Vec<String>> {
    Ok(
        sqlx::query_scalar(
            "SELECT id FROM deployments WHERE state = 'running' ORDER BY created_at",
        )
        .fetch_all(&mut *conn)
        .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(json: serde_json::Value) -> Strategy {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_a_finished_stage_with_no_wait_awaits_approval() {
        let manual = strategy(serde_json::json!({"kind": "canary", "count": 2}));
        let timed = strategy(serde_json::json!({"kind": "canary", "count": 2, "wait_secs": 60}));
        let staged = strategy(serde_json::json!({"kind": "staged", "percents": [50, 100]}));
        let running = DeploymentState::Running;
        let done = Some(1_000);
        for (what, strategy, state, current, count, done_at, expected) in [
            ("manual canary done", &manual, running, 0, 2, done, true),
            (
                "canaries still updating",
                &manual,
                running,
                0,
                2,
                None,
                false,
            ),
            ("last stage done", &manual, running, 1, 2, done, false),
            (
                "paused",
                &manual,
                DeploymentState::Paused,
                0,
                2,
                done,
                false,
            ),
            (
                "halted",
                &manual,
                DeploymentState::Halted,
                0,
                2,
                done,
                false,
            ),
            ("canary with a wait", &timed, running, 0, 2, done, false),
            (
                "staged waits on its own",
                &staged,
                running,
                0,
                2,
                done,
                false,
            ),
        ] {
            assert_eq!(
                stage_awaits_approval(strategy, state, current, count, done_at),
                expected,
                "{what}"
            );
        }
    }
}
