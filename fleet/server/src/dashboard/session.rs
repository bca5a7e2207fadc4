//! Dashboard sessions: a browser logs in once with an operator API key and then holds a
//! session cookie (HttpOnly, SameSite=Strict) instead of the key.
//!
//! Every change the dashboard asks for must also carry the session's CSRF token in the
//! `X-CSRF-Token` header (compared in constant time) and, when the browser names one, an
//! `Origin` equal to the server's own. The session stands for its API key: the key's role is
//! read at each request and the API's own handlers check it, so a session can do exactly what
//! its key can, and revoking the key ends the session.

use axum::extract::{FromRequestParts, State};
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rota_protocol::operator::Role;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::audit;
use crate::auth::{source_ip, Operator};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::secrets;
use crate::state::AppState;
use crate::time::now_ms;

pub const COOKIE_NAME: &str = "rota_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts; the browser asks for the key again after that.
const LIFETIME_MS: i64 = 12 * 60 * 60 * 1000;

/// What the page needs to know about who is logged in; the CSRF token goes with every change.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub key_id: String,
    pub name: String,
    pub role: Role,
    pub csrf_token: String,
}

/// A request from a logged-in browser. Enough for reading; changes need [`CsrfChecked`].
#[derive(Debug, Clone)]
pub struct Session {
    pub operator: Operator,
    pub csrf_token: String,
    token_hash: String,
}

impl Session {
    pub fn into_operator(self) -> Operator {
        self.operator
    }

    /// Whether the session still stands (not logged out, not expired, key not revoked); for
    /// long-lived streams that checked it once at the start.
    pub async fn still_valid(&self, state: &AppState) -> Result<bool, sqlx::Error> {
        let found = lookup(state, &self.token_hash).await?;
        Ok(found.is_some())
    }
}

/// A logged-in browser's request that proved it comes from the dashboard's own page: its
/// `X-CSRF-Token` matches the session's and its `Origin`, when present, is this server.
#[derive(Debug, Clone)]
pub struct CsrfChecked(pub Session);

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Refuses requests a browser marks as coming from another site. Browsers send `Origin` on
/// every cross-origin request and on same-origin POSTs; tools like curl send none.
fn refuse_foreign_origin(headers: &HeaderMap) -> ApiResult<()> {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    // Every Origin header counts: a request is not made same-origin by adding a second one.
    for origin in headers.get_all(ORIGIN) {
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, host)| host);
        match (origin_host, host) {
            (Some(origin_host), Some(host)) if origin_host.eq_ignore_ascii_case(host) => {}
            _ => {
                return Err(ApiError::forbidden(format!(
                    "the request comes from {origin:?}, not from this server's dashboard"
                )))
            }
        }
    }
    Ok(())
}

/// The operator a live session stands for, and the session's CSRF token.
async fn lookup(
    state: &AppState,
    token_hash: &str,
) -> Result<Option<(String, String, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.id, k.name, k.role, s.csrf_token
         FROM dashboard_sessions s JOIN api_keys k ON k.id = s.key_id
         WHERE s.token_hash = $1 AND s.expires_at > $2 AND k.revoked_at IS NULL",
    )
    .bind(token_hash)
    .bind(now_ms())
    .fetch_optional(state.db.pool())
    .await
}

impl FromRequestParts<AppState> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = cookie_value(&parts.headers, COOKIE_NAME)
            .ok_or_else(|| ApiError::unauthorized("not logged in to the dashboard"))?;
        let token_hash = secrets::hash(token);
        let row = lookup(state, &token_hash).await?;
        let (key_id, name, role, csrf_token) = row.ok_or_else(|| {
            ApiError::unauthorized("the dashboard session ended (logged out, expired or its key revoked); log in again")
        })?;
        Ok(Session {
            operator: Operator {
                key_id,
                name,
                role: role.parse().map_err(ApiError::internal)?,
                source_ip: source_ip(parts, state.settings.trust_forwarded_for),
            },
            csrf_token,
            token_hash,
        })
    }
}

impl FromRequestParts<AppState> for CsrfChecked {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        refuse_foreign_origin(&parts.headers)?;
        let session = Session::from_request_parts(parts, state).await?;
        let presented = parts
            .headers
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if bool::from(presented.ct_eq(session.csrf_token.as_bytes())) {
            Ok(CsrfChecked(session))
        } else {
            Err(ApiError::forbidden(
                "missing or wrong X-CSRF-Token header: changes must come from the dashboard page",
            ))
        }
    }
}

impl CsrfChecked {
    pub fn into_operator(self) -> Operator {
        self.0.operator
    }
}

