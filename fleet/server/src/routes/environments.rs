//! Environments (development, staging, production...): groups of robots and the rules their
//! deployments follow; promotion from one environment to the next.

use axum::extract::State;
use axum::http::StatusCode;
use rota_protocol::operator::{
    Deployment, DeploymentKind, DeploymentTarget, Environment, EnvironmentSpec, ErrorBody,
    PromoteRequest, Release, Role,
};
use rota_protocol::robot::validate_robot_id;
use sqlx::AnyConnection;

use crate::audit;
use crate::auth::Operator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::rollout::{self, NewDeployment, ReleaseRef};
use crate::routes::deployments;
use crate::state::AppState;
use crate::time::now_ms;

type EnvironmentRow = (String, i64, i64, Option<String>, String);

async fn load_all(conn: &mut AnyConnection, name: Option<&str>) -> ApiResult<Vec<Environment>> {
    let rows: Vec<EnvironmentRow> = sqlx::query_as(
        "SELECT name, auto_deploy, approval_required, update_window, strategy FROM environments
         WHERE ($1 = '' OR name = $2) ORDER BY name",
    )
    .bind(name.unwrap_or_default())
    .bind(name.unwrap_or_default())
    .fetch_all(&mut *conn)
    .await?;
    let groups: Vec<(String, String)> = sqlx::query_as(
        "SELECT environment, name FROM robot_groups WHERE environment IS NOT NULL ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(name, auto_deploy, approval, window, strategy)| {
            Ok(Environment {
                groups: groups
                    .iter()
                    .filter(|(env, _)| *env == name)
                    .map(|(_, group)| group.clone())
                    .collect(),
                name,
                auto_deploy: auto_deploy != 0,
                approval_required: approval != 0,
                update_window: window
                    .map(|json| serde_json::from_str(&json))
                    .transpose()
                    .map_err(ApiError::internal)?,
                strategy: serde_json::from_str(&strategy).map_err(ApiError::internal)?,
            })
        })
        .collect()
}

