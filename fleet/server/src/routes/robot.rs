//! Robot-facing routes: enroll, poll for the assignment (ETag and long-poll), report events,
//! slot contents and inventory.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{ETAG, HOST, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rota_protocol::operator::{DeploymentKind, DeploymentTarget, ErrorBody};
use rota_protocol::robot::{
    validate_robot_id, validate_tag, Assignment, EnrollRequest, EnrollResponse, EventReport,
    Inventory, SlotsReport, MAX_WAIT_SECS,
};
use serde::Deserialize;
use tokio::time::Instant;

use crate::audit;
use crate::auth::{source_ip, RobotCaller};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult};
use crate::rollout::{self, OFFERED_STATES_SQL};
use crate::routes::env_vars;
use crate::secrets::{self, ROBOT_TOKEN_PREFIX};
use crate::state::AppState;
use crate::time::now_ms;

/// Enroll a robot with the fleet enrollment key; returns its token once.
///
/// An id that is already enrolled is refused (409) so a leaked fleet key cannot take over a
/// robot; an admin removes the old entry first (`rota robots remove ID`). The one exception is
/// the robot itself repeating a request whose answer it lost: same `enrollment_nonce`, new token.
#[utoipa::path(post, path = "/api/v1/robot/enroll", tag = "robot",
    request_body = EnrollRequest,
    responses(
        (status = 201, body = EnrollResponse),
        (status = 200, description = "enrolled before with the same nonce: a new token", body = EnrollResponse),
        (status = 401, description = "wrong enrollment key", body = ErrorBody),
        (status = 409, description = "robot id already enrolled", body = ErrorBody),
        (status = 422, description = "invalid robot id or compatible", body = ErrorBody),
    ))]
pub async fn enroll(
    State(state): State<AppState>,
    parts: axum::http::request::Parts,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, ApiJson<EnrollResponse>)> {
    validate_robot_id(&request.robot_id).map_err(ApiError::unprocessable)?;
    if request.compatible.trim().is_empty() || request.compatible.len() > 128 {
        return Err(ApiError::unprocessable(
            "compatible must be 1 to 128 characters",
        ));
    }
    let stored: Option<String> =
        sqlx::query_scalar("SELECT value FROM settings WHERE name = 'enrollment_key_hash'")
            .fetch_optional(state.db.pool())
            .await?;
    let valid = stored.is_some_and(|hash| secrets::matches_hash(&request.enrollment_key, &hash));
    if !valid {
        return Err(ApiError::unauthorized("invalid enrollment key"));
    }
    let token = secrets::generate(ROBOT_TOKEN_PREFIX);
    let approved = !state.settings.require_approval;
    let nonce_hash = request.enrollment_nonce.as_deref().map(secrets::hash);
    let mut write = state.db.begin_write().await?;
    let inserted = sqlx::query(
        "INSERT INTO robots (id, compatible, token_hash, approved, state, enrolled_at,
                             enroll_nonce_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&request.robot_id)
    .bind(&request.compatible)
    .bind(secrets::hash(&token))
    .bind(i64::from(approved))
    .bind(if approved { "idle" } else { "pending_approval" })
    .bind(now_ms())
    .bind(&nonce_hash)
    .execute(&mut *write.tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return reissue_lost_token(&state, write, parts, request, token).await;
    }
    audit::Record {
        actor: format!("robot:{}", request.robot_id),
        action: "robot.enroll",
        target: Some(format!("robot:{}", request.robot_id)),
        details: Some(serde_json::json!({"compatible": request.compatible, "approved": approved})),
        source_ip: source_ip(&parts, state.settings.trust_forwarded_for),
    }
    .write(&mut write.tx)
    .await?;
    rollout::join::join_open_deployments(&mut write.tx, state.db.backend(), &request.robot_id)
        .await?;
    write.commit().await?;
    tracing::info!(robot = %request.robot_id, approved, "robot enrolled");
    Ok((
        StatusCode::CREATED,
        ApiJson(EnrollResponse {
            robot_id: request.robot_id,
            token,
            approved,
        }),
    ))
}

