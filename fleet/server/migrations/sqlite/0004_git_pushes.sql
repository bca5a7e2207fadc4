-- Version 4 (SQLite). Keep in step with ../postgres/0004_git_pushes.sql.
--
-- git_pushes: what the GitHub push webhook received. Releases link to a push by commit
-- (releases.git_commit equals after_commit, or is a prefix of it).
CREATE TABLE git_pushes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id   TEXT UNIQUE,
    repository    TEXT NOT NULL,
    git_ref       TEXT NOT NULL,
    branch        TEXT,
    before_commit TEXT NOT NULL,
    after_commit  TEXT NOT NULL,
    pusher        TEXT,
    head_message  TEXT,
    commit_count  BIGINT NOT NULL,
    received_at   BIGINT NOT NULL
);
CREATE INDEX git_pushes_after ON git_pushes(after_commit);

-- robot_version_reports: each time a robot's slot report names a running version other than the
-- one the server last knew, so history can tell a release no deployment gave (a factory image,
-- a manual install) from a deployed one.
CREATE TABLE robot_version_reports (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    robot_id   TEXT NOT NULL,
    version    TEXT NOT NULL,
    release_id TEXT,
    at         BIGINT NOT NULL
);
CREATE INDEX robot_version_reports_robot ON robot_version_reports(robot_id, id);
