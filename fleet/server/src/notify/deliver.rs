//! Sending queued deliveries: each due one is claimed (a compare-and-set on its `next_at`,
//! which becomes a lease), sent on its own task, and recorded as delivered, or retried with
//! exponential backoff until the last attempt fails. Nothing here holds a database
//! transaction while it waits for the network.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rota_protocol::notifications::ChannelKind;
use sha2::Sha256;

use crate::db::Db;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::time::now_ms;

/// Attempts before a delivery is recorded as failed: 1, 2, 4 and 8 s apart.
pub const MAX_ATTEMPTS: i64 = 5;
/// How long one attempt may take; also how long a claim holds before another replica may try.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const DUE_PER_ROUND: i64 = 50;

/// The wait after failed attempt `attempts` (1-based).
fn backoff_ms(attempts: i64) -> i64 {
    1000 * (1_i64 << (attempts - 1).clamp(0, 8))
}

/// The `X-Rota-Signature-256` header of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Claims the due deliveries and sends each on its own task. Returns how many it started.
pub async fn dispatch(state: &AppState, http: &reqwest::Client) -> ApiResult<usize> {
    let db = &state.db;
    let now = now_ms();
    let due: Vec<(i64, i64)> = {
        let mut conn = db.pool().acquire().await?;
        sqlx::query_as(
            "SELECT id, next_at FROM notification_deliveries
             WHERE state = 'pending' AND next_at <= $1 ORDER BY id LIMIT $2",
        )
        .bind(now)
        .bind(DUE_PER_ROUND)
        .fetch_all(&mut *conn)
        .await?
    };
    let mut started = 0;
    for (id, next_at) in due {
        let mut write = db.begin_write().await?;
        let claimed = sqlx::query(
            "UPDATE notification_deliveries SET next_at = $1, attempts = attempts + 1
             WHERE id = $2 AND state = 'pending' AND next_at = $3",
        )
        .bind(now + ATTEMPT_TIMEOUT.as_millis() as i64 * 2)
        .bind(id)
        .bind(next_at)
        .execute(&mut *write.tx)
        .await?;
        write.commit().await?;
        if claimed.rows_affected() == 0 {
            continue;
        }
        let (state, http) = (state.clone(), http.clone());
        tokio::spawn(async move {
            if let Err(err) = attempt(&state.db, &http, id).await {
                tracing::warn!("notification delivery {id}: {err}");
            }
        });
        started += 1;
    }
    Ok(started)
}

type Claimed = (
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn attempt(db: &Db, http: &reqwest::Client, id: i64) -> ApiResult<()> {
    let row: Option<Claimed> = {
        let mut conn = db.pool().acquire().await?;
        sqlx::query_as(
            "SELECT x.channel, x.body, x.attempts, c.kind, c.url, c.secret, c.email_to,
                    c.email_from
             FROM notification_deliveries x
             LEFT JOIN notification_channels c ON c.name = x.channel WHERE x.id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    };
    let Some((channel, body, attempts, kind, url, secret, to, from)) = row else {
        return Ok(());
    };
    let outcome = match (kind.as_deref().and_then(ChannelKind::parse), url) {
        (Some(ChannelKind::Email), Some(url)) => {
            let to: Vec<String> = to
                .and_then(|json| serde_json::from_str(&json).ok())
                .unwrap_or_default();
            let mail = Mail {
                url: &url,
                password: secret.as_deref(),
                to: &to,
                from: from.as_deref().unwrap_or_default(),
            };
            mail.send(&body).await
        }
        (Some(kind), Some(url)) => send(http, kind, &url, secret.as_deref(), id, &body).await,
        _ => Err(format!("channel {channel:?} was removed")),
    };
    let now = now_ms();
    let mut write = db.begin_write().await?;
    let query = match &outcome {
        Ok(()) => sqlx::query(
            "UPDATE notification_deliveries SET state = 'delivered', last_error = NULL,
                    finished_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id),
        Err(error) if attempts >= MAX_ATTEMPTS => sqlx::query(
            "UPDATE notification_deliveries SET state = 'failed', last_error = $1,
                    finished_at = $2 WHERE id = $3",
        )
        .bind(error.as_str())
        .bind(now)
        .bind(id),
        Err(error) => sqlx::query(
            "UPDATE notification_deliveries SET last_error = $1, next_at = $2 WHERE id = $3",
        )
        .bind(error.as_str())
        .bind(now + backoff_ms(attempts))
        .bind(id),
    };
    query.execute(&mut *write.tx).await?;
    write.commit().await?;
    if let Err(error) = outcome {
        tracing::info!("notification {id} to {channel}: attempt {attempts} failed: {error}");
    }
    Ok(())
}

/// One POST. The error never names the URL: a Slack URL is a secret.
async fn send(
    http: &reqwest::Client,
    kind: ChannelKind,
    url: &str,
    secret: Option<&str>,
    id: i64,
    body: &str,
) -> Result<(), String> {
    let mut request = http
        .post(url)
        .timeout(ATTEMPT_TIMEOUT)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            "User-Agent",
            concat!("rota-server/", env!("CARGO_PKG_VERSION")),
        );
    if kind == ChannelKind::Webhook {
        request = request.header("X-Rota-Delivery", id.to_string());
        if let Some(secret) = secret {
            request = request.header("X-Rota-Signature-256", signature(secret, body.as_bytes()));
        }
    }
    let response = request
        .body(body.to_string())
        .send()
        .await
        .map_err(|err| err.without_url().to_string())?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    Err(format!("HTTP {}: {}", status.as_u16(), text.trim()))
}

/// An email channel's way out: `smtp://[user@]host[:port]` (STARTTLS required, port 587) or
/// `smtps://...` (TLS from the start, port 465), the server checked against the system's roots.
struct Mail<'a> {
    url: &'a str,
    password: Option<&'a str>,
    to: &'a [String],
    from: &'a str,
}

