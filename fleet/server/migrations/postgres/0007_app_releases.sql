-- Version 7 (PostgreSQL). Keep in step with ../sqlite/0007_app_releases.sql.
--
-- app: the app an app release belongs to (bundle format 3, `rota-image app`); NULL for an OS
-- release. A version is unique per compatible string and app, so app nav 1.0.0 and OS 1.0.0
-- live side by side.
ALTER TABLE releases ADD COLUMN app TEXT;
ALTER TABLE releases DROP CONSTRAINT releases_compatible_version_key;
CREATE UNIQUE INDEX releases_compatible_app_version ON releases (compatible, COALESCE(app, ''), version);
