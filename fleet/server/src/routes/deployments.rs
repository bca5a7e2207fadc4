//! Deployments: create (a release to a robot, a group or the fleet), list, read per-robot state.

use axum::extract::State;
use axum::http::StatusCode;
use rota_protocol::operator::{
    CreateDeploymentRequest, Deployment, DeploymentKind, DeploymentLogEntry, DeploymentState,
    DeploymentVerb, ErrorBody, RobotAssignment, Role, Strategy,
};
use rota_protocol::robot::AssignmentState;
use serde::Deserialize;

use crate::audit;
use crate::auth::Operator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::rollout::{self, NewDeployment, ReleaseRef};
use crate::state::AppState;
use crate::time::rfc3339;

#[derive(sqlx::FromRow)]
struct DeploymentRow {
    id: String,
    release_id: String,
    version: String,
    app: Option<String>,
    target: String,
    strategy: String,
    forced: i64,
    state: String,
    created_by: String,
    created_at: i64,
    kind: String,
    environment: Option<String>,
    update_window: Option<String>,
    current_stage: i64,
    stage_count: i64,
    stage_done_at: Option<i64>,
    halt_reason: Option<String>,
    approved_by: Option<String>,
    parent_id: Option<String>,
}
const DEPLOYMENT_SELECT: &str =
    "SELECT d.id, d.release_id, r.version, r.app, d.target, d.strategy, d.forced,
            d.state, d.created_by, d.created_at, d.kind, d.environment, d.update_window,
            d.current_stage, d.stage_count, d.stage_done_at, d.halt_reason, d.approved_by, d.parent_id
     FROM deployments d JOIN releases r ON r.id = d.release_id";

async fn deployment_from_row(
    state: &AppState,
    row: DeploymentRow,
    with_robots: bool,
) -> ApiResult<Deployment> {
    let DeploymentRow {
        id,
        release_id,
        version,
        app,
        target,
        strategy,
        forced,
        state: deployment_state,
        created_by,
        created_at,
        kind,
        environment,
        update_window,
        current_stage,
        stage_count,
        stage_done_at,
        halt_reason,
        approved_by,
        parent_id,
    } = row;
    let mut conn = state.db.pool().acquire().await?;
    let counts = rollout::assignment_counts(&mut conn, &id).await?;
    let robots = if with_robots {
        type Row = (String, String, i64, Option<String>, i64, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT robot_id, state, stage, detail, updated_at, finished_at FROM assignments
             WHERE deployment_id = $1 ORDER BY robot_id",
        )
        .bind(&id)
        .fetch_all(&mut *conn)
        .await?;
        let robots = rows
            .into_iter()
            .map(
                |(robot_id, robot_state, stage, detail, updated_at, finished_at)| {
                    Ok(RobotAssignment {
                        robot_id,
                        state: AssignmentState::parse(&robot_state).ok_or_else(|| {
                            ApiError::internal(format!("unknown assignment state {robot_state:?}"))
                        })?,
                        stage: u32::try_from(stage).unwrap_or(0),
                        detail,
                        updated_at: rfc3339(updated_at),
                        finished_after_secs: finished_at
                            .map(|end| (end - created_at).max(0) as f64 / 1000.0),
                    })
                },
            )
            .collect::<ApiResult<Vec<_>>>()?;
        Some(robots)
    } else {
        None
    };
    let log = if with_robots {
        type Row = (i64, String, String, Option<i64>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT at, actor, action, stage, detail FROM deployment_log
             WHERE deployment_id = $1 ORDER BY id",
        )
        .bind(&id)
        .fetch_all(&mut *conn)
        .await?;
        Some(
            rows.into_iter()
                .map(|(at, actor, action, stage, detail)| DeploymentLogEntry {
                    at: rfc3339(at),
                    actor,
                    action,
                    stage: stage.and_then(|s| u32::try_from(s).ok()),
                    detail,
                })
                .collect(),
        )
    } else {
        None
    };
    let strategy: Strategy = serde_json::from_str(&strategy).map_err(ApiError::internal)?;
    let deployment_state = DeploymentState::parse(&deployment_state).ok_or_else(|| {
        ApiError::internal(format!("unknown deployment state {deployment_state:?}"))
    })?;
    let current_stage = u32::try_from(current_stage).unwrap_or(0);
    let stage_count = u32::try_from(stage_count).unwrap_or(1);
    Ok(Deployment {
        release_id,
        version,
        app,
        target: target.parse().map_err(ApiError::internal)?,
        stage_awaits_approval: rollout::engine::stage_awaits_approval(
            &strategy,
            deployment_state,
            current_stage,
            stage_count,
            stage_done_at,
        ),
        strategy,
        force: forced != 0,
        state: deployment_state,
        kind: DeploymentKind::parse(&kind).unwrap_or_default(),
        environment,
        update_window: update_window
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(ApiError::internal)?,
        current_stage,
        stage_count,
        halt_reason,
        approved_by,
        parent_id,
        created_by,
        created_at: rfc3339(created_at),
        counts,
        robots,
        log,
        id,
    })
}

