//! Groups of robots: deployment targets (`group:NAME`). A robot may be in several groups.

use axum::extract::State;
use axum::http::StatusCode;
use rota_protocol::operator::{ErrorBody, Group, Role};
use rota_protocol::robot::validate_robot_id;

use crate::audit;
use crate::auth::Operator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::rollout;
use crate::state::AppState;
use crate::time::now_ms;

async fn load(state: &AppState, name: &str) -> ApiResult<Option<Group>> {
    let exists: Option<String> =
        sqlx::query_scalar("SELECT name FROM robot_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(state.db.pool())
            .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let robots: Vec<String> = sqlx::query_scalar(
        "SELECT robot_id FROM group_members WHERE group_name = $1 ORDER BY robot_id",
    )
    .bind(name)
    .fetch_all(state.db.pool())
    .await?;
    Ok(Some(Group {
        name: name.to_string(),
        robots,
    }))
}

/// List groups with their robots.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = Vec<Group>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
) -> ApiResult<ApiJson<Vec<Group>>> {
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM robot_groups ORDER BY name")
        .fetch_all(state.db.pool())
        .await?;
    let members: Vec<(String, String)> =
        sqlx::query_as("SELECT group_name, robot_id FROM group_members ORDER BY robot_id")
            .fetch_all(state.db.pool())
            .await?;
    let groups = names
        .into_iter()
        .map(|name| Group {
            robots: members
                .iter()
                .filter(|(g, _)| *g == name)
                .map(|(_, r)| r.clone())
                .collect(),
            name,
        })
        .collect();
    Ok(ApiJson(groups))
}

/// Create a group (deployer). Creating one that exists is a no-op answering 200.
#[utoipa::path(put, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "group name, like a robot id")),
    responses((status = 201, body = Group), (status = 200, body = Group), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<(StatusCode, ApiJson<Group>)> {
    operator.require(Role::Deployer)?;
    validate_robot_id(&name)
        .map_err(|reason| ApiError::unprocessable(reason.replace("robot id", "group name")))?;
    let mut write = state.db.begin_write().await?;
    let inserted = sqlx::query(
        "INSERT INTO robot_groups (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&name)
    .bind(now_ms())
    .execute(&mut *write.tx)
    .await?;
    let status = if inserted.rows_affected() == 1 {
        audit::Record::by(&operator, "group.create", format!("group:{name}"))
            .write(&mut write.tx)
            .await?;
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    write.commit().await?;
    let group = load(&state, &name)
        .await?
        .ok_or_else(|| ApiError::internal("group vanished after creation"))?;
    Ok((status, ApiJson(group)))
}

/// Delete a group (deployer); its robots stay enrolled.
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "group name")),
    responses((status = 204, description = "deleted"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    operator.require(Role::Deployer)?;
    let mut write = state.db.begin_write().await?;
    let deleted = sqlx::query("DELETE FROM robot_groups WHERE name = $1")
        .bind(&name)
        .execute(&mut *write.tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("no group named {name:?}")));
    }
    audit::Record::by(&operator, "group.delete", format!("group:{name}"))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Put a robot into a group (deployer).
#[utoipa::path(put, path = "/api/v1/groups/{name}/robots/{robot_id}", tag = "groups",
    params(("name" = String, Path, description = "group name"), ("robot_id" = String, Path, description = "robot id")),
    responses((status = 204, description = "member"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_robot(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath((name, robot_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    operator.require(Role::Deployer)?;
    let mut write = state.db.begin_write().await?;
    let group: Option<String> = sqlx::query_scalar("SELECT name FROM robot_groups WHERE name = $1")
        .bind(&name)
        .fetch_optional(&mut *write.tx)
        .await?;
    if group.is_none() {
        return Err(ApiError::not_found(format!("no group named {name:?}")));
    }
    let robot: Option<String> = sqlx::query_scalar("SELECT id FROM robots WHERE id = $1")
        .bind(&robot_id)
        .fetch_optional(&mut *write.tx)
        .await?;
    if robot.is_none() {
        return Err(ApiError::not_found(format!(
            "no robot with id {robot_id:?}"
        )));
    }
    let inserted = sqlx::query(
        "INSERT INTO group_members (group_name, robot_id) VALUES ($1, $2) ON CONFLICT (group_name, robot_id) DO NOTHING",
    )
    .bind(&name)
    .bind(&robot_id)
    .execute(&mut *write.tx)
    .await?;
    let mut woken = false;
    if inserted.rows_affected() == 1 {
        audit::Record::by(&operator, "group.add_robot", format!("group:{name}"))
            .details(serde_json::json!({"robot": robot_id}))
            .write(&mut write.tx)
            .await?;
        woken = rollout::join::join_open_deployments(&mut write.tx, state.db.backend(), &robot_id)
            .await?;
    }
    write.commit().await?;
    if woken {
        state.wake(std::slice::from_ref(&robot_id)).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Take a robot out of a group (deployer).
#[utoipa::path(delete, path = "/api/v1/groups/{name}/robots/{robot_id}", tag = "groups",
    params(("name" = String, Path, description = "group name"), ("robot_id" = String, Path, description = "robot id")),
    responses((status = 204, description = "no longer a member"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_robot(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath((name, robot_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    operator.require(Role::Deployer)?;
    let mut write = state.db.begin_write().await?;
    let deleted = sqlx::query("DELETE FROM group_members WHERE group_name = $1 AND robot_id = $2")
        .bind(&name)
        .bind(&robot_id)
        .execute(&mut *write.tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found(format!(
            "robot {robot_id:?} is not in group {name:?}"
        )));
    }
    audit::Record::by(&operator, "group.remove_robot", format!("group:{name}"))
        .details(serde_json::json!({"robot": robot_id}))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