/// List environments with their groups and rules.
#[utoipa::path(get, path = "/api/v1/environments", tag = "environments",
    responses((status = 200, body = Vec<Environment>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
) -> ApiResult<ApiJson<Vec<Environment>>> {
    let mut conn = state.db.pool().acquire().await?;
    Ok(ApiJson(load_all(&mut conn, None).await?))
}

/// Create or replace an environment (admin): its rules and the groups in it. Missing groups
/// are created; a group named here leaves its previous environment.
#[utoipa::path(put, path = "/api/v1/environments/{name}", tag = "environments",
    params(("name" = String, Path, description = "environment name, like a robot id")),
    request_body = EnvironmentSpec,
    responses(
        (status = 200, body = Environment),
        (status = 403, description = "needs the admin role", body = ErrorBody),
        (status = 422, description = "invalid name, strategy or window", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(name): ApiPath<String>,
    ApiJson(spec): ApiJson<EnvironmentSpec>,
) -> ApiResult<ApiJson<Environment>> {
    operator.require(Role::Admin)?;
    let invalid = |what: &str, reason: String| ApiError::unprocessable(format!("{what}: {reason}"));
    validate_robot_id(&name).map_err(|r| invalid("name", r.replace("robot id", "name")))?;
    spec.strategy
        .validate()
        .map_err(|r| invalid("strategy", r))?;
    if let Some(window) = &spec.update_window {
        window.validate().map_err(|r| invalid("update_window", r))?;
    }
    for group in &spec.groups {
        validate_robot_id(group).map_err(|r| invalid("group", r.replace("robot id", "group")))?;
    }
    let mut write = state.db.begin_write().await?;
    let window = spec
        .update_window
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(ApiError::internal)?;
    let strategy = serde_json::to_string(&spec.strategy).map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO environments (name, auto_deploy, approval_required, update_window, strategy, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (name) DO UPDATE SET auto_deploy = $7, approval_required = $8,
             update_window = $9, strategy = $10",
    )
    .bind(&name)
    .bind(i64::from(spec.auto_deploy))
    .bind(i64::from(spec.approval_required))
    .bind(&window)
    .bind(&strategy)
    .bind(now_ms())
    .bind(i64::from(spec.auto_deploy))
    .bind(i64::from(spec.approval_required))
    .bind(&window)
    .bind(&strategy)
    .execute(&mut *write.tx)
    .await?;
    sqlx::query("UPDATE robot_groups SET environment = NULL WHERE environment = $1")
        .bind(&name)
        .execute(&mut *write.tx)
        .await?;
    for group in &spec.groups {
        sqlx::query(
            "INSERT INTO robot_groups (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(group)
        .bind(now_ms())
        .execute(&mut *write.tx)
        .await?;
        sqlx::query("UPDATE robot_groups SET environment = $1 WHERE name = $2")
            .bind(&name)
            .bind(group)
            .execute(&mut *write.tx)
            .await?;
    }
    audit::Record::by(&operator, "environment.put", format!("env:{name}"))
        .details(serde_json::to_value(&spec).map_err(ApiError::internal)?)
        .write(&mut write.tx)
        .await?;
    let environment = load_all(&mut write.tx, Some(&name))
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("environment vanished after writing it"))?;
    write.commit().await?;
    Ok(ApiJson(environment))
}

/// The one release on one track (`app`: `None` for the OS) that every robot of `environment`
/// that has committed one runs now: an app release committed since does not change what OS
/// the robot runs, nor the other way round.
async fn release_running_in(
    conn: &mut AnyConnection,
    environment: &str,
    app: Option<&str>,
) -> ApiResult<ReleaseRef> {
    let robots = rollout::target_robots(conn, &DeploymentTarget::Env(environment.into())).await?;
    let mut running: Vec<(String, String, String)> = Vec::new();
    for robot in &robots {
        let current: Option<(String, String, String)> = sqlx::query_as(
            "SELECT r.id, r.version, r.compatible FROM assignments a
             JOIN releases r ON r.id = a.release_id
             WHERE a.robot_id = $1 AND a.state = 'committed' AND COALESCE(r.app, '') = $2
             ORDER BY a.finished_at DESC LIMIT 1",
        )
        .bind(&robot.id)
        .bind(app.unwrap_or(""))
        .fetch_optional(&mut *conn)
        .await?;
        running.extend(current);
    }
    running.sort();
    running.dedup();
    let what = app.map_or("a release".to_string(), |app| format!("a release of {app}"));
    match running.as_slice() {
        [] => Err(ApiError::unprocessable(format!(
            "no robot in {environment} has committed {what} yet: nothing to promote"
        ))),
        [(id, version, compatible)] => Ok(ReleaseRef {
            id: id.clone(),
            version: version.clone(),
            compatible: compatible.clone(),
        }),
        several => Err(ApiError::conflict(format!(
            "{environment} runs several releases ({}); deploy one by name instead",
            several
                .iter()
                .map(|(_, version, compatible)| format!("{version} for {compatible}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Deploy what one environment runs now to another, with the other's rules (deployer).
#[utoipa::path(post, path = "/api/v1/environments/{name}/promote", tag = "environments",
    params(("name" = String, Path, description = "the environment whose release is promoted")),
    request_body = PromoteRequest,
    responses(
        (status = 201, body = Deployment),
        (status = 403, body = ErrorBody),
        (status = 404, description = "unknown environment", body = ErrorBody),
        (status = 409, description = "the source runs several releases", body = ErrorBody),
        (status = 422, description = "the source runs nothing yet", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn promote(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(from): ApiPath<String>,
    ApiJson(request): ApiJson<PromoteRequest>,
) -> ApiResult<(StatusCode, ApiJson<Deployment>)> {
    operator.require(Role::Deployer)?;
    let mut write = state.db.begin_write().await?;
    rollout::environment_rules(&mut write.tx, &from).await?;
    if let Some(app) = &request.app {
        rota_bundle::check_app_name(app).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    }
    let release = release_running_in(&mut write.tx, &from, request.app.as_deref()).await?;
    let created = rollout::create_deployment(
        &mut write.tx,
        state.db.backend(),
        NewDeployment {
            release: release.clone(),
            target: DeploymentTarget::Env(request.to.clone()),
            strategy: None,
            force: false,
            created_by: operator.actor(),
            kind: DeploymentKind::Promote,
            parent_id: None,
        },
    )
    .await?;
    audit::Record::by(
        &operator,
        "environment.promote",
        format!("env:{}", request.to),
    )
    .details(serde_json::json!({
        "from": from, "release": release.id, "version": release.version, "app": request.app,
        "deployment": created.deployment_id,
    }))
    .write(&mut write.tx)
    .await?;
    write.commit().await?;
    state.wake(&created.offered).await;
    Ok((
        StatusCode::CREATED,
        ApiJson(deployments::find(&state, &created.deployment_id).await?),
    ))
}

/// Deploys a just-published release to the environment its branch maps to, when that
/// environment has `auto_deploy` and robots. The environment's rules apply (approval first
/// when it requires approval).
pub async fn auto_deploy(
    state: &AppState,
    conn: &mut AnyConnection,
    release: &Release,
) -> ApiResult<Option<rollout::Created>> {
    let Some(branch) = &release.branch else {
        return Ok(None);
    };
    let Some(environment) =
        crate::config::environment_for_branch(&state.settings.branch_environments, branch)
    else {
        return Ok(None);
    };
    let auto: Option<i64> =
        sqlx::query_scalar("SELECT auto_deploy FROM environments WHERE name = $1")
            .bind(environment)
            .fetch_optional(&mut *conn)
            .await?;
    if auto != Some(1) {
        return Ok(None);
    }
    let target = DeploymentTarget::Env(environment.to_string());
    if rollout::target_robots(conn, &target).await?.is_empty() {
        tracing::info!(
            branch,
            environment,
            "auto-deploy skipped: the environment has no robots"
        );
        return Ok(None);
    }
    let actor = format!("auto-deploy:{branch}");
    let created = rollout::create_deployment(
        conn,
        state.db.backend(),
        NewDeployment {
            release: ReleaseRef {
                id: release.id.clone(),
                version: release.version.clone(),
                compatible: release.compatible.clone(),
            },
            target,
            strategy: None,
            force: false,
            created_by: actor.clone(),
            kind: DeploymentKind::Auto,
            parent_id: None,
        },
    )
    .await?;
    audit::Record {
        actor,
        action: "deployment.create",
        target: Some(format!("deployment:{}", created.deployment_id)),
        details: Some(serde_json::json!({
            "release": release.id, "version": release.version, "environment": environment,
            "branch": branch, "kind": "auto",
        })),
        source_ip: None,
    }
    .write(&mut *conn)
    .await?;
    tracing::info!(deployment = %created.deployment_id, branch, environment, "release auto-deployed");
    Ok(Some(created))
}
