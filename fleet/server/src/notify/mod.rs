//! Notifications: what happened to deployments and robots becomes one delivery per channel that
//! hears it, sent asynchronously with retries ([`deliver`]), so a dead endpoint never slows or
//! fails a rollout.
//!
//! Events are read after the fact from what the server writes anyway (the deployments' rollout
//! log, the robots' events, their last-seen times), never raised inside the rollout engine.
//! Each source has a cursor in `settings`; a round moves it with a compare-and-set in the same
//! transaction that queues the deliveries, so with several replicas each event is queued once.

pub mod deliver;

use rota_protocol::notifications::ChannelKind;
use rota_protocol::operator::release_label;
use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::db::Db;
use crate::error::ApiResult;
use crate::time::{now_ms, rfc3339};

/// Rows read per source and round: a burst is caught up over a few rounds.
const BATCH: i64 = 500;

/// Something channels hear about.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    /// The environment it belongs to; channels of other environments do not hear it.
    pub environment: Option<String>,
    /// One line for people (Slack, the delivery log).
    pub text: String,
    /// The facts, for a webhook's JSON.
    pub details: Value,
}

/// A channel as the producer needs it.
pub(crate) struct ChannelRow {
    pub name: String,
    pub kind: ChannelKind,
    pub environment: Option<String>,
    pub events: Vec<String>,
}

impl ChannelRow {
    pub(crate) fn hears(&self, event: &Event) -> bool {
        (self.events.is_empty() || self.events.iter().any(|e| e == event.name))
            && (self.environment.is_none() || self.environment == event.environment)
    }
}

pub(crate) async fn channels(conn: &mut AnyConnection) -> ApiResult<Vec<ChannelRow>> {
    let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT name, kind, environment, events FROM notification_channels ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, kind, environment, events)| {
            Some(ChannelRow {
                kind: ChannelKind::parse(&kind)?,
                events: serde_json::from_str(&events).unwrap_or_default(),
                name,
                environment,
            })
        })
        .collect())
}

