-- Rollouts: environments with their rules, staged and canary deployments, and each
-- deployment's own timeline of decisions.

-- strategy: JSON of rota_protocol::operator::Strategy; update_window: JSON UpdateWindow or NULL.
CREATE TABLE environments (
    name              TEXT PRIMARY KEY,
    auto_deploy       BIGINT NOT NULL,
    approval_required BIGINT NOT NULL,
    update_window     TEXT,
    strategy          TEXT NOT NULL,
    created_at        BIGINT NOT NULL
);

-- A group belongs to at most one environment.
ALTER TABLE robot_groups ADD COLUMN environment TEXT;

-- kind: deploy, rollback, promote or auto (published from a branch).
-- current_stage: the highest stage offered so far; stage_done_at: when it finished, so the
-- wait before the next one counts from there. parent_id: what a rollback undoes.
ALTER TABLE deployments ADD COLUMN kind TEXT NOT NULL DEFAULT 'deploy';
ALTER TABLE deployments ADD COLUMN environment TEXT;
ALTER TABLE deployments ADD COLUMN update_window TEXT;
ALTER TABLE deployments ADD COLUMN stage_count BIGINT NOT NULL DEFAULT 1;
ALTER TABLE deployments ADD COLUMN current_stage BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN stage_done_at BIGINT;
ALTER TABLE deployments ADD COLUMN halt_reason TEXT;
ALTER TABLE deployments ADD COLUMN approved_by TEXT;
ALTER TABLE deployments ADD COLUMN parent_id TEXT;

-- One row per rollout decision (stage started, halted, paused, approved, ...): a stage that
-- started twice would show here twice.
CREATE TABLE deployment_log (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    at            BIGINT NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    stage         BIGINT,
    detail        TEXT
);
CREATE INDEX deployment_log_deployment ON deployment_log(deployment_id, id);
