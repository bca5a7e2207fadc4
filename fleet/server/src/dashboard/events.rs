//! Live updates: `GET /ui/events`, a Server-Sent Events stream that says "something changed"
//! whenever the fleet's state in the database moves; the page then reloads what it shows.
//!
//! One poller per replica looks at a fingerprint of the database (the newest robot event, audit
//! entry, rollout decision, version report, assignment change and inventory) every second while
//! any page watches, instead of listening to its own writes: with several replicas on
//! PostgreSQL, a change made through another replica must reach this replica's browsers too.
//! Every stream watches what that poller saw.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use tokio::sync::watch;

use super::session::Session;
use crate::state::AppState;

const POLL_EVERY: Duration = Duration::from_secs(1);

/// Changes whenever anything the dashboard shows changes.
async fn fingerprint(state: &AppState) -> Result<String, sqlx::Error> {
    // Inventories too: a robot reports the app release it committed after the commit itself.
    // Notification deliveries: new ones, and pending ones that ended.
    let row: (i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM robot_events),
                (SELECT COALESCE(MAX(id), 0) FROM audit_log),
                (SELECT COALESCE(MAX(id), 0) FROM deployment_log),
                (SELECT COALESCE(MAX(id), 0) FROM robot_version_reports),
                (SELECT COALESCE(MAX(updated_at), 0) FROM assignments),
                (SELECT COALESCE(MAX(inventory_at), 0) FROM robots),
                (SELECT COALESCE(MAX(id), 0) FROM notification_deliveries),
                (SELECT COUNT(*) FROM notification_deliveries WHERE state = 'pending')",
    )
    .fetch_one(state.db.pool())
    .await?;
    Ok(format!(
        "{}.{}.{}.{}.{}.{}.{}.{}",
        row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7
    ))
}

/// The one poller of this replica: while any page watches, it looks at the fingerprint every
/// second and publishes it when it moved, so N open pages cost one query per second, not N.
pub async fn poll_changes(state: AppState) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.dashboard_changes.receiver_count() == 0 {
            continue;
        }
        state.metrics.count_dashboard_poll();
        match fingerprint(&state).await {
            Ok(now) => {
                state.dashboard_changes.send_if_modified(|seen| {
                    let moved = seen.as_ref() != Some(&now);
                    if moved {
                        *seen = Some(now);
                    }
                    moved
                });
            }
            Err(err) => tracing::warn!("dashboard events: {err}"),
        }
    }
}

struct Watch {
    state: AppState,
    session: Session,
    changes: watch::Receiver<Option<String>>,
    last: Option<String>,
    sent: u64,
}

/// The next `change` event, or the end of the stream when the server shuts down or the
/// session ends (logout, expiry, key revoked; checked every second).
async fn next_change(mut watch: Watch) -> Option<(Result<Event, Infallible>, Watch)> {
    let mut shutdown = watch.state.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return None;
        }
        match watch.session.still_valid(&watch.state).await {
            Ok(false) => return None,
            Ok(true) => {
                let now = watch.changes.borrow_and_update().clone();
                if let Some(now) = now.filter(|now| watch.last.as_ref() != Some(now)) {
                    watch.sent += 1;
                    let event = Event::default()
                        .event("change")
                        .id(watch.sent.to_string())
                        .data(&now);
                    watch.last = Some(now);
                    return Some((Ok(event), watch));
                }
            }
            Err(err) => tracing::warn!("dashboard events: {err}"),
        }
        tokio::select! {
            _ = watch.changes.changed() => {}
            () = tokio::time::sleep(POLL_EVERY) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// `GET /ui/events`: the first event comes once the poller has looked, then one per change.
pub async fn stream(
    State(state): State<AppState>,
    session: Session,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let watch = Watch {
        changes: state.dashboard_changes.subscribe(),
        state,
        session,
        last: None,
        sent: 0,
    };
    Sse::new(stream::unfold(watch, next_change)).keep_alive(KeepAlive::default())
}
