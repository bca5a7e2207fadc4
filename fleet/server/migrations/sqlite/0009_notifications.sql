-- Version 9. Keep in step with the other backend's 0009_notifications.sql.
--
-- Notification channels (webhook, Slack, email) and the log of their deliveries. A channel hears the events of
-- deployments to its environment and of that environment's robots (environment NULL: all);
-- events: JSON array of event names, empty for all. secret: the webhook's HMAC key, never
-- answered (an email channel's SMTP password); email_to (JSON array) and email_from: an email
-- channel's addresses. A delivery is pending until an attempt succeeds (delivered) or the last one fails
-- (failed); next_at: when it may be tried (again), also a claim's lease.
CREATE TABLE notification_channels (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    url         TEXT NOT NULL,
    secret      TEXT,
    environment TEXT,
    events      TEXT NOT NULL,
    email_to    TEXT,
    email_from  TEXT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE notification_deliveries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    channel     TEXT NOT NULL,
    event       TEXT NOT NULL,
    body        TEXT NOT NULL,
    text        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    next_at     BIGINT NOT NULL,
    last_error  TEXT,
    created_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX notification_deliveries_due ON notification_deliveries(state, next_at);
CREATE INDEX notification_deliveries_channel ON notification_deliveries(channel, id);

-- When the server last told the channels that the robot went silent: once per silence.
ALTER TABLE robots ADD COLUMN offline_notified_at BIGINT;
