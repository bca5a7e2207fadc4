//! Groups of robots: deployment targets (`group:NAME`). A robot may be in several groups.
//!
//! A static group's robots are added by hand; a dynamic group's are the robots its query
//! ([`crate::query`]) matches, worked out whenever they are asked for ([`crate::inventory`]).

use axum::extract::State;
use axum::http::StatusCode;
use rota_protocol::operator::{ErrorBody, Group, GroupQuery, Role};
use rota_protocol::robot::validate_robot_id;
use sqlx::AnyConnection;

use crate::audit;
use crate::auth::Operator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::inventory;
use crate::query::Query;
use crate::rollout;
use crate::state::AppState;
use crate::time::now_ms;

/// Every group (`None`) or one, with its robots.
async fn read_groups(conn: &mut AnyConnection, name: Option<&str>) -> ApiResult<Vec<Group>> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT name, member_query FROM robot_groups WHERE ($1 = '' OR name = $2) ORDER BY name",
    )
    .bind(name.unwrap_or_default())
    .bind(name.unwrap_or_default())
    .fetch_all(&mut *conn)
    .await?;
    let members: Vec<(String, String)> = sqlx::query_as(
        "SELECT group_name, robot_id FROM group_members WHERE ($1 = '' OR group_name = $2)
         ORDER BY robot_id",
    )
    .bind(name.unwrap_or_default())
    .bind(name.unwrap_or_default())
    .fetch_all(&mut *conn)
    .await?;
    let dynamic = rows.iter().any(|(_, query)| query.is_some());
    let facts = if dynamic {
        inventory::facts(conn, None).await?
    } else {
        Vec::new()
    };
    let mut groups = Vec::with_capacity(rows.len());
    for (name, query) in rows {
        let robots = match &query {
            Some(text) => {
                let query = inventory::parse_stored(&name, text)?;
                facts
                    .iter()
                    .filter(|robot| query.matches(&robot.facts()))
                    .map(|robot| robot.id.clone())
                    .collect()
            }
            None => members
                .iter()
                .filter(|(g, _)| *g == name)
                .map(|(_, r)| r.clone())
                .collect(),
        };
        groups.push(Group {
            name,
            robots,
            query,
        });
    }
    Ok(groups)
}

async fn load(state: &AppState, name: &str) -> ApiResult<Option<Group>> {
    let mut conn = state.db.pool().acquire().await?;
    Ok(read_groups(&mut conn, Some(name)).await?.pop())
}

/// List groups with their robots (a dynamic group's: the robots its query matches now).
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = Vec<Group>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
) -> ApiResult<ApiJson<Vec<Group>>> {
    let mut conn = state.db.pool().acquire().await?;
    Ok(ApiJson(read_groups(&mut conn, None).await?))
}

/// Read one group and its robots (a dynamic group's: the robots its query matches now).
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _operator: Operator,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<ApiJson<Group>> {
    load(&state, &name)
        .await?
        .map(ApiJson)
        .ok_or_else(|| ApiError::not_found(format!("no group named {name:?}")))
}

fn validate_group_name(name: &str) -> ApiResult<()> {
    validate_robot_id(name)
        .map_err(|reason| ApiError::unprocessable(reason.replace("robot id", "group name")))
}

/// Make a group dynamic, creating it when missing, or change its query (deployer). Its robots
/// are then the ones the query matches, whenever they are asked for; a deployment to it
/// reaches the robots that match when it is created. A group with robots added by hand is
/// refused (409): take them out first.
#[utoipa::path(put, path = "/api/v1/groups/{name}/query", tag = "groups",
    params(("name" = String, Path, description = "group name, like a robot id")),
    request_body = GroupQuery,
    responses(
        (status = 201, body = Group),
        (status = 200, body = Group),
        (status = 403, body = ErrorBody),
        (status = 409, description = "the group has robots added by hand", body = ErrorBody),
        (status = 422, description = "invalid name, or a query that does not parse: the reason names the column", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn set_query(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<GroupQuery>,
) -> ApiResult<(StatusCode, ApiJson<Group>)> {
    operator.require(Role::Deployer)?;
    validate_group_name(&name)?;
    Query::parse(&request.query)
        .map_err(|error| ApiError::unprocessable(format!("query: {error}")))?;
    let mut write = state.db.begin_write().await?;
    let hand_picked: Vec<String> = sqlx::query_scalar(
        "SELECT robot_id FROM group_members WHERE group_name = $1 ORDER BY robot_id",
    )
    .bind(&name)
    .fetch_all(&mut *write.tx)
    .await?;
    if !hand_picked.is_empty() {
        return Err(ApiError::conflict(format!(
            "group {name} has robots added by hand ({}); a dynamic group's robots come from \
             its query: take them out first, or choose another name",
            hand_picked.join(", ")
        )));
    }
    let inserted = sqlx::query(
        "INSERT INTO robot_groups (name, created_at, member_query) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&name)
    .bind(now_ms())
    .bind(&request.query)
    .execute(&mut *write.tx)
    .await?;
    if inserted.rows_affected() == 0 {
        sqlx::query("UPDATE robot_groups SET member_query = $1 WHERE name = $2")
            .bind(&request.query)
            .bind(&name)
            .execute(&mut *write.tx)
            .await?;
    }
    audit::Record::by(&operator, "group.set_query", format!("group:{name}"))
        .details(serde_json::json!({"query": request.query}))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    let status = if inserted.rows_affected() == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let group = load(&state, &name)
        .await?
        .ok_or_else(|| ApiError::internal("group vanished after its query was set"))?;
    Ok((status, ApiJson(group)))
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
    validate_group_name(&name)?;
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
    match inventory::group_kind(&mut write.tx, &name).await? {
        None => return Err(ApiError::not_found(format!("no group named {name:?}"))),
        Some(Some(_)) => {
            return Err(ApiError::conflict(format!(
                "group {name} is dynamic: its robots are the ones its query matches; \
                 tag the robot instead (rota robots tag {robot_id} NAME=VALUE)"
            )))
        }
        Some(None) => {}
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
