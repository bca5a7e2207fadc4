//! Robots that arrive after a deployment started (a new enrollment, a robot added to a group,
//! an approval) join the running deployments whose target includes them, in the stage their
//! hash gives.

use rota_protocol::operator::{DeploymentState, DeploymentTarget, Strategy};
use rota_protocol::robot::AssignmentState;
use sqlx::AnyConnection;

use super::{
    engine, in_canary_group, insert_assignment, lock_deployment, offer, skip_reason, stages,
    ReleaseRef, TargetRobot,
};
use crate::db::Backend;
use crate::error::{ApiError, ApiResult};

/// Adds `robot_id` to every open deployment that targets it and does not have it yet; true
/// when the robot was offered something at once (wake it).
pub async fn join_open_deployments(
    conn: &mut AnyConnection,
    backend: Backend,
    robot_id: &str,
) -> ApiResult<bool> {
    type Row = (
        String,
        String,
        String,
        String,
        String,
        i64,
        i64,
        String,
        String,
    );
    let open: Vec<Row> = sqlx::query_as(
        "SELECT d.id, d.target, d.strategy, d.state, d.release_id, d.current_stage, d.forced,
                r.version, r.compatible
         FROM deployments d JOIN releases r ON r.id = d.release_id
         WHERE d.state IN ('running', 'paused', 'awaiting_approval')
           AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.deployment_id = d.id AND a.robot_id = $1)
         ORDER BY d.created_at",
    )
    .bind(robot_id)
    .fetch_all(&mut *conn)
    .await?;
    let robot: Option<(String, i64)> =
        sqlx::query_as("SELECT compatible, approved FROM robots WHERE id = $1")
            .bind(robot_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((compatible, approved)) = robot else {
        return Ok(false);
    };
    let robot = TargetRobot {
        id: robot_id.to_string(),
        compatible,
        approved: approved != 0,
    };
    let mut offered = false;
    for (id, target, strategy, state, release_id, current, forced, version, release_compat) in open
    {
        let target: DeploymentTarget = target.parse().map_err(ApiError::internal)?;
        if !targets(conn, &target, robot_id).await? {
            continue;
        }
        lock_deployment(conn, backend, &id).await?;
        let strategy: Strategy = serde_json::from_str(&strategy).map_err(ApiError::internal)?;
        let release = ReleaseRef {
            id: release_id.clone(),
            version,
            compatible: release_compat,
        };
        if let Some(reason) = skip_reason(conn, &robot, &release, forced != 0).await? {
            insert_assignment(
                conn,
                &id,
                robot_id,
                &release_id,
                0,
                AssignmentState::Skipped,
                Some(&reason),
            )
            .await?;
            continue;
        }
        let member = stages::Member {
            id: robot_id,
            in_canary_group: in_canary_group(conn, &strategy, robot_id).await?,
        };
        let stage = stages::late_joiner_stage(&strategy, &id, &member);
        insert_assignment(
            conn,
            &id,
            robot_id,
            &release_id,
            stage,
            AssignmentState::Waiting,
            None,
        )
        .await?;
        let started = state == DeploymentState::Running.as_str() && i64::from(stage) <= current;
        if started {
            let touched = offer(conn, &id, robot_id).await?;
            engine::settle(conn, backend, touched).await?;
            offered = true;
        }
        let detail = format!("{robot_id} joined stage {stage}");
        super::log(
            conn,
            &id,
            engine::ENGINE,
            "robot_joined",
            Some(stage),
            Some(&detail),
        )
        .await?;
    }
    Ok(offered)
}

/// Whether a deployment to `target` reaches `robot_id` today. Explicit robot lists never grow,
/// and neither do dynamic groups: they have no member rows, and their deployments reach the
/// robots that matched when they were created.
async fn targets(
    conn: &mut AnyConnection,
    target: &DeploymentTarget,
    robot_id: &str,
) -> ApiResult<bool> {
    let found: Option<String> = match target {
        DeploymentTarget::All => return Ok(true),
        DeploymentTarget::Robot(_) | DeploymentTarget::Robots(_) => return Ok(false),
        DeploymentTarget::Group(name) => {
            sqlx::query_scalar(
                "SELECT robot_id FROM group_members WHERE group_name = $1 AND robot_id = $2",
            )
            .bind(name)
            .bind(robot_id)
            .fetch_optional(&mut *conn)
            .await?
        }
        DeploymentTarget::Env(name) => sqlx::query_scalar(
            "SELECT m.robot_id FROM group_members m JOIN robot_groups g ON g.name = m.group_name
                 WHERE g.environment = $1 AND m.robot_id = $2",
        )
        .bind(name)
        .bind(robot_id)
        .fetch_optional(&mut *conn)
        .await?,
    };
    Ok(found.is_some())
}
