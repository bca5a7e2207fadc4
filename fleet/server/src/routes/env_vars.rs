//! An environment's variables and secrets: set by admins, delivered with app assignments to
//! the environment's robots. A secret's value leaves the server only towards a robot: it is
//! never answered to an operator, never written to the audit log, never logged.

use axum::extract::State;
use axum::http::StatusCode;
use rota_protocol::operator::{validate_env_var, EnvVar, ErrorBody, Role, SetEnvVar};
use sqlx::AnyConnection;
use std::collections::BTreeMap;

use crate::audit;
use crate::auth::Operator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::state::AppState;
use crate::time::{now_ms, rfc3339};

type VarRow = (String, String, i64, i64, i64, String);

fn var_from_row((name, value, secret, version, updated_at, updated_by): VarRow) -> EnvVar {
    let secret = secret != 0;
    EnvVar {
        name,
        secret,
        value: (!secret).then_some(value),
        version: u64::try_from(version).unwrap_or(0),
        updated_at: rfc3339(updated_at),
        updated_by,
    }
}

async fn environment_exists(conn: &mut AnyConnection, name: &str) -> ApiResult<()> {
    let found: Option<String> = sqlx::query_scalar("SELECT name FROM environments WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found(format!("no environment named {name:?}")))
}

/// The variables of `environment` as its robots get them, values included.
pub async fn values_for_robots(
    conn: &mut AnyConnection,
    environment: &str,
) -> ApiResult<BTreeMap<String, String>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT name, value FROM environment_vars WHERE environment = $1")
            .bind(environment)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// List an environment's variables; secrets without their values.
#[utoipa::path(get, path = "/api/v1/environments/{name}/vars", tag = "environments",
    params(("name" = String, Path, description = "environment name")),
    responses((status = 200, body = Vec<EnvVar>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<ApiJson<Vec<EnvVar>>> {
    let mut conn = state.db.pool().acquire().await?;
    environment_exists(&mut conn, &name).await?;
    let rows: Vec<VarRow> = sqlx::query_as(
        "SELECT name, value, secret, version, updated_at, updated_by FROM environment_vars
         WHERE environment = $1 ORDER BY name",
    )
    .bind(&name)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ApiJson(rows.into_iter().map(var_from_row).collect()))
}

/// Set a variable or secret of an environment (admin). Robots get it with their next app
/// assignment; the answer and the audit log name it and its version, never a secret's value.
#[utoipa::path(put, path = "/api/v1/environments/{name}/vars/{var}", tag = "environments",
    params(("name" = String, Path, description = "environment name"),
           ("var" = String, Path, description = "variable name")),
    request_body = SetEnvVar,
    responses(
        (status = 200, body = EnvVar),
        (status = 403, description = "needs the admin role", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "invalid name or value", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath((name, var)): ApiPath<(String, String)>,
    ApiJson(request): ApiJson<SetEnvVar>,
) -> ApiResult<ApiJson<EnvVar>> {
    operator.require(Role::Admin)?;
    validate_env_var(&var, &request.value).map_err(ApiError::unprocessable)?;
    let mut write = state.db.begin_write().await?;
    environment_exists(&mut write.tx, &name).await?;
    let now = now_ms();
    let version: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM environment_vars WHERE environment = $1 AND name = $2",
    )
    .bind(&name)
    .bind(&var)
    .fetch_optional(&mut *write.tx)
    .await?;
    let version = version.unwrap_or(0) + 1;
    sqlx::query(
        "INSERT INTO environment_vars (environment, name, value, secret, version, updated_at, updated_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (environment, name) DO UPDATE SET value = $3, secret = $4, version = $5,
             updated_at = $6, updated_by = $7",
    )
    .bind(&name)
    .bind(&var)
    .bind(&request.value)
    .bind(i64::from(request.secret))
    .bind(version)
    .bind(now)
    .bind(operator.actor())
    .execute(&mut *write.tx)
    .await?;
    audit::Record::by(&operator, "environment.var.set", format!("env:{name}"))
        .details(serde_json::json!({ "name": var, "secret": request.secret, "version": version }))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    Ok(ApiJson(var_from_row((
        var,
        request.value,
        i64::from(request.secret),
        version,
        now,
        operator.actor(),
    ))))
}

/// Remove a variable from an environment (admin).
#[utoipa::path(delete, path = "/api/v1/environments/{name}/vars/{var}", tag = "environments",
    params(("name" = String, Path, description = "environment name"),
           ("var" = String, Path, description = "variable name")),
    responses((status = 204, description = "removed"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath((name, var)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    operator.require(Role::Admin)?;
    let mut write = state.db.begin_write().await?;
    let deleted = sqlx::query("DELETE FROM environment_vars WHERE environment = $1 AND name = $2")
        .bind(&name)
        .bind(&var)
        .execute(&mut *write.tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::not_found(format!(
            "environment {name:?} has no variable {var:?}"
        )));
    }
    audit::Record::by(&operator, "environment.var.unset", format!("env:{name}"))
        .details(serde_json::json!({ "name": var }))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