/// Queues `event` for `channel`: the body it will be sent, in the channel's shape.
pub(crate) async fn enqueue(
    conn: &mut AnyConnection,
    channel: &ChannelRow,
    event: &Event,
    at: i64,
) -> ApiResult<i64> {
    let body = match channel.kind {
        ChannelKind::Webhook => json!({
            "event": event.name,
            "at": rfc3339(at),
            "environment": event.environment,
            "text": event.text,
            "details": event.details,
        }),
        ChannelKind::Slack => json!({ "text": event.text }),
        // The mail: its subject and body.
        ChannelKind::Email => json!({
            "subject": event.text,
            "body": format!(
                "{}\n\nevent: {}\nat: {}\nenvironment: {}\n\n{}\n",
                event.text,
                event.name,
                rfc3339(at),
                event.environment.as_deref().unwrap_or("-"),
                serde_json::to_string_pretty(&event.details).unwrap_or_default()
            ),
        }),
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO notification_deliveries (channel, event, body, text, state, attempts,
                                              next_at, created_at)
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) RETURNING id",
    )
    .bind(&channel.name)
    .bind(event.name)
    .bind(body.to_string())
    .bind(&event.text)
    .bind(at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

type LogRow = (
    i64,
    String,
    Option<i64>,
    Option<String>,
    String,
    Option<String>,
    String,
    String,
    i64,
    String,
    Option<String>,
);

/// The rollout log's entries after `cursor` as events, and the last id read.
async fn deployment_events(
    conn: &mut AnyConnection,
    cursor: i64,
) -> ApiResult<(Vec<Event>, Option<i64>)> {
    let rows: Vec<LogRow> = sqlx::query_as(
        "SELECT l.id, l.action, l.stage, l.detail, d.id, d.environment, d.target, d.state,
                d.stage_count, r.version, r.app
         FROM deployment_log l
         JOIN deployments d ON d.id = l.deployment_id
         JOIN releases r ON r.id = d.release_id
         WHERE l.id > $1 ORDER BY l.id LIMIT $2",
    )
    .bind(cursor)
    .bind(BATCH)
    .fetch_all(&mut *conn)
    .await?;
    let last = rows.last().map(|row| row.0);
    let mut events = Vec::new();
    for (_, action, stage, detail, id, environment, target, state, stages, version, app) in rows {
        let what = format!(
            "deployment {id} of {} to {target}",
            release_label(app.as_deref(), &version)
        );
        let details = json!({
            "deployment": {
                "id": id, "version": version, "app": app, "target": target, "state": state,
                "stage": stage.map(|s| s + 1), "stage_count": stages,
            },
            "detail": detail,
        });
        let mut push = |name, text: String| {
            events.push(Event {
                name,
                environment: environment.clone(),
                text: format!("Rota: {text}"),
                details: details.clone(),
            })
        };
        match (action.as_str(), detail.as_deref()) {
            ("created", _) => {
                push("deployment.created", format!("{what} created"));
                if state == "awaiting_approval" {
                    push(
                        "deployment.awaiting_approval",
                        format!("{what} waits for approval"),
                    );
                }
            }
            ("stage_started", _) => push(
                "deployment.stage_started",
                format!(
                    "{what}: stage {} of {stages} started",
                    stage.unwrap_or(0) + 1
                ),
            ),
            ("halted", reason) => push(
                "deployment.halted",
                format!("{what} halted: {}", reason.unwrap_or("no reason given")),
            ),
            ("finished", Some("succeeded")) => {
                push("deployment.succeeded", format!("{what} succeeded"))
            }
            ("finished", Some(end @ ("failed" | "no_robot_updated"))) => push(
                "deployment.failed",
                format!("{what} ended {}", end.replace('_', " ")),
            ),
            _ => {}
        }
    }
    Ok((events, last))
}

type RobotEventRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Robots' rollbacks reported after `cursor`, and the newest event id looked at. Every event
/// up to the newest is looked at in one round (only rollbacks are read out), so a fleet
/// reporting progress faster than a batch a second never leaves the channels behind.
async fn robot_events(
    conn: &mut AnyConnection,
    cursor: i64,
) -> ApiResult<(Vec<Event>, Option<i64>)> {
    let newest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM robot_events")
        .fetch_one(&mut *conn)
        .await?;
    let rows: Vec<RobotEventRow> = sqlx::query_as(
        "SELECT x.id, x.robot_id, x.event, x.detail, x.deployment_id, r.version, r.app,
                d.environment
         FROM robot_events x
         LEFT JOIN releases r ON r.id = x.release_id
         LEFT JOIN deployments d ON d.id = x.deployment_id
         WHERE x.id > $1 AND x.id <= $2 AND x.event = 'rolled_back' ORDER BY x.id",
    )
    .bind(cursor)
    .bind(newest)
    .fetch_all(&mut *conn)
    .await?;
    let last = (newest > cursor).then_some(newest);
    let events = rows
        .into_iter()
        .map(
            |(_, robot, _, reason, deployment, version, app, environment)| {
                let reason = reason.unwrap_or_default();
                let release = version
                    .as_deref()
                    .map(|v| release_label(app.as_deref(), v))
                    .unwrap_or_else(|| "a release".into());
                Event {
                    name: "robot.rolled_back",
                    text: format!("Rota: {robot} rolled back from {release}: {reason}"),
                    details: json!({
                        "robot": robot, "deployment": deployment, "version": version,
                        "app": app, "reason": reason,
                    }),
                    environment,
                }
            },
        )
        .collect();
    Ok((events, last))
}

/// Robots silent for longer than `after_ms` that the channels were not told about since they
/// were last seen; marks them told.
async fn offline_robots(
    conn: &mut AnyConnection,
    after_ms: i64,
    now: i64,
) -> ApiResult<Vec<Event>> {
    let rows: Vec<(String, i64, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT r.id, r.last_seen, r.offline_notified_at,
                (SELECT MIN(g.environment) FROM group_members m
                 JOIN robot_groups g ON g.name = m.group_name WHERE m.robot_id = r.id)
         FROM robots r
         WHERE r.last_seen IS NOT NULL AND r.last_seen < $1
           AND (r.offline_notified_at IS NULL OR r.offline_notified_at < r.last_seen)
         LIMIT $2",
    )
    .bind(now - after_ms)
    .bind(BATCH)
    .fetch_all(&mut *conn)
    .await?;
    let mut events = Vec::new();
    for (robot, last_seen, told, environment) in rows {
        let marked = sqlx::query(
            "UPDATE robots SET offline_notified_at = $1
             WHERE id = $2 AND COALESCE(offline_notified_at, 0) = $3",
        )
        .bind(now)
        .bind(&robot)
        .bind(told.unwrap_or(0))
        .execute(&mut *conn)
        .await?;
        if marked.rows_affected() == 0 {
            continue; // another replica told them
        }
        let silent_min = (now - last_seen) / 60_000;
        events.push(Event {
            name: "robot.offline",
            text: format!(
                "Rota: {robot} has been offline for {silent_min} min (last seen {})",
                rfc3339(last_seen)
            ),
            details: json!({ "robot": robot, "last_seen": rfc3339(last_seen) }),
            environment,
        });
    }
    Ok(events)
}

/// The cursor `name`; a missing one starts at `start` (so a server that just gained
/// notifications does not announce its whole history) and is stored.
async fn cursor(conn: &mut AnyConnection, name: &str, start: &str) -> ApiResult<i64> {
    let stored: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(value) = stored {
        return Ok(value.parse().unwrap_or(0));
    }
    let at: i64 = sqlx::query_scalar(start).fetch_one(&mut *conn).await?;
    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(at.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(at)
}

/// Moves cursor `name` from `from` to `to`; false when another replica moved it first.
async fn advance(conn: &mut AnyConnection, name: &str, from: i64, to: i64) -> ApiResult<bool> {
    let moved = sqlx::query("UPDATE settings SET value = $1 WHERE name = $2 AND value = $3")
        .bind(to.to_string())
        .bind(name)
        .bind(from.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(moved.rows_affected() == 1)
}

const LOG_CURSOR: &str = "notify_deployment_log_cursor";
const EVENTS_CURSOR: &str = "notify_robot_events_cursor";

/// One round: new events become deliveries. Returns how many were queued.
pub async fn produce(db: &Db, offline_after_ms: Option<i64>) -> ApiResult<usize> {
    let mut write = db.begin_write().await?;
    let channels = channels(&mut write.tx).await?;
    let log_at = cursor(
        &mut write.tx,
        LOG_CURSOR,
        "SELECT COALESCE(MAX(id), 0) FROM deployment_log",
    )
    .await?;
    let events_at = cursor(
        &mut write.tx,
        EVENTS_CURSOR,
        "SELECT COALESCE(MAX(id), 0) FROM robot_events",
    )
    .await?;
    let (mut events, log_last) = deployment_events(&mut write.tx, log_at).await?;
    let (robot, events_last) = robot_events(&mut write.tx, events_at).await?;
    events.extend(robot);
    let now = now_ms();
    if let Some(after) = offline_after_ms {
        events.extend(offline_robots(&mut write.tx, after, now).await?);
    }
    for (name, from, to) in [
        (LOG_CURSOR, log_at, log_last),
        (EVENTS_CURSOR, events_at, events_last),
    ] {
        if let Some(to) = to {
            if !advance(&mut write.tx, name, from, to).await? {
                // Another replica queued these: drop this round (the transaction rolls back).
                return Ok(0);
            }
        }
    }
    let mut queued = 0;
    for event in &events {
        for channel in channels.iter().filter(|c| c.hears(event)) {
            enqueue(&mut write.tx, channel, event, now).await?;
            queued += 1;
        }
    }
    write.commit().await?;
    Ok(queued)
}
