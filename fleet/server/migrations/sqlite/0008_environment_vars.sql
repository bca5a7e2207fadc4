-- Version 8. Keep in step with the other backend's 0008_environment_vars.sql.
--
-- Variables and secrets of an environment, delivered with app assignments to its robots, which
-- write them to the app's EnvironmentFile (0600). secret: the value is never answered, logged
-- or audited after it is set; version counts the changes.
CREATE TABLE environment_vars (
    environment TEXT NOT NULL REFERENCES environments(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    secret      BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL,
    PRIMARY KEY (environment, name)
);
