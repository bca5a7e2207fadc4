//! Operator views of robots: list, read, tag, approve, remove, history.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::http::StatusCode;
use rota_protocol::operator::{
    ErrorBody, HistoryEntry, Robot, RobotFailure, RobotReleaseHistory, Role, TagsRequest,
};
use rota_protocol::robot::validate_tag;
use serde::Deserialize;
use sqlx::AnyConnection;

use crate::audit;
use crate::auth::Operator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::history;
use crate::inventory;
use crate::query::{Facts, Query};
use crate::rollout::{self, OFFERED_STATES_SQL};
use crate::routes::time_param;
use crate::state::AppState;
use crate::time::{now_ms, rfc3339};

const ROBOT_COLUMNS: &str = "id, compatible, approved, state, progress, version, slots_json, \
     enrolled_at, last_seen, inventory_json, inventory_at";
type RobotRow = (
    String,
    String,
    i64,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// What a robot row does not hold: the tables around it, read once per listing.
struct Around {
    groups: HashMap<String, Vec<String>>,
    tags: HashMap<String, BTreeMap<String, String>>,
    failures: HashMap<String, RobotFailure>,
    dynamic_groups: Vec<(String, Query)>,
}

impl Around {
    /// For every robot (`None`) or one.
    async fn load(conn: &mut AnyConnection, robot_id: Option<&str>) -> ApiResult<Around> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT robot_id, group_name FROM group_members WHERE ($1 = '' OR robot_id = $2)
             ORDER BY group_name",
        )
        .bind(robot_id.unwrap_or_default())
        .bind(robot_id.unwrap_or_default())
        .fetch_all(&mut *conn)
        .await?;
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for (robot, group) in rows {
            groups.entry(robot).or_default().push(group);
        }
        Ok(Around {
            groups,
            tags: inventory::operator_tags(conn, robot_id).await?,
            failures: last_failures(conn, robot_id).await?,
            dynamic_groups: inventory::dynamic_groups(conn).await?,
        })
    }

    fn robot(&mut self, state: &AppState, row: RobotRow) -> Robot {
        let (
            id,
            compatible,
            approved,
            robot_state,
            progress,
            version,
            slots_json,
            enrolled_at,
            last_seen,
            inventory_json,
            inventory_at,
        ) = row;
        // Polls update last-seen in memory first; show the freshest value.
        let last_seen = match (state.last_seen.get(&id), last_seen) {
            (Some(fresh), Some(stored)) => Some(fresh.max(stored)),
            (fresh, stored) => fresh.or(stored),
        };
        let mut robot = Robot {
            compatible,
            approved: approved != 0,
            state: robot_state,
            progress: progress.and_then(|p| u8::try_from(p).ok()),
            version,
            groups: self.groups.remove(&id).unwrap_or_default(),
            enrolled_at: rfc3339(enrolled_at),
            last_seen: last_seen.map(rfc3339),
            slots: slots_json.and_then(|json| serde_json::from_str(&json).ok()),
            inventory: inventory::parse_inventory(inventory_json.as_deref()),
            inventory_at: inventory_at.map(rfc3339),
            tags: self.tags.remove(&id).unwrap_or_default(),
            last_failure: self.failures.remove(&id),
            id,
        };
        let facts = Facts {
            id: &robot.id,
            compatible: &robot.compatible,
            version: robot.version.as_deref(),
            state: &robot.state,
            inventory: robot.inventory.as_ref(),
            tags: &robot.tags,
        };
        let dynamic: Vec<String> = self
            .dynamic_groups
            .iter()
            .filter(|(_, query)| query.matches(&facts))
            .map(|(name, _)| name.clone())
            .collect();
        robot.groups.extend(dynamic);
        robot.groups.sort();
        robot
    }
}

/// Each robot's latest rollback or failure.
async fn last_failures(
    conn: &mut AnyConnection,
    robot_id: Option<&str>,
) -> ApiResult<HashMap<String, RobotFailure>> {
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT e.robot_id, e.event, e.deployment_id, r.version, e.detail, e.at
         FROM robot_events e LEFT JOIN releases r ON r.id = e.release_id
         WHERE e.id IN (SELECT MAX(id) FROM robot_events
                        WHERE event IN ('rolled_back', 'failed') AND ($1 = '' OR robot_id = $2)
                        GROUP BY robot_id)",
    )
    .bind(robot_id.unwrap_or_default())
    .bind(robot_id.unwrap_or_default())
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(robot, event, deployment_id, version, detail, at)| {
            let failure = RobotFailure {
                event,
                deployment_id,
                version,
                detail,
                at: rfc3339(at),
            };
            (robot, failure)
        })
        .collect())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RobotsQuery {
    /// Only robots in this group.
    pub group: Option<String>,
}

