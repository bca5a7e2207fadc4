-- Rota fleet schema, version 1 (PostgreSQL). Keep in step with ../sqlite/0001_initial.sql:
-- the two differ only in identity columns and trigger syntax.
-- Times are unix milliseconds (BIGINT); flags are 0/1 BIGINT so both databases decode alike.

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE robots (
    id          TEXT PRIMARY KEY,
    compatible  TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    approved    BIGINT NOT NULL,
    state       TEXT NOT NULL,
    progress    BIGINT,
    version     TEXT,
    slots_json  TEXT,
    enrolled_at BIGINT NOT NULL,
    last_seen   BIGINT
);

CREATE TABLE robot_groups (
    name       TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES robot_groups(name) ON DELETE CASCADE,
    robot_id   TEXT NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
    PRIMARY KEY (group_name, robot_id)
);
CREATE INDEX group_members_robot ON group_members(robot_id);

CREATE TABLE releases (
    id            TEXT PRIMARY KEY,
    version       TEXT NOT NULL,
    compatible    TEXT NOT NULL,
    git_commit    TEXT,
    git_branch    TEXT,
    size          BIGINT NOT NULL,
    manifest_hash TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    UNIQUE (compatible, version)
);

-- strategy: JSON of rota_protocol::operator::Strategy. state: DeploymentState.
CREATE TABLE deployments (
    id          TEXT PRIMARY KEY,
    release_id  TEXT NOT NULL REFERENCES releases(id),
    target      TEXT NOT NULL,
    strategy    TEXT NOT NULL,
    forced      BIGINT NOT NULL,
    state       TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX deployments_state ON deployments(state);

-- One row per robot a deployment reaches. stage orders rollouts (0 = immediate);
-- state: AssignmentState; detail: skip reason, rollback reason, error or progress.
CREATE TABLE assignments (
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    robot_id      TEXT NOT NULL,
    release_id    TEXT NOT NULL REFERENCES releases(id),
    stage         BIGINT NOT NULL,
    state         TEXT NOT NULL,
    detail        TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    PRIMARY KEY (deployment_id, robot_id)
);
CREATE INDEX assignments_robot_state ON assignments(robot_id, state);

-- Releases a robot rolled back from: never offered to it again unless a deployment forces it.
CREATE TABLE robot_release_blocks (
    robot_id   TEXT NOT NULL,
    release_id TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (robot_id, release_id)
);

CREATE TABLE robot_events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    robot_id      TEXT NOT NULL,
    deployment_id TEXT,
    release_id    TEXT,
    event         TEXT NOT NULL,
    detail        TEXT,
    at            BIGINT NOT NULL
);
CREATE INDEX robot_events_robot ON robot_events(robot_id, id);

CREATE TABLE audit_log (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT,
    details   TEXT,
    source_ip TEXT
);

-- The audit log is append-only: the database itself refuses to rewrite history.
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