impl Mail<'_> {
    /// Sends the queued `{"subject", "body"}` as one plain-text mail. Errors name neither the
    /// password nor the URL's user.
    async fn send(&self, queued: &str) -> Result<(), String> {
        use lettre::message::header::ContentType;
        use lettre::transport::smtp::authentication::{Credentials, Mechanism};
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

        let (implicit_tls, rest) = match self.url.split_once("://") {
            Some(("smtps", rest)) => (true, rest),
            Some(("smtp", rest)) => (false, rest),
            _ => return Err("not an smtp:// or smtps:// URL".into()),
        };
        let (user, address) = match rest.trim_end_matches('/').rsplit_once('@') {
            Some((user, address)) => (Some(user), address),
            None => (None, rest.trim_end_matches('/')),
        };
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("port {port:?} is not a number"))?,
            ),
            None => (address, if implicit_tls { 465 } else { 587 }),
        };
        let relay = match implicit_tls {
            true => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
            false => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
        };
        let mut transport = relay
            .map_err(|err| format!("SMTP server {host}: {err}"))?
            .port(port)
            .timeout(Some(ATTEMPT_TIMEOUT));
        if let (Some(user), Some(password)) = (user, self.password) {
            // PLAIN only, inside TLS: a refused login is one clear answer, not a second try
            // with another mechanism.
            transport = transport
                .credentials(Credentials::new(user.into(), password.into()))
                .authentication(vec![Mechanism::Plain]);
        }
        let queued: serde_json::Value =
            serde_json::from_str(queued).map_err(|err| format!("queued mail: {err}"))?;
        let text = |key: &str| queued[key].as_str().unwrap_or_default().to_string();
        let mut message = Message::builder()
            .from(self.from.parse().map_err(|err| format!("from: {err}"))?)
            .subject(text("subject"))
            .header(ContentType::TEXT_PLAIN);
        for to in self.to {
            message = message.to(to.parse().map_err(|err| format!("to {to}: {err}"))?);
        }
        let message = message
            .body(text("body"))
            .map_err(|err| format!("the mail: {err}"))?;
        // One bound on the whole conversation, whatever the server does.
        match tokio::time::timeout(ATTEMPT_TIMEOUT, transport.build().send(message)).await {
            Ok(sent) => sent
                .map(drop)
                .map_err(|err| format!("SMTP {host}:{port}: {err}")),
            Err(_) => Err(format!(
                "SMTP {host}:{port}: no answer within {} s",
                ATTEMPT_TIMEOUT.as_secs()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second() {
        assert_eq!(
            (1..=5).map(backoff_ms).collect::<Vec<_>>(),
            [1000, 2000, 4000, 8000, 16000]
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
