//! Wake-ups across server replicas on PostgreSQL: a replica that offers robots something sends
//! their ids with `NOTIFY`, and every replica wakes those of them long-polling on it. Without
//! this, a robot polling replica B learns of replica A's deployment only when its long-poll ends.
//! On SQLite there is one server, and [`crate::hub::WakeHub`] alone does it.

use sqlx::postgres::PgListener;

use crate::db::{Backend, Db};
use crate::state::AppState;

const CHANNEL: &str = "rota_wake";
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7000;

/// Robot ids, comma-joined into payloads that fit a NOTIFY.
fn payloads(robots: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in robots {
        match out.last_mut() {
            Some(last) if last.len() + 1 + id.len() <= MAX_PAYLOAD => {
                last.push(',');
                last.push_str(id);
            }
            _ => out.push(id.clone()),
        }
    }
    out
}

/// Tells the other replicas to wake `robots`. A failure only delays those robots until their
/// next poll, so it is logged, not returned.
pub async fn publish(db: &Db, robots: &[String]) {
    if db.backend() != Backend::Postgres {
        return;
    }
    for payload in payloads(robots) {
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(db.pool())
            .await;
        if let Err(err) = sent {
            tracing::warn!("telling other replicas to wake robots: {err}");
        }
    }
}

/// Listens for other replicas' wake-ups for as long as the server runs; reconnects after
/// errors (PgListener re-subscribes on its own).
pub async fn listen(state: AppState) {
    let mut listener = loop {
        match PgListener::connect(&state.settings.database_url).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => break listener,
                Err(err) => tracing::warn!("LISTEN {CHANNEL}: {err}"),
            },
            Err(err) => tracing::warn!("connecting the wake-up listener: {err}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    loop {
        match listener.recv().await {
            Ok(notification) => state.hub.wake_many(notification.payload().split(',')),
            Err(err) => {
                tracing::warn!("wake-up listener: {err}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_notify_limit() {
        let robots: Vec<String> = (0..2000).map(|n| format!("robot-{n:05}")).collect();
        let chunks = payloads(&robots);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|chunk| chunk.len() <= MAX_PAYLOAD));
        let rejoined: Vec<&str> = chunks.iter().flat_map(|chunk| chunk.split(',')).collect();
        assert_eq!(
            rejoined,
            robots.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
}
