-- Version 5 (PostgreSQL). Keep in step with ../sqlite/0005_dashboard_sessions.sql.
--
-- dashboard_sessions: browsers logged in to the dashboard with an operator API key. The cookie
-- holds a random token; only its SHA-256 is stored, like every other secret. The role is read
-- from the key at each request, so revoking the key ends its sessions at once. In the database
-- (not in a server's memory) so that every replica behind a load balancer knows every session.
CREATE TABLE dashboard_sessions (
    token_hash TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL REFERENCES api_keys(id),
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions(expires_at);
