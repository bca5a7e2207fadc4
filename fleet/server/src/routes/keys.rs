//! Operator API keys: who am I, create (shown once), list, revoke.

use axum::extract::State;
use axum::http::StatusCode;
use rota_protocol::operator::{
    ApiKeyInfo, CreateApiKeyRequest, CreatedApiKey, ErrorBody, Role, WhoAmI,
};

use crate::audit;
use crate::auth::Operator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::secrets::{self, OPERATOR_KEY_PREFIX};
use crate::state::AppState;
use crate::time::{now_ms, rfc3339};

/// The calling key's id, name and role.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "keys",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn whoami(operator: Operator) -> ApiJson<WhoAmI> {
    ApiJson(WhoAmI {
        key_id: operator.key_id,
        name: operator.name,
        role: operator.role,
    })
}

/// List API keys, revoked ones included (admin).
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "keys",
    responses((status = 200, body = Vec<ApiKeyInfo>), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    operator: Operator,
) -> ApiResult<ApiJson<Vec<ApiKeyInfo>>> {
    operator.require(Role::Admin)?;
    let rows: Vec<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
    )
    .fetch_all(state.db.pool())
    .await?;
    rows.into_iter()
        .map(|(id, name, role, created_at, revoked_at)| {
            Ok(ApiKeyInfo {
                id,
                name,
                role: role.parse().map_err(ApiError::internal)?,
                created_at: rfc3339(created_at),
                revoked_at: revoked_at.map(rfc3339),
            })
        })
        .collect::<ApiResult<Vec<_>>>()
        .map(ApiJson)
}

/// Stores a new key's hash; returns its info. Used by the API and by the bootstrap.
pub async fn insert_key(
    conn: &mut sqlx::AnyConnection,
    key: &str,
    name: &str,
    role: Role,
    created_by: &str,
) -> Result<ApiKeyInfo, sqlx::Error> {
    let id = format!("key_{}", secrets::random_hex(6));
    let now = now_ms();
    sqlx::query(
        "INSERT INTO api_keys (id, name, role, key_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(name)
    .bind(role.as_str())
    .bind(secrets::hash(key))
    .bind(now)
    .bind(created_by)
    .execute(conn)
    .await?;
    Ok(ApiKeyInfo {
        id,
        name: name.into(),
        role,
        created_at: rfc3339(now),
        revoked_at: None,
    })
}

/// Create an API key (admin). The key is in this answer only.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "keys",
    request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    operator: Operator,
    ApiJson(request): ApiJson<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, ApiJson<CreatedApiKey>)> {
    operator.require(Role::Admin)?;
    let name = request.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::unprocessable("name must be 1 to 100 characters"));
    }
    let key = secrets::generate(OPERATOR_KEY_PREFIX);
    let mut write = state.db.begin_write().await?;
    let info = insert_key(&mut write.tx, &key, name, request.role, &operator.actor()).await?;
    audit::Record::by(&operator, "api_key.create", format!("key:{}", info.id))
        .details(serde_json::json!({"name": name, "role": request.role}))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    Ok((StatusCode::CREATED, ApiJson(CreatedApiKey { info, key })))
}

/// Revoke an API key (admin). A key cannot revoke itself, so an admin cannot lock everyone out
/// by accident.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "key id")),
    responses((status = 204, description = "revoked"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    operator.require(Role::Admin)?;
    if id == operator.key_id {
        return Err(ApiError::conflict(
            "a key cannot revoke itself; use another admin key",
        ));
    }
    let mut write = state.db.begin_write().await?;
    let updated =
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(&id)
            .execute(&mut *write.tx)
            .await?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::not_found(format!(
            "no active API key with id {id:?}"
        )));
    }
    audit::Record::by(&operator, "api_key.revoke", format!("key:{id}"))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