/// List robots.
#[utoipa::path(get, path = "/api/v1/robots", tag = "robots",
    params(RobotsQuery),
    responses((status = 200, body = Vec<Robot>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<RobotsQuery>,
) -> ApiResult<ApiJson<Vec<Robot>>> {
    let mut conn = state.db.pool().acquire().await?;
    let rows: Vec<RobotRow> =
        sqlx::query_as(&format!("SELECT {ROBOT_COLUMNS} FROM robots ORDER BY id"))
            .fetch_all(&mut *conn)
            .await?;
    let mut around = Around::load(&mut conn, None).await?;
    let robots = rows
        .into_iter()
        .map(|row| around.robot(&state, row))
        .filter(|robot| {
            query
                .group
                .as_ref()
                .is_none_or(|g| robot.groups.contains(g))
        })
        .collect();
    Ok(ApiJson(robots))
}

pub async fn find(state: &AppState, id: &str) -> ApiResult<Robot> {
    let mut conn = state.db.pool().acquire().await?;
    let row: Option<RobotRow> =
        sqlx::query_as(&format!("SELECT {ROBOT_COLUMNS} FROM robots WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("no robot with id {id:?}")))?;
    let mut around = Around::load(&mut conn, Some(id)).await?;
    Ok(around.robot(state, row))
}

/// Read one robot.
#[utoipa::path(get, path = "/api/v1/robots/{id}", tag = "robots",
    params(("id" = String, Path, description = "robot id")),
    responses((status = 200, body = Robot), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _operator: Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<Robot>> {
    Ok(ApiJson(find(&state, &id).await?))
}

/// Set and remove a robot's operator tags (deployer). Its own tags, from its config, are not
/// touched; an operator tag of the same name wins over one.
#[utoipa::path(patch, path = "/api/v1/robots/{id}/tags", tag = "robots",
    params(("id" = String, Path, description = "robot id")),
    request_body = TagsRequest,
    responses(
        (status = 200, body = Robot),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "invalid tag name or value", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn tag(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<TagsRequest>,
) -> ApiResult<ApiJson<Robot>> {
    operator.require(Role::Deployer)?;
    for (name, value) in &request.set {
        validate_tag(name, value).map_err(ApiError::unprocessable)?;
    }
    if let Some(both) = request
        .remove
        .iter()
        .find(|name| request.set.contains_key(*name))
    {
        return Err(ApiError::unprocessable(format!(
            "tag {both} is both set and removed"
        )));
    }
    let mut write = state.db.begin_write().await?;
    let robot: Option<String> = sqlx::query_scalar("SELECT id FROM robots WHERE id = $1")
        .bind(&id)
        .fetch_optional(&mut *write.tx)
        .await?;
    if robot.is_none() {
        return Err(ApiError::not_found(format!("no robot with id {id:?}")));
    }
    for name in &request.remove {
        sqlx::query("DELETE FROM robot_tags WHERE robot_id = $1 AND name = $2")
            .bind(&id)
            .bind(name)
            .execute(&mut *write.tx)
            .await?;
    }
    for (name, value) in &request.set {
        sqlx::query(
            "INSERT INTO robot_tags (robot_id, name, value) VALUES ($1, $2, $3)
             ON CONFLICT (robot_id, name) DO UPDATE SET value = excluded.value",
        )
        .bind(&id)
        .bind(name)
        .bind(value)
        .execute(&mut *write.tx)
        .await?;
    }
    audit::Record::by(&operator, "robot.tag", format!("robot:{id}"))
        .details(serde_json::json!({"set": request.set, "remove": request.remove}))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    Ok(ApiJson(find(&state, &id).await?))
}

/// Approve a robot that enrolled while the fleet requires approval (admin).
#[utoipa::path(post, path = "/api/v1/robots/{id}/approve", tag = "robots",
    params(("id" = String, Path, description = "robot id")),
    responses((status = 200, body = Robot), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn approve(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<Robot>> {
    operator.require(Role::Admin)?;
    let mut write = state.db.begin_write().await?;
    let updated = sqlx::query(
        "UPDATE robots SET approved = 1, state = CASE WHEN state = 'pending_approval' THEN 'idle' ELSE state END WHERE id = $1",
    )
    .bind(&id)
    .execute(&mut *write.tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("no robot with id {id:?}")));
    }
    audit::Record::by(&operator, "robot.approve", format!("robot:{id}"))
        .write(&mut write.tx)
        .await?;
    // Open deployments skipped the robot only for want of approval: it joins them now.
    sqlx::query(
        "DELETE FROM assignments WHERE robot_id = $1 AND state = 'skipped'
           AND detail = 'robot is waiting for approval'
           AND deployment_id IN (SELECT id FROM deployments
                                 WHERE state IN ('running', 'paused', 'awaiting_approval'))",
    )
    .bind(&id)
    .execute(&mut *write.tx)
    .await?;
    let woken =
        rollout::join::join_open_deployments(&mut write.tx, state.db.backend(), &id).await?;
    write.commit().await?;
    if woken {
        state.wake(std::slice::from_ref(&id)).await;
    }
    Ok(ApiJson(find(&state, &id).await?))
}

/// Remove a robot: its token stops working and it may enroll again (admin). Its history stays.
#[utoipa::path(delete, path = "/api/v1/robots/{id}", tag = "robots",
    params(("id" = String, Path, description = "robot id")),
    responses((status = 204, description = "removed"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    operator.require(Role::Admin)?;
    let mut write = state.db.begin_write().await?;
    let deleted = sqlx::query("DELETE FROM robots WHERE id = $1")
        .bind(&id)
        .execute(&mut *write.tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found(format!("no robot with id {id:?}")));
    }
    // Its unfinished assignments can never finish now; end them so their deployments can.
    let open: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT deployment_id FROM assignments WHERE robot_id = $1 AND (state IN {OFFERED_STATES_SQL} OR state = 'waiting')"
    ))
    .bind(&id)
    .fetch_all(&mut *write.tx)
    .await?;
    sqlx::query(&format!(
        "UPDATE assignments SET state = 'cancelled', detail = 'robot removed', updated_at = $1, finished_at = $2
         WHERE robot_id = $3 AND (state IN {OFFERED_STATES_SQL} OR state = 'waiting')"
    ))
    .bind(now_ms())
    .bind(now_ms())
    .bind(&id)
    .execute(&mut *write.tx)
    .await?;
    for deployment_id in open {
        rollout::engine::evaluate(&mut write.tx, state.db.backend(), &deployment_id).await?;
    }
    audit::Record::by(&operator, "robot.remove", format!("robot:{id}"))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The robots a dynamic group matches now; `None` for a hand-picked or unknown group.
async fn dynamic_members(conn: &mut AnyConnection, group: &str) -> ApiResult<Option<Vec<String>>> {
    let Some(Some(query)) = inventory::group_kind(conn, group).await? else {
        return Ok(None);
    };
    let robots = inventory::matching(conn, &query).await?;
    Ok(Some(robots.into_iter().map(|robot| robot.id).collect()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct HistoryQuery {
    /// Only this robot's history.
    pub robot: Option<String>,
    /// Only robots now in this group.
    pub group: Option<String>,
    /// Only this deployment's events.
    pub deployment: Option<String>,
    /// Only events at or after this RFC 3339 UTC time.
    pub since: Option<String>,
    /// Only events at or before this RFC 3339 UTC time.
    pub until: Option<String>,
    /// At most this many entries, newest first. [default: 100, at most 10000]
    pub limit: Option<i64>,
}

/// What robots reported, newest first.
#[utoipa::path(get, path = "/api/v1/history", tag = "robots",
    params(HistoryQuery),
    responses((status = 200, body = Vec<HistoryEntry>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<ApiJson<Vec<HistoryEntry>>> {
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let since = time_param("since", query.since.as_deref())?;
    let until = time_param("until", query.until.as_deref())?;
    type Row = (
        i64,
        String,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        i64,
    );
    let mut conn = state.db.pool().acquire().await?;
    let dynamic_members = match &query.group {
        Some(group) => dynamic_members(&mut conn, group).await?,
        None => None,
    };
    // Empty strings stand for "any", so one statement serves every filter combination. A
    // dynamic group has no member rows: its robots are listed, `$N` numbered in order of
    // appearance because that is how SQLite binds them.
    let (group_sql, next) = match &dynamic_members {
        Some(ids) if ids.is_empty() => return Ok(ApiJson(Vec::new())),
        Some(ids) => {
            let list: Vec<String> = (5..5 + ids.len()).map(|n| format!("${n}")).collect();
            (
                format!("e.robot_id IN ({})", list.join(", ")),
                5 + ids.len(),
            )
        }
        None => (
            "($5 = '' OR e.robot_id IN (SELECT robot_id FROM group_members WHERE group_name = $6))"
                .to_string(),
            7,
        ),
    };
    let sql = format!(
        "SELECT e.id, e.robot_id, e.deployment_id, r.version, e.event, e.detail, e.at
         FROM robot_events e LEFT JOIN releases r ON r.id = e.release_id
         WHERE ($1 = '' OR e.robot_id = $2) AND ($3 = '' OR e.deployment_id = $4)
           AND {group_sql} AND e.at >= ${} AND e.at <= ${}
         ORDER BY e.id DESC LIMIT ${}",
        next,
        next + 1,
        next + 2
    );
    let mut statement = sqlx::query_as(&sql)
        .bind(query.robot.clone().unwrap_or_default())
        .bind(query.robot.unwrap_or_default())
        .bind(query.deployment.clone().unwrap_or_default())
        .bind(query.deployment.unwrap_or_default());
    match dynamic_members {
        Some(ids) => {
            for id in ids {
                statement = statement.bind(id);
            }
        }
        None => {
            statement = statement
                .bind(query.group.clone().unwrap_or_default())
                .bind(query.group.unwrap_or_default());
        }
    }
    let rows: Vec<Row> = statement
        .bind(since.unwrap_or(i64::MIN))
        .bind(until.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    Ok(ApiJson(
        rows.into_iter()
            .map(
                |(id, robot_id, deployment_id, version, event, detail, at)| HistoryEntry {
                    id,
                    robot_id,
                    deployment_id,
                    version,
                    event,
                    detail,
                    at: rfc3339(at),
                },
            )
            .collect(),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReleaseHistoryQuery {
    /// Only this robot.
    pub robot: Option<String>,
    /// Only robots now in this group.
    pub group: Option<String>,
    /// Only this app's releases. [default: each robot's OS releases, then each app's]
    pub app: Option<String>,
    /// Only runs that lasted until this RFC 3339 UTC time or later.
    pub since: Option<String>,
    /// Only runs that started at or before this RFC 3339 UTC time.
    pub until: Option<String>,
}

/// Every release each robot ran, oldest first: since when, how it got there (a deployment, the
/// robot's own rollback, or a local install no deployment explains) and how it ended.
#[utoipa::path(get, path = "/api/v1/history/releases", tag = "robots",
    params(ReleaseHistoryQuery),
    responses(
        (status = 200, body = Vec<RobotReleaseHistory>),
        (status = 400, description = "unreadable since or until", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "no such robot or group", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn release_history(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<ReleaseHistoryQuery>,
) -> ApiResult<ApiJson<Vec<RobotReleaseHistory>>> {
    let mut filter = history::Filter {
        since_ms: time_param("since", query.since.as_deref())?,
        until_ms: time_param("until", query.until.as_deref())?,
        robot: query.robot,
        group: query.group,
        app: query.app,
    };
    let mut conn = state.db.pool().acquire().await?;
    // A dynamic group has no member rows: load every robot's and keep its robots.
    let dynamic_members = match &filter.group {
        Some(group) => dynamic_members(&mut conn, group).await?,
        None => None,
    };
    if dynamic_members.is_some() {
        filter.group = None;
    }
    if let Some(group) = &filter.group {
        let exists: Option<String> =
            sqlx::query_scalar("SELECT name FROM robot_groups WHERE name = $1")
                .bind(group)
                .fetch_optional(&mut *conn)
                .await?;
        if exists.is_none() {
            return Err(ApiError::not_found(format!("no group named {group:?}")));
        }
    }
    let mut histories = history::load(&mut conn, &filter).await?;
    if let Some(ids) = dynamic_members {
        histories.retain(|history| ids.contains(&history.robot_id));
    }
    if let Some(robot) = &filter.robot {
        // With an app named, a robot that never ran that app has no history: not an error.
        if histories.is_empty() && filter.app.is_none() {
            return Err(ApiError::not_found(format!(
                "no robot with id {robot:?}, enrolled now or in the history"
            )));
        }
    }
    Ok(ApiJson(histories))
}
