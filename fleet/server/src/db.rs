//! One database handle for SQLite and PostgreSQL (sqlx's `Any` driver), and the migrations.
//!
//! Queries are written once in the SQL both databases share (`$1` placeholders, `RETURNING`,
//! `ON CONFLICT`, BIGINT times and flags); only the schema differs, in `migrations/<backend>/`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor};
use tokio::sync::{Mutex, MutexGuard};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("connecting to the database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("applying migration {version} ({name}): {source}")]
    Migrate {
        version: i64,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error("the database has schema version {found}, newer than this server knows ({known}); upgrade rota-server")]
    TooNew { found: i64, known: i64 },
    #[error(transparent)]
    Query(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Versioned schema changes, applied in order, each in its own transaction.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sqlite: include_str!("../migrations/sqlite/0001_initial.sql"),
        postgres: include_str!("../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "enrollment_nonce",
        sqlite: include_str!("../migrations/sqlite/0002_enrollment_nonce.sql"),
        postgres: include_str!("../migrations/postgres/0002_enrollment_nonce.sql"),
    },
    Migration {
        version: 3,
        name: "rollouts",
        sqlite: include_str!("../migrations/sqlite/0003_rollouts.sql"),
        postgres: include_str!("../migrations/postgres/0003_rollouts.sql"),
    },
    Migration {
        version: 4,
        name: "git_pushes_and_version_reports",
        sqlite: include_str!("../migrations/sqlite/0004_git_pushes.sql"),
        postgres: include_str!("../migrations/postgres/0004_git_pushes.sql"),
    },
    Migration {
        version: 5,
        name: "dashboard_sessions",
        sqlite: include_str!("../migrations/sqlite/0005_dashboard_sessions.sql"),
        postgres: include_str!("../migrations/postgres/0005_dashboard_sessions.sql"),
    },
    Migration {
        version: 6,
        name: "inventory_tags_dynamic_groups",
        sqlite: include_str!("../migrations/sqlite/0006_inventory.sql"),
        postgres: include_str!("../migrations/postgres/0006_inventory.sql"),
    },
    Migration {
        version: 7,
        name: "app_releases",
        sqlite: include_str!("../migrations/sqlite/0007_app_releases.sql"),
        postgres: include_str!("../migrations/postgres/0007_app_releases.sql"),
    },
    Migration {
        version: 8,
        name: "environment_vars",
        sqlite: include_str!("../migrations/sqlite/0008_environment_vars.sql"),
        postgres: include_str!("../migrations/postgres/0008_environment_vars.sql"),
    },
    Migration {
        version: 9,
        name: "notifications",
        sqlite: include_str!("../migrations/sqlite/0009_notifications.sql"),
        postgres: include_str!("../migrations/postgres/0009_notifications.sql"),
    },
];

pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer; taking turns here instead of in SQLite's busy loop avoids
    /// `SQLITE_BUSY` when a read transaction wants to become a write one.
    sqlite_writer: Option<Mutex<()>>,
}

/// A write transaction (holding SQLite's writer turn, when on SQLite).
pub struct WriteTx<'a> {
    pub tx: sqlx::Transaction<'static, sqlx::Any>,
    _turn: Option<MutexGuard<'a, ()>>,
}

