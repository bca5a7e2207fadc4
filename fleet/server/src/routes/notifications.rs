//! Notification channels (admin) and the delivery log. A webhook's secret or an SMTP password is
//! never answered, audited or logged; a Slack URL, which is the secret there, is answered as its
//! host only.

use axum::extract::State;
use axum::http::StatusCode;
use rota_protocol::notifications::{Channel, ChannelKind, Delivery, SetChannel};
use rota_protocol::operator::{ErrorBody, Role};
use serde::Deserialize;
use serde_json::json;
use sqlx::AnyConnection;

use crate::audit;
use crate::auth::Operator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::notify::{self, Event};
use crate::state::AppState;
use crate::time::{now_ms, rfc3339};

/// `https://hooks.slack.com/services/T/B/x` → `https://hooks.slack.com/…`.
fn host_only(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].find('/') {
        Some(slash) => format!("{}/…", &url[..start + slash]),
        None => url.to_string(),
    }
}

type ChannelRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    i64,
);

const CHANNEL_SELECT: &str =
    "SELECT name, kind, url, secret, environment, events, email_to, email_from, created_at
     FROM notification_channels";

fn channel_from_row(
    (name, kind, url, secret, environment, events, to, from, created_at): ChannelRow,
) -> ApiResult<Channel> {
    let kind = ChannelKind::parse(&kind)
        .ok_or_else(|| ApiError::internal(format!("unknown channel kind {kind:?}")))?;
    Ok(Channel {
        url: match kind {
            ChannelKind::Slack => host_only(&url),
            ChannelKind::Webhook | ChannelKind::Email => url,
        },
        to: to
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(ApiError::internal)?
            .unwrap_or_default(),
        from,
        signed: secret.is_some(),
        events: serde_json::from_str(&events).map_err(ApiError::internal)?,
        created_at: rfc3339(created_at),
        name,
        kind,
        environment,
    })
}

async fn find_channel(conn: &mut AnyConnection, name: &str) -> ApiResult<Channel> {
    let row: Option<ChannelRow> = sqlx::query_as(&format!("{CHANNEL_SELECT} WHERE name = $1"))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    channel_from_row(
        row.ok_or_else(|| ApiError::not_found(format!("no notification channel {name:?}")))?,
    )
}

fn check_channel_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    match ok {
        true => Ok(()),
        false => Err(ApiError::unprocessable(format!(
            "channel name {name:?}: 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit"
        ))),
    }
}

