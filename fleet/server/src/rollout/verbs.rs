//! Operators' verbs on a deployment: pause, resume, abort, approve, retry.

use rota_protocol::operator::{DeploymentState, DeploymentVerb};
use sqlx::AnyConnection;

use super::engine::{self, cancel_unstarted, load, offer_waiting, start_stage};
use super::{lock_deployment, log};
use crate::db::Backend;
use crate::error::{ApiError, ApiResult};
use crate::time::now_ms;

/// Applies `verb` by `actor`; returns the robots offered something as a consequence.
pub async fn apply(
    conn: &mut AnyConnection,
    backend: Backend,
    deployment_id: &str,
    verb: DeploymentVerb,
    actor: &str,
) -> ApiResult<Vec<String>> {
    lock_deployment(conn, backend, deployment_id).await?;
    let rollout = load(conn, deployment_id).await?;
    let refuse = |why: &str| {
        Err(ApiError::conflict(format!(
            "cannot {} deployment {deployment_id}: it is {}{why}",
            verb.as_str(),
            rollout.state.as_str()
        )))
    };
    let mut offered = Vec::new();
    match (verb, rollout.state) {
        (DeploymentVerb::Pause, DeploymentState::Running) => {
            set_state(conn, deployment_id, DeploymentState::Paused).await?;
            // Offers nobody started go back to waiting; robots already working finish.
            sqlx::query(
                "UPDATE assignments SET state = 'waiting', updated_at = $1
                 WHERE deployment_id = $2 AND state = 'pending'",
            )
            .bind(now_ms())
            .bind(deployment_id)
            .execute(&mut *conn)
            .await?;
        }
        (DeploymentVerb::Resume, DeploymentState::Paused) => {
            set_state(conn, deployment_id, DeploymentState::Running).await?;
            offered = offer_waiting(conn, backend, deployment_id, rollout.current_stage).await?;
        }
        (
            DeploymentVerb::Abort,
            DeploymentState::Running | DeploymentState::Paused | DeploymentState::AwaitingApproval,
        ) => {
            sqlx::query("UPDATE deployments SET state = 'aborted', finished_at = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(deployment_id)
                .execute(&mut *conn)
                .await?;
            cancel_unstarted(conn, deployment_id, &format!("aborted by {actor}")).await?;
        }
        (DeploymentVerb::Approve, DeploymentState::AwaitingApproval) => {
            if rollout.created_by == actor {
                return Err(ApiError::forbidden(format!(
                    "{actor} created deployment {deployment_id} and cannot also approve it; \
                     another deployer must"
                )));
            }
            sqlx::query("UPDATE deployments SET state = 'running', approved_by = $1 WHERE id = $2")
                .bind(actor)
                .bind(deployment_id)
                .execute(&mut *conn)
                .await?;
            log(conn, deployment_id, actor, "approved", None, None).await?;
            offered = start_stage(conn, backend, deployment_id, 0, actor).await?;
        }
        (DeploymentVerb::Approve, DeploymentState::Running) => {
            let next = rollout.current_stage + 1;
            if next >= rollout.stage_count || rollout.stage_done_at.is_none() {
                return refuse(&format!(
                    " with stage {} of {} not finished: nothing waits for approval",
                    rollout.current_stage + 1,
                    rollout.stage_count
                ));
            }
            log(conn, deployment_id, actor, "approved", Some(next), None).await?;
            offered = start_stage(conn, backend, deployment_id, next, actor).await?;
        }
        (
            DeploymentVerb::Retry,
            DeploymentState::Running | DeploymentState::Halted | DeploymentState::Failed,
        ) => {
            if !reset_failed(conn, deployment_id).await? {
                return refuse(": no robot failed or rolled back");
            }
            sqlx::query(
                "UPDATE deployments SET state = 'running', halt_reason = NULL, finished_at = NULL,
                        forced = 1 WHERE id = $1",
            )
            .bind(deployment_id)
            .execute(&mut *conn)
            .await?;
            offered = offer_waiting(conn, backend, deployment_id, rollout.current_stage).await?;
        }
        _ => return refuse(""),
    }
    if verb != DeploymentVerb::Approve {
        log(conn, deployment_id, actor, past_tense(verb), None, None).await?;
    }
    offered.extend(
        engine::evaluate(conn, backend, deployment_id)
            .await?
            .offered,
    );
    Ok(offered)
}

fn past_tense(verb: DeploymentVerb) -> &'static str {
    match verb {
        DeploymentVerb::Pause => "paused",
        DeploymentVerb::Resume => "resumed",
        DeploymentVerb::Abort => "aborted",
        DeploymentVerb::Approve => "approved",
        DeploymentVerb::Retry => "retried",
    }
}

async fn set_state(
    conn: &mut AnyConnection,
    deployment_id: &str,
    state: DeploymentState,
) -> ApiResult<()> {
    sqlx::query("UPDATE deployments SET state = $1 WHERE id = $2")
        .bind(state.as_str())
        .bind(deployment_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Puts the robots that failed or rolled back from the deployment back in line (lifting their
/// block on its release: the operator asked); false when there were none.
async fn reset_failed(conn: &mut AnyConnection, deployment_id: &str) -> ApiResult<bool> {
    let failed: Vec<(String, String)> = sqlx::query_as(
        "SELECT robot_id, release_id FROM assignments
         WHERE deployment_id = $1 AND state IN ('failed', 'rolled_back')",
    )
    .bind(deployment_id)
    .fetch_all(&mut *conn)
    .await?;
    for (robot, release) in &failed {
        sqlx::query("DELETE FROM robot_release_blocks WHERE robot_id = $1 AND release_id = $2")
            .bind(robot)
            .bind(release)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "UPDATE assignments SET state = 'waiting', detail = 'retried', finished_at = NULL
         WHERE deployment_id = $1 AND state IN ('failed', 'rolled_back')",
    )
    .bind(deployment_id)
    .execute(&mut *conn)
    .await?;
    Ok(!failed.is_empty())
}
