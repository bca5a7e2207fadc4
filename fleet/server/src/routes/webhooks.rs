//! The GitHub push webhook, and the pushes it recorded.
//!
//! A delivery is trusted only after its `X-Hub-Signature-256` matches the HMAC-SHA256 of the
//! raw body under the configured secret. Refused deliveries are logged but not audited: an
//! unauthenticated caller must not be able to grow the append-only audit log.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use rota_protocol::operator::{ErrorBody, GitPush, WebhookReceipt};
use serde::Deserialize;

use crate::audit;
use crate::auth::{source_ip, Operator};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult};
use crate::git;
use crate::state::AppState;
use crate::time::now_ms;

/// GitHub sends at most 25 MB per delivery.
const MAX_DELIVERY_BYTES: usize = 25 << 20;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Receive a GitHub webhook delivery (no API key: the signature authenticates it).
///
/// `push` events are recorded and linked to releases by commit; `ping` is answered; other
/// events are acknowledged and ignored. Configure the secret with `github_webhook_secret`.
#[utoipa::path(post, path = "/api/v1/webhooks/github", tag = "git",
    params(
        ("X-Hub-Signature-256" = String, Header, description = "sha256=<hex HMAC-SHA256 of the body with the webhook secret>"),
        ("X-GitHub-Event" = String, Header, description = "push, ping, ..."),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "delivery id; a redelivered push is recorded once"),
    ),
    request_body(content = Vec<u8>, content_type = "application/json", description = "GitHub's event payload, byte for byte as signed"),
    responses(
        (status = 201, description = "push recorded", body = WebhookReceipt),
        (status = 200, description = "ping answered, or this push delivery was recorded before", body = WebhookReceipt),
        (status = 202, description = "event ignored", body = WebhookReceipt),
        (status = 400, description = "no X-GitHub-Event header", body = ErrorBody),
        (status = 401, description = "missing or wrong signature", body = ErrorBody),
        (status = 404, description = "the server has no webhook secret configured", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "unreadable push payload", body = ErrorBody),
    ))]
pub async fn github(
    State(state): State<AppState>,
    request: Request,
) -> ApiResult<(StatusCode, ApiJson<WebhookReceipt>)> {
    let Some(secret) = state.settings.github_webhook_secret.as_deref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "webhook_not_configured",
            "this server has no GitHub webhook secret: set github_webhook_secret in the config file or ROTA_GITHUB_WEBHOOK_SECRET",
        ));
    };
    let (parts, body) = request.into_parts();
    let caller_ip = source_ip(&parts, state.settings.trust_forwarded_for);
    let body = read_body(body).await?;
    if let Err(refusal) = git::verify_signature(
        secret.as_bytes(),
        &body,
        header(&parts.headers, "x-hub-signature-256"),
    ) {
        tracing::warn!(source_ip = ?caller_ip, "GitHub webhook delivery refused: {refusal}");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            refusal.to_string(),
        ));
    }
    let event = header(&parts.headers, "x-github-event")
        .ok_or_else(|| ApiError::bad_request("missing X-GitHub-Event header"))?
        .to_string();
    let delivery = header(&parts.headers, "x-github-delivery").map(str::to_string);
    let record = |action: &'static str, target: Option<String>, details| audit::Record {
        actor: "github".into(),
        action,
        target,
        details: Some(details),
        source_ip: caller_ip.clone(),
    };

    let mut write = state.db.begin_write().await?;
    let (status, receipt) = match event.as_str() {
        "push" => {
            let push = git::parse_push(&body).map_err(ApiError::unprocessable)?;
            let (push, new) =
                git::record_push(&mut write.tx, &push, delivery.as_deref(), now_ms()).await?;
            let outcome = if new { "recorded" } else { "already_recorded" };
            record(
                "webhook.push",
                Some(format!("push:{}", push.id)),
                serde_json::json!({
                    "delivery": delivery, "outcome": outcome, "repository": push.repository,
                    "ref": push.git_ref, "after": push.after, "pusher": push.pusher,
                }),
            )
            .write(&mut write.tx)
            .await?;
            let status = if new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, receipt(&event, outcome, Some(push)))
        }
        "ping" => {
            record(
                "webhook.ping",
                None,
                serde_json::json!({"delivery": delivery}),
            )
            .write(&mut write.tx)
            .await?;
            (StatusCode::OK, receipt(&event, "pong", None))
        }
        _ => {
            record(
                "webhook.ignored",
                None,
                serde_json::json!({"delivery": delivery, "event": event}),
            )
            .write(&mut write.tx)
            .await?;
            (StatusCode::ACCEPTED, receipt(&event, "ignored", None))
        }
    };
    write.commit().await?;
    tracing::info!(event = %receipt.event, outcome = %receipt.outcome, delivery = ?delivery, "GitHub webhook delivery");
    Ok((status, ApiJson(receipt)))
}

fn receipt(event: &str, outcome: &str, push: Option<GitPush>) -> WebhookReceipt {
    WebhookReceipt {
        event: event.to_string(),
        outcome: outcome.to_string(),
        push,
    }
}

async fn read_body(body: Body) -> ApiResult<axum::body::Bytes> {
    to_bytes(body, MAX_DELIVERY_BYTES).await.map_err(|err| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("webhook delivery larger than {MAX_DELIVERY_BYTES} bytes or unreadable: {err}"),
        )
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PushesQuery {
    /// Only pushes to this repository (`owner/name`).
    pub repository: Option<String>,
    /// Only pushes to this branch.
    pub branch: Option<String>,
    /// At most this many, newest first. [default: 100, at most 1000]
    pub limit: Option<i64>,
}

/// Pushes the GitHub webhook recorded, newest first.
#[utoipa::path(get, path = "/api/v1/git/pushes", tag = "git",
    params(PushesQuery),
    responses((status = 200, body = Vec<GitPush>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn pushes(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<PushesQuery>,
) -> ApiResult<ApiJson<Vec<GitPush>>> {
    let mut conn = state.db.pool().acquire().await?;
    let pushes = git::list_pushes(
        &mut conn,
        query.repository.as_deref(),
        query.branch.as_deref(),
        query.limit.unwrap_or(100).clamp(1, 1000),
    )
    .await?;
    Ok(ApiJson(pushes))
}