/// The notification channels.
#[utoipa::path(get, path = "/api/v1/notifications/channels", tag = "notifications",
    responses((status = 200, body = Vec<Channel>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
) -> ApiResult<ApiJson<Vec<Channel>>> {
    let rows: Vec<ChannelRow> = sqlx::query_as(&format!("{CHANNEL_SELECT} ORDER BY name"))
        .fetch_all(state.db.pool())
        .await?;
    Ok(ApiJson(
        rows.into_iter()
            .map(channel_from_row)
            .collect::<ApiResult<_>>()?,
    ))
}

/// Create or replace a notification channel (admin).
#[utoipa::path(put, path = "/api/v1/notifications/channels/{name}", tag = "notifications",
    params(("name" = String, Path, description = "channel name")),
    request_body = SetChannel,
    responses(
        (status = 200, body = Channel),
        (status = 403, description = "needs the admin role", body = ErrorBody),
        (status = 404, description = "unknown environment", body = ErrorBody),
        (status = 422, description = "bad name, URL, secret or event", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<SetChannel>,
) -> ApiResult<ApiJson<Channel>> {
    operator.require(Role::Admin)?;
    check_channel_name(&name)?;
    request.validate().map_err(ApiError::unprocessable)?;
    let mut write = state.db.begin_write().await?;
    if let Some(environment) = &request.environment {
        crate::rollout::environment_rules(&mut write.tx, environment).await?;
    }
    sqlx::query(
        "INSERT INTO notification_channels (name, kind, url, secret, environment, events,
                                            email_to, email_from, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (name) DO UPDATE SET kind = $2, url = $3, secret = $4, environment = $5,
             events = $6, email_to = $7, email_from = $8",
    )
    .bind(&name)
    .bind(request.kind.as_str())
    .bind(&request.url)
    .bind(&request.secret)
    .bind(&request.environment)
    .bind(serde_json::to_string(&request.events).map_err(ApiError::internal)?)
    .bind(
        (!request.to.is_empty())
            .then(|| serde_json::to_string(&request.to))
            .transpose()
            .map_err(ApiError::internal)?,
    )
    .bind(&request.from)
    .bind(now_ms())
    .execute(&mut *write.tx)
    .await?;
    let channel = find_channel(&mut write.tx, &name).await?;
    audit::Record::by(
        &operator,
        "notification.channel.set",
        format!("channel:{name}"),
    )
    .details(json!({
        "kind": channel.kind.as_str(), "url": channel.url, "signed": channel.signed,
        "environment": channel.environment, "events": channel.events, "to": channel.to,
    }))
    .write(&mut write.tx)
    .await?;
    write.commit().await?;
    Ok(ApiJson(channel))
}

/// Remove a notification channel (admin); its pending deliveries fail.
#[utoipa::path(delete, path = "/api/v1/notifications/channels/{name}", tag = "notifications",
    params(("name" = String, Path, description = "channel name")),
    responses(
        (status = 204),
        (status = 403, description = "needs the admin role", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    operator.require(Role::Admin)?;
    let mut write = state.db.begin_write().await?;
    find_channel(&mut write.tx, &name).await?;
    sqlx::query("DELETE FROM notification_channels WHERE name = $1")
        .bind(&name)
        .execute(&mut *write.tx)
        .await?;
    sqlx::query(
        "UPDATE notification_deliveries SET state = 'failed', last_error = 'channel removed',
                finished_at = $1 WHERE channel = $2 AND state = 'pending'",
    )
    .bind(now_ms())
    .bind(&name)
    .execute(&mut *write.tx)
    .await?;
    audit::Record::by(
        &operator,
        "notification.channel.remove",
        format!("channel:{name}"),
    )
    .write(&mut write.tx)
    .await?;
    write.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a `test` notification to a channel now (deployer): the answer is its delivery, whose
/// state the delivery log shows.
#[utoipa::path(post, path = "/api/v1/notifications/channels/{name}/test", tag = "notifications",
    params(("name" = String, Path, description = "channel name")),
    responses(
        (status = 201, body = Delivery),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn test(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<(StatusCode, ApiJson<Delivery>)> {
    operator.require(Role::Deployer)?;
    let mut write = state.db.begin_write().await?;
    let channel = notify::channels(&mut write.tx)
        .await?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no notification channel {name:?}")))?;
    let event = Event {
        name: "test",
        environment: channel.environment.clone(),
        text: format!(
            "Rota: a test notification to channel {name}, sent by {}",
            operator.actor()
        ),
        details: json!({ "by": operator.actor() }),
    };
    let id = notify::enqueue(&mut write.tx, &channel, &event, now_ms()).await?;
    audit::Record::by(&operator, "notification.test", format!("channel:{name}"))
        .write(&mut write.tx)
        .await?;
    write.commit().await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(find_delivery(&state, id).await?),
    ))
}

type DeliveryRow = (
    i64,
    String,
    String,
    String,
    i64,
    Option<String>,
    String,
    i64,
    Option<i64>,
);

const DELIVERY_SELECT: &str =
    "SELECT id, channel, event, state, attempts, last_error, text, created_at, finished_at
     FROM notification_deliveries";

fn delivery_from_row(
    (id, channel, event, state, attempts, last_error, text, created_at, finished_at): DeliveryRow,
) -> Delivery {
    Delivery {
        id,
        channel,
        event,
        state,
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_error,
        text,
        created_at: rfc3339(created_at),
        finished_at: finished_at.map(rfc3339),
    }
}

async fn find_delivery(state: &AppState, id: i64) -> ApiResult<Delivery> {
    let row: DeliveryRow = sqlx::query_as(&format!("{DELIVERY_SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_one(state.db.pool())
        .await?;
    Ok(delivery_from_row(row))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeliveriesQuery {
    /// Only this channel's.
    pub channel: Option<String>,
    /// Only `pending`, `delivered` or `failed` ones.
    pub state: Option<String>,
    /// At most this many, newest first. [default: 100, at most 1000]
    pub limit: Option<i64>,
}

/// The delivery log, newest first.
#[utoipa::path(get, path = "/api/v1/notifications/deliveries", tag = "notifications",
    params(DeliveriesQuery),
    responses(
        (status = 200, body = Vec<Delivery>),
        (status = 400, description = "unknown state", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> ApiResult<ApiJson<Vec<Delivery>>> {
    if let Some(wanted) = &query.state {
        if !["pending", "delivered", "failed"].contains(&wanted.as_str()) {
            return Err(ApiError::bad_request(format!(
                "state: {wanted:?} is not pending, delivered or failed"
            )));
        }
    }
    let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
        "{DELIVERY_SELECT} WHERE ($1 = '' OR channel = $2) AND ($3 = '' OR state = $4)
         ORDER BY id DESC LIMIT $5"
    ))
    .bind(query.channel.clone().unwrap_or_default())
    .bind(query.channel.unwrap_or_default())
    .bind(query.state.clone().unwrap_or_default())
    .bind(query.state.unwrap_or_default())
    .bind(query.limit.unwrap_or(100).clamp(1, 1000))
    .fetch_all(state.db.pool())
    .await?;
    Ok(ApiJson(rows.into_iter().map(delivery_from_row).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slack_url_is_answered_as_its_host_only() {
        assert_eq!(
            host_only("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(host_only("http://127.0.0.1:9"), "http://127.0.0.1:9");
    }
}
