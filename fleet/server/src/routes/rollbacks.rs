//! `rota rollback`: new deployments of what the target ran at a point (a version, a commit, a
//! deployment, a time, or by default the release before the current one).

use axum::extract::State;
use axum::http::StatusCode;
use rota_protocol::operator::{
    ErrorBody, Role, RollbackGroup, RollbackOutcome, RollbackRequest, UnresolvedRobot,
};

use crate::audit;
use crate::auth::Operator;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::rollout::previous::{self, RollbackTo};
use crate::rollout::{self};
use crate::routes::deployments;
use crate::state::AppState;
use crate::time::now_ms;

/// Why no robot moves, every robot counted: those already there, and each one left alone with
/// its reason (the first few by name).
fn nothing_to_do(plan: &previous::RollbackPlan) -> String {
    const NAMED: usize = 5;
    let mut parts = Vec::new();
    match plan.unchanged.len() {
        0 => {}
        1 => parts.push(format!("{} already runs that release", plan.unchanged[0])),
        n => parts.push(format!("{n} robots already run that release")),
    }
    for (robot, reason) in plan.unresolved.iter().take(NAMED) {
        parts.push(format!("{robot}: {reason}"));
    }
    if plan.unresolved.len() > NAMED {
        parts.push(format!(
            "and {} more robots left alone",
            plan.unresolved.len() - NAMED
        ));
    }
    if parts.is_empty() {
        parts.push("the target has no robots".into());
    }
    parts.join("; ")
}

/// Roll robots back (deployer).
///
/// Each robot of the target goes back to the release `to` names for it: one deployment per
/// release, downgrades allowed, with the target environment's strategy unless `immediate`
/// (never its approval gate: a rollback is the way out of trouble). Robots whose other slot
/// still holds that release switch to it without downloading.
#[utoipa::path(post, path = "/api/v1/rollbacks", tag = "deployments",
    request_body = RollbackRequest,
    responses(
        (status = 201, body = RollbackOutcome),
        (status = 200, description = "dry run: the plan only", body = RollbackOutcome),
        (status = 403, body = ErrorBody),
        (status = 404, description = "unknown group, robot, environment or deployment", body = ErrorBody),
        (status = 422, description = "unreadable `to`, or nothing to roll back", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(request): ApiJson<RollbackRequest>,
) -> ApiResult<(StatusCode, ApiJson<RollbackOutcome>)> {
    operator.require(Role::Deployer)?;
    let to = RollbackTo::parse(request.to.as_deref(), now_ms()).map_err(ApiError::unprocessable)?;
    let mut write = state.db.begin_write().await?;
    let robots = rollout::target_robots(&mut write.tx, &request.target).await?;
    if let Some(app) = &request.app {
        rota_bundle::check_app_name(app).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    }
    let plan = previous::resolve(&mut write.tx, &robots, &to, request.app.as_deref()).await?;
    if plan.by_release.is_empty() {
        return Err(ApiError::unprocessable(format!(
            "nothing to roll back for {}: {}",
            request.target,
            nothing_to_do(&plan)
        )));
    }
    let plan_groups: Vec<RollbackGroup> = plan
        .by_release
        .iter()
        .map(|(release, robots)| RollbackGroup {
            release_id: release.id.clone(),
            version: release.version.clone(),
            robots: robots.clone(),
        })
        .collect();
    let unresolved = plan
        .unresolved
        .iter()
        .map(|(robot_id, reason)| UnresolvedRobot {
            robot_id: robot_id.clone(),
            reason: reason.clone(),
        })
        .collect();
    if request.dry_run {
        return Ok((
            StatusCode::OK,
            ApiJson(RollbackOutcome {
                plan: plan_groups,
                deployments: Vec::new(),
                unchanged: plan.unchanged,
                unresolved,
            }),
        ));
    }
    let strategy = match request.immediate {
        true => None,
        false => rollout::environment_of(&mut write.tx, &request.target)
            .await?
            .map(|env| env.strategy),
    };
    let mut created = Vec::new();
    let mut offered = Vec::new();
    for (release, robots) in &plan.by_release {
        let deployment = previous::create_rollback(
            &mut write.tx,
            state.db.backend(),
            release,
            robots.clone(),
            strategy.clone(),
            None,
            &operator.actor(),
        )
        .await?;
        offered.extend(deployment.offered);
        created.push((
            deployment.deployment_id,
            release.version.clone(),
            robots.len(),
        ));
    }
    audit::Record::by(&operator, "rollback.create", request.target.to_string())
        .details(serde_json::json!({
            "to": request.to, "immediate": request.immediate,
            "deployments": created.iter().map(|(id, version, robots)| serde_json::json!({
                "deployment": id, "version": version, "robots": robots,
            })).collect::<Vec<_>>(),
            "unchanged": plan.unchanged.len(), "unresolved": plan.unresolved.len(),
        }))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    state.wake(&offered).await;
    let mut deployments = Vec::with_capacity(created.len());
    for (id, _, _) in &created {
        deployments.push(deployments::find(&state, id).await?);
    }
    Ok((
        StatusCode::CREATED,
        ApiJson(RollbackOutcome {
            plan: plan_groups,
            deployments,
            unchanged: plan.unchanged,
            unresolved,
        }),
    ))
}
