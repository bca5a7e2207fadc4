//! Who is calling: an operator (API key with a role) or a robot (its token). The two kinds of
//! credential never open each other's doors: a robot token on an operator route, or an
//! operator key on a robot route, is refused before any lookup.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rota_protocol::operator::Role;

use crate::error::{ApiError, ApiResult};
use crate::secrets::{self, OPERATOR_KEY_PREFIX, ROBOT_TOKEN_PREFIX};
use crate::state::AppState;

/// An operator authenticated by API key.
#[derive(Debug, Clone)]
pub struct Operator {
    pub key_id: String,
    pub name: String,
    pub role: Role,
    pub source_ip: Option<String>,
}

impl Operator {
    /// Refuses with 403 unless the key's role is at least `role`.
    pub fn require(&self, role: Role) -> ApiResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this call needs the {role} role; key {} has {}",
                self.key_id, self.role
            )))
        }
    }

    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("key:{} ({})", self.key_id, self.name)
    }
}

/// A robot authenticated by its token.
#[derive(Debug, Clone)]
pub struct RobotCaller {
    pub id: String,
    pub compatible: String,
    pub approved: bool,
}

impl RobotCaller {
    /// Refuses robots an admin has not approved yet.
    pub fn require_approved(&self) -> ApiResult<()> {
        if self.approved {
            Ok(())
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "not_approved",
                format!("robot {} is waiting for an admin's approval", self.id),
            ))
        }
    }
}

/// Either kind of caller; only bundle downloads accept both.
#[derive(Debug, Clone)]
pub enum Caller {
    Operator(Operator),
    Robot(RobotCaller),
}

fn bearer(parts: &Parts) -> ApiResult<&str> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization header is not Bearer <token>"))
}

/// Client address for the audit log.
pub fn source_ip(parts: &Parts, trust_forwarded_for: bool) -> Option<String> {
    if trust_forwarded_for {
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_string());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip().to_string())
}

async fn operator_from_token(state: &AppState, parts: &Parts, token: &str) -> ApiResult<Operator> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT id, name, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(secrets::hash(token))
    .fetch_optional(state.db.pool())
    .await?;
    let (key_id, name, role) =
        row.ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
    let role = role.parse().map_err(ApiError::internal)?;
    Ok(Operator {
        key_id,
        name,
        role,
        source_ip: source_ip(parts, state.settings.trust_forwarded_for),
    })
}

async fn robot_from_token(state: &AppState, token: &str) -> ApiResult<RobotCaller> {
    let row: Option<(String, String, i64)> =
        sqlx::query_as("SELECT id, compatible, approved FROM robots WHERE token_hash = $1")
            .bind(secrets::hash(token))
            .fetch_optional(state.db.pool())
            .await?;
    let (id, compatible, approved) =
        row.ok_or_else(|| ApiError::unauthorized("unknown robot token; enroll again"))?;
    Ok(RobotCaller {
        id,
        compatible,
        approved: approved != 0,
    })
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(parts)?;
        if token.starts_with(ROBOT_TOKEN_PREFIX) {
            return Err(ApiError::forbidden(
                "robot tokens cannot call operator endpoints",
            ));
        }
        operator_from_token(state, parts, token).await
    }
}

impl FromRequestParts<AppState> for RobotCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(parts)?;
        if token.starts_with(OPERATOR_KEY_PREFIX) {
            return Err(ApiError::forbidden(
                "operator API keys cannot call robot endpoints",
            ));
        }
        robot_from_token(state, token).await
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(parts)?;
        if token.starts_with(ROBOT_TOKEN_PREFIX) {
            Ok(Caller::Robot(robot_from_token(state, token).await?))
        } else {
            Ok(Caller::Operator(
                operator_from_token(state, parts, token).await?,
            ))
        }
    }
}
