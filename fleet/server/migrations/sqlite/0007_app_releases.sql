-- Version 7 (SQLite). Keep in step with ../postgres/0007_app_releases.sql.
--
-- app: the app an app release belongs to (bundle format 3, `rota-image app`); NULL for an OS
-- release. A version is unique per compatible string and app, so app nav 1.0.0 and OS 1.0.0
-- live side by side. SQLite cannot drop a table's UNIQUE constraint: the table is rebuilt under
-- its own name (so the REFERENCES of deployments and assignments still name it), with the
-- foreign keys checked at commit.
PRAGMA defer_foreign_keys = ON;
CREATE TEMP TABLE releases_v6 AS SELECT * FROM releases;
-- The implicit DELETE of the drop counts the rows of deployments and assignments that point at
-- a release as deferred violations; inserting the releases again into the new table (under
-- the old name) settles each one before the commit checks.
DROP TABLE releases;
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
    app           TEXT
);
INSERT INTO releases (id, version, compatible, git_commit, git_branch, size, manifest_hash,
                      bundle_sha256, created_at, created_by)
    SELECT id, version, compatible, git_commit, git_branch, size, manifest_hash, bundle_sha256,
           created_at, created_by
    FROM releases_v6;
DROP TABLE releases_v6;
CREATE UNIQUE INDEX releases_compatible_app_version ON releases (compatible, COALESCE(app, ''), version);