/// Whether the browser reached us over HTTPS (directly or, when trusted, through a proxy).
fn over_https(headers: &HeaderMap, trust_forwarded: bool) -> bool {
    trust_forwarded
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

fn session_cookie(value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    ))
    .expect("cookie text is ASCII")
}

/// Logs in with an operator API key, sent as `Authorization: Bearer <key>` like every API
/// call (so the API's own key check decides): a new session row, its cookie, and the CSRF
/// token. The key itself is not kept.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    operator: Operator,
) -> ApiResult<Response> {
    refuse_foreign_origin(&headers)?;
    let token = secrets::random_hex(32);
    let csrf_token = secrets::random_hex(32);
    let now = now_ms();
    let mut write = state.db.begin_write().await?;
    sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *write.tx)
        .await?;
    sqlx::query(
        "INSERT INTO dashboard_sessions (token_hash, key_id, csrf_token, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(secrets::hash(&token))
    .bind(&operator.key_id)
    .bind(&csrf_token)
    .bind(now)
    .bind(now + LIFETIME_MS)
    .execute(&mut *write.tx)
    .await?;
    audit::Record::by(
        &operator,
        "dashboard.login",
        format!("key:{}", operator.key_id),
    )
    .write(&mut write.tx)
    .await?;
    write.commit().await?;
    let secure = over_https(&headers, state.settings.trust_forwarded_for);
    let info = SessionInfo {
        key_id: operator.key_id,
        name: operator.name,
        role: operator.role,
        csrf_token,
    };
    Ok((
        StatusCode::OK,
        [(
            SET_COOKIE,
            session_cookie(&token, LIFETIME_MS / 1000, secure),
        )],
        ApiJson(info),
    )
        .into_response())
}

/// Who is logged in, and the CSRF token, for a page opened with a live session cookie.
pub async fn current(session: Session) -> ApiJson<SessionInfo> {
    ApiJson(SessionInfo {
        key_id: session.operator.key_id,
        name: session.operator.name,
        role: session.operator.role,
        csrf_token: session.csrf_token,
    })
}

/// Ends the session: its row goes, and the browser is told to forget the cookie.
pub async fn logout(
    State(state): State<AppState>,
    CsrfChecked(session): CsrfChecked,
) -> ApiResult<Response> {
    let mut write = state.db.begin_write().await?;
    sqlx::query("DELETE FROM dashboard_sessions WHERE token_hash = $1")
        .bind(&session.token_hash)
        .execute(&mut *write.tx)
        .await?;
    audit::Record::by(
        &session.operator,
        "dashboard.logout",
        format!("key:{}", session.operator.key_id),
    )
    .write(&mut write.tx)
    .await?;
    write.commit().await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(SET_COOKIE, session_cookie("", 0, false))],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let map = headers(&[("cookie", "a=1; rota_session=abc ; b=2"), ("cookie", "c=3")]);
        assert_eq!(cookie_value(&map, COOKIE_NAME), Some("abc"));
        assert_eq!(cookie_value(&map, "c"), Some("3"));
        assert_eq!(
            cookie_value(&headers(&[("cookie", "rota_session=")]), COOKIE_NAME),
            None
        );
        assert_eq!(
            cookie_value(&headers(&[("cookie", "xrota_session=1")]), COOKIE_NAME),
            None
        );
    }

    #[test]
    fn only_this_servers_own_origin_may_change_things() {
        let host = ("host", "127.0.0.1:8080");
        assert!(refuse_foreign_origin(&headers(&[host])).is_ok());
        assert!(
            refuse_foreign_origin(&headers(&[host, ("origin", "http://127.0.0.1:8080")])).is_ok()
        );
        let twice = [
            host,
            ("origin", "http://127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ];
        assert!(refuse_foreign_origin(&headers(&twice)).is_err());
        for foreign in [
            "http://evil.example",
            "http://127.0.0.1:9090",
            "null",
            "http://127.0.0.1:8080.evil",
        ] {
            assert!(
                refuse_foreign_origin(&headers(&[host, ("origin", foreign)])).is_err(),
                "{foreign}"
            );
        }
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let cookie = session_cookie("t0k", 60, false);
        let text = cookie.to_str().unwrap();
        assert!(text.starts_with("rota_session=t0k; Path=/; HttpOnly; SameSite=Strict; Max-Age=60"));
        assert!(!text.contains("Secure"));
        assert!(session_cookie("t0k", 60, true)
            .to_str()
            .unwrap()
            .ends_with("; Secure"));
    }
}
