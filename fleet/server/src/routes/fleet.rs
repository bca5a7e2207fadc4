//! The fleet at a glance, and the audit log.

use std::collections::BTreeMap;

use axum::extract::State;
use rota_protocol::operator::{AuditEntry, ErrorBody, FleetStatus};
use serde::Deserialize;

use crate::auth::Operator;
use crate::error::{ApiJson, ApiQuery, ApiResult};
use crate::routes::deployments;
use crate::routes::time_param;
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
    /// Only entries at or after this RFC 3339 UTC time.
    pub since: Option<String>,
    /// Only entries at or before this RFC 3339 UTC time.
    pub until: Option<String>,
    /// Only entries whose actor contains this text, ignoring case (`github`, a key id, a name).
    pub actor: Option<String>,
    /// Only this action, or every action under it: `release` matches `release.publish`.
    pub action: Option<String>,
}

/// `text` as a LIKE pattern that matches it literally (escape character `\`).
fn like_literal(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}

/// The append-only audit log of operator actions and enrollments, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "fleet",
    params(AuditQuery),
    responses(
        (status = 200, body = Vec<AuditEntry>),
        (status = 400, description = "unreadable since or until", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn audit(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<ApiJson<Vec<AuditEntry>>> {
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let since = time_param("since", query.since.as_deref())?.unwrap_or(i64::MIN);
    let until = time_param("until", query.until.as_deref())?.unwrap_or(i64::MAX);
    let actor = query.actor.as_deref().unwrap_or_default().to_lowercase();
    let action = query.action.unwrap_or_default();
    type Row = (
        i64,
        i64,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    // Empty strings stand for "any", so one statement serves every filter combination.
    let rows: Vec<Row> = sqlx::query_as(
        r"SELECT id, at, actor, action, target, details, source_ip FROM audit_log
         WHERE id < $1 AND at >= $2 AND at <= $3
           AND ($4 = '' OR LOWER(actor) LIKE $5 ESCAPE '\')
           AND ($6 = '' OR action = $7 OR action LIKE $8 ESCAPE '\')
         ORDER BY id DESC LIMIT $9",
    )
    .bind(query.before.unwrap_or(i64::MAX))
    .bind(since)
    .bind(until)
    .bind(&actor)
    .bind(format!("%{}%", like_literal(&actor)))
    .bind(&action)
    .bind(&action)
    .bind(format!("{}.%", like_literal(&action)))
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
