//! The fleet at a glance, and the audit log.

use std::collections::BTreeMap;

use axum::extract::State;
use rota_protocol::operator::{AuditEntry, ErrorBody, FleetStatus};
use serde::Deserialize;

use crate::auth::Operator;
use crate::error::{ApiJson, ApiQuery, ApiResult};
use crate::routes::deployments;
use crate::state::AppState;
use crate::time::rfc3339;

fn to_map(rows: Vec<(Option<String>, i64)>) -> BTreeMap<String, u64> {
    rows.into_iter()
        .map(|(key, n)| {
            (
                key.unwrap_or_else(|| "unknown".into()),
                u64::try_from(n).unwrap_or(0),
            )
        })
        .collect()
}

/// Robots by state and version, releases, running deployments.
#[utoipa::path(get, path = "/api/v1/status", tag = "fleet",
    responses((status = 200, body = FleetStatus), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn status(
    State(state): State<AppState>,
    _operator: Operator,
) -> ApiResult<ApiJson<FleetStatus>> {
    let pool = state.db.pool();
    let by_state: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM robots GROUP BY state")
            .fetch_all(pool)
            .await?;
    let by_version: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT version, COUNT(*) FROM robots GROUP BY version")
            .fetch_all(pool)
            .await?;
    let releases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM releases")
        .fetch_one(pool)
        .await?;
    let robots_by_state = to_map(by_state);
    Ok(ApiJson(FleetStatus {
        robots: robots_by_state.values().sum(),
        robots_by_state,
        robots_by_version: to_map(by_version),
        releases: u64::try_from(releases).unwrap_or(0),
        running_deployments: deployments::list_where(&state, Some("running"), 100).await?,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Only entries with an id below this (paging backwards).
    pub before: Option<i64>,
    /// At most this many, newest first. [default: 100, at most 10000]
    pub limit: Option<i64>,
}

/// The append-only audit log of operator actions and enrollments, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "fleet",
    params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn audit(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<ApiJson<Vec<AuditEntry>>> {
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    type Row = (
        i64,
        i64,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, at, actor, action, target, details, source_ip FROM audit_log
         WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(query.before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(state.db.pool())
    .await?;
    Ok(ApiJson(
        rows.into_iter()
            .map(
                |(id, at, actor, action, target, details, source_ip)| AuditEntry {
                    id,
                    at: rfc3339(at),
                    actor,
                    action,
                    target,
                    details: details.and_then(|d| serde_json::from_str(&d).ok()),
                    source_ip,
                },
            )
            .collect(),
    ))
}