pub async fn find(state: &AppState, id: &str) -> ApiResult<Deployment> {
    let row: Option<DeploymentRow> =
        sqlx::query_as(&format!("{DEPLOYMENT_SELECT} WHERE d.id = $1"))
            .bind(id)
            .fetch_optional(state.db.pool())
            .await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("no deployment with id {id:?}")))?;
    deployment_from_row(state, row, true).await
}

/// Finds a release by id, an OS release by version, or an app release by `APP@VERSION`, when
/// exactly one release has it.
pub async fn resolve_release(state: &AppState, release: &str) -> ApiResult<ReleaseRef> {
    let rows: Vec<(String, String, String)> = match release.split_once('@') {
        Some((app, version)) => {
            sqlx::query_as(
                "SELECT id, version, compatible FROM releases WHERE app = $1 AND version = $2",
            )
            .bind(app)
            .bind(version)
            .fetch_all(state.db.pool())
            .await?
        }
        None => {
            sqlx::query_as(
                "SELECT id, version, compatible FROM releases
                 WHERE id = $1 OR (version = $2 AND app IS NULL)",
            )
            .bind(release)
            .bind(release)
            .fetch_all(state.db.pool())
            .await?
        }
    };
    match rows.as_slice() {
        [] => Err(ApiError::not_found(format!(
            "no release with id or version {release:?}"
        ))),
        [(id, version, compatible)] => Ok(ReleaseRef {
            id: id.clone(),
            version: version.clone(),
            compatible: compatible.clone(),
        }),
        several => Err(ApiError::conflict(format!(
            "version {release:?} exists for several boards ({}); name the release id",
            several
                .iter()
                .map(|(id, _, c)| format!("{id} for {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Deploy a release (deployer).
///
/// Robots that rolled back from this release before are skipped unless `force` is set, as
/// are robots awaiting approval and robots of another `compatible`; their rows say why.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments",
    request_body = CreateDeploymentRequest,
    responses(
        (status = 201, body = Deployment),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 403, description = "needs the deployer role", body = ErrorBody),
        (status = 404, description = "unknown release, group or robot", body = ErrorBody),
        (status = 409, description = "ambiguous version", body = ErrorBody),
        (status = 422, description = "invalid target or empty target", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(request): ApiJson<CreateDeploymentRequest>,
) -> ApiResult<(StatusCode, ApiJson<Deployment>)> {
    operator.require(Role::Deployer)?;
    let release = resolve_release(&state, &request.release).await?;
    let mut write = state.db.begin_write().await?;
    let created = rollout::create_deployment(
        &mut write.tx,
        state.db.backend(),
        NewDeployment {
            release: release.clone(),
            target: request.target.clone(),
            strategy: request.strategy.clone(),
            force: request.force,
            created_by: operator.actor(),
            kind: DeploymentKind::Deploy,
            parent_id: None,
        },
    )
    .await?;
    audit::Record::by(
        &operator,
        "deployment.create",
        format!("deployment:{}", created.deployment_id),
    )
    .details(serde_json::json!({
        "release": release.id, "version": release.version, "target": request.target.to_string(),
        "strategy": request.strategy, "force": request.force,
        "offered": created.offered.len(), "skipped": created.skipped,
    }))
    .write(&mut write.tx)
    .await?;
    write.commit().await?;
    state.metrics.count_deployment();
    state.wake(&created.offered).await;
    tracing::info!(deployment = %created.deployment_id, release = %release.id, target = %request.target,
        offered = created.offered.len(), skipped = created.skipped, "deployment created");
    Ok((
        StatusCode::CREATED,
        ApiJson(find(&state, &created.deployment_id).await?),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeploymentsQuery {
    /// Only deployments in this state (`awaiting_approval`, `running`, `paused`, `halted`,
    /// `aborted`, `succeeded`, `failed`, `superseded`, `no_robot_updated`).
    pub state: Option<String>,
    /// At most this many, newest first. [default: 50, at most 1000]
    pub limit: Option<i64>,
}

pub async fn list_where(
    state: &AppState,
    wanted_state: Option<&str>,
    limit: i64,
) -> ApiResult<Vec<Deployment>> {
    let rows: Vec<DeploymentRow> = sqlx::query_as(&format!(
        "{DEPLOYMENT_SELECT} WHERE ($1 = '' OR d.state = $2) ORDER BY d.created_at DESC, d.id LIMIT $3"
    ))
    .bind(wanted_state.unwrap_or_default())
    .bind(wanted_state.unwrap_or_default())
    .bind(limit)
    .fetch_all(state.db.pool())
    .await?;
    let mut deployments = Vec::with_capacity(rows.len());
    for row in rows {
        deployments.push(deployment_from_row(state, row, false).await?);
    }
    Ok(deployments)
}

/// List deployments, newest first, with robots per state.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments",
    params(DeploymentsQuery),
    responses((status = 200, body = Vec<Deployment>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<DeploymentsQuery>,
) -> ApiResult<ApiJson<Vec<Deployment>>> {
    if let Some(wanted) = &query.state {
        if DeploymentState::parse(wanted).is_none() {
            return Err(ApiError::bad_request(format!(
                "unknown deployment state {wanted:?}"
            )));
        }
    }
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    Ok(ApiJson(
        list_where(&state, query.state.as_deref(), limit).await?,
    ))
}

/// Read a deployment with every robot's state.
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments",
    params(("id" = String, Path, description = "deployment id")),
    responses((status = 200, body = Deployment), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _operator: Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<Deployment>> {
    Ok(ApiJson(find(&state, &id).await?))
}

/// Pause, resume, abort, approve or retry a deployment (deployer).
///
/// `approve` starts a deployment awaiting approval (not by its creator) or the next stage of
/// a canary waiting for it; `retry` offers the release again to the robots that failed or
/// rolled back and reopens a halted deployment.
#[utoipa::path(post, path = "/api/v1/deployments/{id}/{verb}", tag = "deployments",
    params(
        ("id" = String, Path, description = "deployment id"),
        ("verb" = DeploymentVerb, Path, description = "pause, resume, abort, approve or retry"),
    ),
    responses(
        (status = 200, body = Deployment),
        (status = 403, description = "needs the deployer role; creators cannot approve", body = ErrorBody),
        (status = 404, description = "unknown deployment or verb", body = ErrorBody),
        (status = 409, description = "the verb does not apply in the deployment's state", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn act(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath((id, verb)): ApiPath<(String, String)>,
) -> ApiResult<ApiJson<Deployment>> {
    let verb: DeploymentVerb = verb.parse().map_err(ApiError::not_found)?;
    operator.require(Role::Deployer)?;
    let mut write = state.db.begin_write().await?;
    let offered = rollout::verbs::apply(
        &mut write.tx,
        state.db.backend(),
        &id,
        verb,
        &operator.actor(),
    )
    .await?;
    let action = format!("deployment.{}", verb.as_str());
    audit::Record::by(&operator, &action, format!("deployment:{id}"))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    state.wake(&offered).await;
    tracing::info!(deployment = %id, verb = verb.as_str(), by = %operator.actor(), "deployment verb");
    Ok(ApiJson(find(&state, &id).await?))
}