/// A repeated enrollment of a known id: only the robot that holds the nonce of the first one
/// gets a new token (its first answer was lost); anyone else gets `409`.
async fn reissue_lost_token(
    state: &AppState,
    mut write: crate::db::WriteTx<'_>,
    parts: axum::http::request::Parts,
    request: EnrollRequest,
    token: String,
) -> ApiResult<(StatusCode, ApiJson<EnrollResponse>)> {
    let conflict = || {
        ApiError::conflict(format!(
            "robot {} is already enrolled; an admin must remove it before it can enroll again",
            request.robot_id
        ))
    };
    let stored: Option<(Option<String>, i64)> =
        sqlx::query_as("SELECT enroll_nonce_hash, approved FROM robots WHERE id = $1")
            .bind(&request.robot_id)
            .fetch_optional(&mut *write.tx)
            .await?;
    let Some((Some(nonce_hash), approved)) = stored else {
        return Err(conflict());
    };
    let nonce_matches = request
        .enrollment_nonce
        .as_deref()
        .is_some_and(|nonce| secrets::matches_hash(nonce, &nonce_hash));
    if !nonce_matches {
        return Err(conflict());
    }
    sqlx::query("UPDATE robots SET token_hash = $1 WHERE id = $2")
        .bind(secrets::hash(&token))
        .bind(&request.robot_id)
        .execute(&mut *write.tx)
        .await?;
    audit::Record {
        actor: format!("robot:{}", request.robot_id),
        action: "robot.reenroll",
        target: Some(format!("robot:{}", request.robot_id)),
        details: None,
        source_ip: source_ip(&parts, state.settings.trust_forwarded_for),
    }
    .write(&mut write.tx)
    .await?;
    write.commit().await?;
    tracing::info!(robot = %request.robot_id, "robot enrolled again with its nonce: new token");
    Ok((
        StatusCode::OK,
        ApiJson(EnrollResponse {
            robot_id: request.robot_id,
            token,
            approved: approved != 0,
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PollQuery {
    /// Long-poll: hold the request up to this many seconds (at most 60) until the answer
    /// differs from the `If-None-Match` sent.
    pub wait: Option<u64>,
}

/// The robot's current assignment and its ETag.
async fn current_assignment(
    state: &AppState,
    robot: &RobotCaller,
    host: Option<&str>,
) -> ApiResult<Option<(Assignment, String)>> {
    type Row = (
        String,
        i64,
        String,
        String,
        String,
        i64,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT a.deployment_id, d.forced, r.id, r.version, r.compatible, r.size, r.manifest_hash,
                r.bundle_sha256, d.kind, d.update_window, r.app, d.environment
         FROM assignments a
         JOIN deployments d ON d.id = a.deployment_id
         JOIN releases r ON r.id = a.release_id
         WHERE a.robot_id = $1 AND a.state IN {OFFERED_STATES_SQL}
         ORDER BY a.created_at DESC LIMIT 1"
    ))
    .bind(&robot.id)
    .fetch_optional(state.db.pool())
    .await?;
    let Some((
        deployment_id,
        forced,
        release_id,
        version,
        compatible,
        size,
        manifest_hash,
        sha,
        kind,
        update_window,
        app,
        environment,
    )) = row
    else {
        return Ok(None);
    };
    let (bundle_url, bundle_requires_token) = match &state.settings.bundle_base_url {
        Some(base) => (format!("{base}/{sha}.rota"), false),
        None => {
            let base = match (&state.settings.public_url, host) {
                (Some(url), _) => url.clone(),
                (None, Some(host)) => format!("http://{host}"),
                (None, None) => format!("http://{}", state.settings.listen),
            };
            (format!("{base}/api/v1/releases/{release_id}/bundle"), true)
        }
    };
    // An app gets its environment's variables: the deployment's environment, else the one of
    // the robot's groups.
    let env = match (&app, environment) {
        (None, _) => BTreeMap::new(),
        (Some(_), environment) => {
            let mut conn = state.db.pool().acquire().await?;
            let environment = match environment {
                Some(environment) => Some(environment),
                None => {
                    rollout::environment_of(&mut conn, &DeploymentTarget::Robot(robot.id.clone()))
                        .await?
                        .map(|rules| rules.name)
                }
            };
            match environment {
                Some(environment) => env_vars::values_for_robots(&mut conn, &environment).await?,
                None => BTreeMap::new(),
            }
        }
    };
    let etag = format!("\"{deployment_id}\"");
    Ok(Some((
        Assignment {
            env,
            app,
            deployment_id,
            release_id,
            version,
            compatible,
            bundle_url,
            bundle_requires_token,
            bundle_size: u64::try_from(size).unwrap_or(0),
            manifest_hash,
            force: forced != 0,
            allow_downgrade: kind == DeploymentKind::Rollback.as_str(),
            update_window: update_window
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(ApiError::internal)?,
        },
        etag,
    )))
}

/// Poll for the next assignment.
///
/// 200 with the assignment (and its ETag) while the robot should work on it; 204 when there
/// is nothing; 304 when `If-None-Match` names the current assignment. With `?wait=N` the
/// server holds the request until the answer would differ or N seconds pass, and answers
/// within moments of a new deployment.
#[utoipa::path(get, path = "/api/v1/robot/assignment", tag = "robot",
    params(PollQuery),
    responses(
        (status = 200, body = Assignment, headers(("ETag" = String))),
        (status = 204, description = "nothing to do"),
        (status = 304, description = "the assignment named by If-None-Match is still current"),
        (status = 401, body = ErrorBody),
        (status = 403, description = "operator key, or robot awaiting approval", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn poll(
    State(state): State<AppState>,
    robot: RobotCaller,
    ApiQuery(query): ApiQuery<PollQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    robot.require_approved()?;
    state.last_seen.touch(&robot.id, now_ms());
    let sent_etag = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let deadline = Instant::now() + wait;
    let signal = state.hub.signal(&robot.id);
    let mut shutdown = state.shutdown.clone();
    loop {
        // Interest first, then the read: a deployment committed in between still wakes us.
        let woken = signal.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let current = current_assignment(&state, &robot, host).await?;
        let current_etag = current.as_ref().map(|(_, etag)| etag.as_str());
        if current_etag != sent_etag {
            return Ok(match current {
                Some((assignment, etag)) => assignment_response(assignment, &etag),
                None => StatusCode::NO_CONTENT.into_response(),
            });
        }
        let unchanged = || match &current {
            Some((_, etag)) => not_modified(etag),
            None => StatusCode::NO_CONTENT.into_response(),
        };
        if wait.is_zero() || *shutdown.borrow() {
            return Ok(unchanged());
        }
        tokio::select! {
            _ = &mut woken => continue,
            _ = tokio::time::sleep_until(deadline) => return Ok(unchanged()),
            _ = shutdown.changed() => return Ok(unchanged()),
        }
    }
}

fn assignment_response(assignment: Assignment, etag: &str) -> Response {
    let mut response = ApiJson(assignment).into_response();
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(ETAG, value);
    }
    response
}

fn not_modified(etag: &str) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(ETAG, value);
    }
    response
}

/// Report one step of an assignment. Repeating a report is harmless.
#[utoipa::path(post, path = "/api/v1/robot/events", tag = "robot",
    request_body = EventReport,
    responses(
        (status = 204, description = "recorded"),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "no such assignment for this robot", body = ErrorBody),
        (status = 409, description = "the assignment already ended otherwise", body = ErrorBody),
        (status = 422, description = "unknown event", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn report_event(
    State(state): State<AppState>,
    robot: RobotCaller,
    ApiJson(report): ApiJson<EventReport>,
) -> ApiResult<StatusCode> {
    state.last_seen.touch(&robot.id, now_ms());
    let mut write = state.db.begin_write().await?;
    let offered = rollout::apply_event(
        &mut write.tx,
        state.db.backend(),
        &robot.id,
        &report.deployment_id,
        &report.event,
    )
    .await?;
    write.commit().await?;
    state.wake(&offered).await;
    state.metrics.count_event(report.event.name());
    tracing::info!(robot = %robot.id, deployment = %report.deployment_id, event = report.event.name(), "robot event");
    Ok(StatusCode::NO_CONTENT)
}

/// Report what each slot holds and which one booted.
#[utoipa::path(put, path = "/api/v1/robot/slots", tag = "robot",
    request_body = SlotsReport,
    responses((status = 204, description = "recorded"), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn report_slots(
    State(state): State<AppState>,
    robot: RobotCaller,
    ApiJson(report): ApiJson<SlotsReport>,
) -> ApiResult<StatusCode> {
    let json = serde_json::to_string(&report).map_err(ApiError::internal)?;
    let mut write = state.db.begin_write().await?;
    // Before the update below: it compares with the version stored so far.
    crate::history::note_reported_version(
        &mut write.tx,
        &robot.id,
        report.running_version(),
        now_ms(),
    )
    .await?;
    sqlx::query("UPDATE robots SET slots_json = $1, version = COALESCE($2, version), last_seen = $3 WHERE id = $4")
        .bind(json)
        .bind(report.running_version().map(str::to_string))
        .bind(now_ms())
        .bind(&robot.id)
        .execute(&mut *write.tx)
        .await?;
    write.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Report what the robot is and has: board, OS, kernel, addresses, disk, its own tags. Robots
/// send it at start-up and when it changed; the time it was stored moves only on a change.
#[utoipa::path(put, path = "/api/v1/robot/inventory", tag = "robot",
    request_body = Inventory,
    responses(
        (status = 204, description = "recorded"),
        (status = 401, body = ErrorBody),
        (status = 422, description = "an invalid tag", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn report_inventory(
    State(state): State<AppState>,
    robot: RobotCaller,
    ApiJson(inventory): ApiJson<Inventory>,
) -> ApiResult<StatusCode> {
    for (name, value) in &inventory.tags {
        validate_tag(name, value).map_err(ApiError::unprocessable)?;
    }
    let json = serde_json::to_string(&inventory).map_err(ApiError::internal)?;
    let now = now_ms();
    state.last_seen.touch(&robot.id, now);
    let mut write = state.db.begin_write().await?;
    sqlx::query(
        "UPDATE robots SET inventory_at = CASE WHEN inventory_json = $1 THEN inventory_at ELSE $2 END,
                           inventory_json = $3
         WHERE id = $4",
    )
    .bind(&json)
    .bind(now)
    .bind(&json)
    .bind(&robot.id)
    .execute(&mut *write.tx)
    .await?;
    write.commit().await?;
    tracing::debug!(robot = %robot.id, "inventory reported");
    Ok(StatusCode::NO_CONTENT)
}