impl WriteTx<'_> {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl Db {
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let connect_err = |source| DbError::Connect {
            url: redact(url),
            source,
        };
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let options = AnyConnectOptions::from_str(url).map_err(connect_err)?;
        let pool_options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(30));
        let pool = if backend == Backend::Sqlite {
            pool_options
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        // WAL: readers never block the writer; NORMAL sync is durable across
                        // process crashes, which is what a server restart test exercises.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 10000",
                        ] {
                            conn.execute(pragma).await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(options)
                .await
        } else {
            pool_options.connect_with(options).await
        }
        .map_err(connect_err)?;
        let sqlite_writer = (backend == Backend::Sqlite).then(|| Mutex::new(()));
        Ok(Db {
            pool,
            backend,
            sqlite_writer,
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn begin_write(&self) -> Result<WriteTx<'_>, sqlx::Error> {
        let turn = match &self.sqlite_writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let tx = self.pool.begin().await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Brings the schema to the newest version; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<i64>, DbError> {
        let mut conn = self.pool.acquire().await?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(&mut *conn)
            .await?;
        let current = current.unwrap_or(0);
        let known = MIGRATIONS.last().map_or(0, |m| m.version);
        if current > known {
            return Err(DbError::TooNew {
                found: current,
                known,
            });
        }
        let mut applied = Vec::new();
        for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
            let err = |source| DbError::Migrate {
                version: migration.version,
                name: migration.name,
                source,
            };
            let sql = match self.backend {
                Backend::Sqlite => migration.sqlite,
                Backend::Postgres => migration.postgres,
            };
            let mut tx = conn.begin().await.map_err(err)?;
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(err)?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(migration.version)
            .bind(migration.name)
            .bind(crate::time::now_ms())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            tx.commit().await.map_err(err)?;
            applied.push(migration.version);
        }
        Ok(applied)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The URL without its password, for error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://rota:s3cret@db:5432/rota"),
            "postgres://rota:***@db:5432/rota"
        );
        assert_eq!(redact("sqlite:///x/rota.db"), "sqlite:///x/rota.db");
    }

    #[tokio::test]
    async fn migrations_apply_once_and_the_audit_log_refuses_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::connect(&url).await.unwrap();
        let every_version: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(
            every_version.windows(2).all(|pair| pair[0] < pair[1]),
            "migrations must be listed in increasing version order: {every_version:?}"
        );
        assert_eq!(db.migrate().await.unwrap(), every_version);
        assert_eq!(db.migrate().await.unwrap(), Vec::<i64>::new());
        sqlx::query("INSERT INTO audit_log (at, actor, action) VALUES ($1, $2, $3)")
            .bind(1_i64)
            .bind("test")
            .bind("poke")
            .execute(db.pool())
            .await
            .unwrap();
        let update = sqlx::query("UPDATE audit_log SET actor = 'someone else'")
            .execute(db.pool())
            .await;
        assert!(update.unwrap_err().to_string().contains("append-only"));
        let delete = sqlx::query("DELETE FROM audit_log")
            .execute(db.pool())
            .await;
        assert!(delete.unwrap_err().to_string().contains("append-only"));
    }

    /// Version 7 rebuilds `releases` on SQLite: the deployments and assignments of a server
    /// that ran version 6 keep pointing at their releases, and an app release may then share
    /// an OS release's version.
    #[tokio::test]
    async fn the_app_release_migration_keeps_what_deployments_point_at() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::connect(&url).await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        conn.execute(
            "CREATE TABLE schema_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await
        .unwrap();
        for migration in MIGRATIONS.iter().filter(|m| m.version <= 6) {
            sqlx::raw_sql(migration.sqlite)
                .execute(&mut *conn)
                .await
                .unwrap();
            sqlx::query("INSERT INTO schema_migrations VALUES ($1, $2, 0)")
                .bind(migration.version)
                .bind(migration.name)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        sqlx::raw_sql(
            "INSERT INTO releases (id, version, compatible, size, manifest_hash, bundle_sha256,
                                   created_at, created_by)
                 VALUES ('rel_os', '1.0.0', 'board', 1, 'm', 'b', 0, 'ci');
             INSERT INTO deployments (id, release_id, target, strategy, forced, state, created_by,
                                      created_at)
                 VALUES ('dep_1', 'rel_os', 'all', '{}', 0, 'running', 'ci', 0);
             INSERT INTO assignments (deployment_id, robot_id, release_id, stage, state,
                                      created_at, updated_at)
                 VALUES ('dep_1', 'robot-1', 'rel_os', 0, 'pending', 0, 0);",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        drop(conn);

        assert_eq!(db.migrate().await.unwrap(), [7, 8, 9]);
        let release: (String, Option<String>) = sqlx::query_as(
            "SELECT r.id, r.app FROM assignments a JOIN releases r ON r.id = a.release_id",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(release, ("rel_os".to_string(), None));
        let broken: Vec<(String,)> =
            sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
                .fetch_all(db.pool())
                .await
                .unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        let insert = |id: &'static str, app: Option<&'static str>| {
            sqlx::query(
                "INSERT INTO releases (id, version, compatible, size, manifest_hash, bundle_sha256,
                                       created_at, created_by, app)
                 VALUES ($1, '1.0.0', 'board', 1, $1, $1, 0, 'ci', $2)",
            )
            .bind(id)
            .bind(app)
            .execute(db.pool())
        };
        insert("rel_app", Some("nav")).await.unwrap();
        assert!(insert("rel_app_again", Some("nav")).await.is_err());
        assert!(insert("rel_os_again", None).await.is_err());
    }
}
