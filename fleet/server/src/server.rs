//! Starting and stopping: directories, database, first-start secrets, background flushes,
//! the listener, and a shutdown that ends long-polls at once.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use rota_protocol::operator::Role;
use tokio::sync::watch;

use crate::config::Settings;
use crate::db::Db;
use crate::routes::keys::insert_key;
use crate::secrets::{self, ENROLLMENT_KEY_PREFIX, OPERATOR_KEY_PREFIX};
use crate::state::{AppState, Shared};
use crate::{app, audit, rollout};

/// Creates the admin key and the enrollment key on first start. Generated secrets go to
/// stderr, once; configured ones are never printed.
async fn bootstrap(db: &Db, settings: &Settings) -> anyhow::Result<()> {
    let mut write = db.begin_write().await?;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT value FROM settings WHERE name = 'enrollment_key_hash'")
            .fetch_optional(&mut *write.tx)
            .await?;
    let wanted_hash = match (&settings.enrollment_key, stored) {
        (Some(key), _) => Some(secrets::hash(key)),
        (None, Some(_)) => None,
        (None, None) => {
            let key = secrets::generate(ENROLLMENT_KEY_PREFIX);
            eprintln!("rota-server: fleet enrollment key (shown only now; set ROTA_ENROLLMENT_KEY to choose one): {key}");
            Some(secrets::hash(&key))
        }
    };
    if let Some(hash) = wanted_hash {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('enrollment_key_hash', $1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(hash)
        .execute(&mut *write.tx)
        .await?;
    }

    let admins: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL",
    )
    .fetch_one(&mut *write.tx)
    .await?;
    if admins == 0 {
        let key = match &settings.bootstrap_admin_key {
            Some(key) => key.clone(),
            None => {
                let key = secrets::generate(OPERATOR_KEY_PREFIX);
                eprintln!("rota-server: bootstrap admin API key (shown only now): {key}");
                key
            }
        };
        let info = insert_key(
            &mut write.tx,
            &key,
            "bootstrap admin",
            Role::Admin,
            "server",
        )
        .await?;
        audit::Record {
            actor: "server".into(),
            action: "api_key.bootstrap",
            target: Some(format!("key:{}", info.id)),
            details: None,
            source_ip: None,
        }
        .write(&mut write.tx)
        .await?;
    }
    write.commit().await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// The rollout engine's clock: waits between stages and silent robots need decisions no
/// report triggers. Every replica ticks; the engine's locks make that safe.
async fn rollout_ticks(state: AppState) {
    let mut tick = tokio::time::interval(state.settings.rollout_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = rollout_tick(&state).await {
            tracing::warn!("rollout engine: {err}");
        }
    }
}

async fn rollout_tick(state: &AppState) -> anyhow::Result<()> {
    let running = {
        let mut conn = state.db.pool().acquire().await?;
        rollout::engine::running(&mut conn).await?
    };
    for id in running {
        let mut write = state.db.begin_write().await?;
        let evaluation = rollout::engine::evaluate(&mut write.tx, state.db.backend(), &id).await?;
        write.commit().await?;
        state.wake(&evaluation.offered).await;
    }
    Ok(())
}

/// Deployment history retention: at start, then every ten minutes. Every replica prunes; a
/// deployment deleted twice is deleted once.
async fn retention(state: AppState) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(600);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let keep = state.settings.keep_deployments;
        if let Err(err) = crate::retention::prune_deployments(&state.db, keep).await {
            tracing::warn!("deployment retention: {err}");
        }
    }
}

/// Notifications: every second, new events become deliveries and due deliveries are sent
/// (each on its own task: a dead endpoint never holds up the others or a rollout).
async fn notifications(state: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let http = reqwest::Client::new();
    let offline_after = state
        .settings
        .robot_offline_after
        .map(|after| after.as_millis() as i64);
    loop {
        tick.tick().await;
        if let Err(err) = crate::notify::produce(&state.db, offline_after).await {
            tracing::warn!("notifications: {err}");
        }
        if let Err(err) = crate::notify::deliver::dispatch(&state, &http).await {
            tracing::warn!("notification deliveries: {err}");
        }
    }
}

/// Raises the soft limit of open files to the hard one: every robot holding a long-poll is one
/// descriptor, and the common soft default of 1024 left about a thousand robots failing with
/// "Too many open files" (accepts, and SQLite opening its file). Returns the new soft limit.
pub fn raise_open_files_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return Ok(limit.current);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )?;
    Ok(limit.maximum)
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    match raise_open_files_limit() {
        Ok(limit) => tracing::info!(
            "open files limit: {}",
            limit.map_or("unlimited".into(), |n| n.to_string())
        ),
        Err(err) => tracing::warn!("cannot raise the open files limit: {err}"),
    }
    for dir in [
        &settings.data_dir,
        &settings.bundle_dir(),
        &settings.keyring_dir,
    ] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if rota_bundle::Keyring::load_dir(&settings.keyring_dir).is_err() {
        tracing::warn!(
            "the fleet keyring {} has no usable *.pub key: every release upload will be refused",
            settings.keyring_dir.display()
        );
    }
    let db = Db::connect(&settings.database_url).await?;
    let applied = db.migrate().await.context("migrating the database")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "database migrated");
    }
    bootstrap(&db, &settings)
        .await
        .context("creating first-start keys")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let listen = settings.listen;
    let flush_every = settings.last_seen_flush;
    let state = AppState::new(Shared {
        db,
        settings,
        hub: Default::default(),
        metrics: Default::default(),
        last_seen: Default::default(),
        shutdown: shutdown_rx,
        dashboard_changes: watch::Sender::new(None),
    });
    let flusher = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(flush_every);
            loop {
                tick.tick().await;
                if let Err(err) = state.last_seen.flush(&state.db).await {
                    tracing::warn!("writing robots' last-seen times: {err}");
                }
            }
        })
    };

    let engine = tokio::spawn(rollout_ticks(state.clone()));
    let pruner = tokio::spawn(retention(state.clone()));
    let notifier = tokio::spawn(notifications(state.clone()));
    let dashboard_poller = tokio::spawn(crate::dashboard::events::poll_changes(state.clone()));
    let wake_listener = (state.db.backend() == crate::db::Backend::Postgres)
        .then(|| tokio::spawn(crate::replica_wake::listen(state.clone())));

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    // The one line on stdout: where the server is (tests and scripts read it).
    println!("http://{address}");
    std::io::stdout().flush()?;
    tracing::info!("listening on http://{address}");

    axum::serve(
        listener,
        app::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    })
    .await
    .context("serving HTTP")?;
    flusher.abort();
    engine.abort();
    pruner.abort();
    notifier.abort();
    dashboard_poller.abort();
    if let Some(listener) = wake_listener {
        listener.abort();
    }
    state
        .last_seen
        .flush(&state.db)
        .await
        .context("writing last-seen times at shutdown")?;
    state.db.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

    /// It used to run under whatever soft limit it was given (1024 as a rule).
    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        let limit = getrlimit(Resource::Nofile);
        let Some(hard) = limit.maximum else {
            return; // unlimited: nothing to raise, and nothing this test can lower safely
        };
        let low = hard.min(256);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(low),
                maximum: Some(hard),
            },
        )
        .unwrap();
        assert_eq!(super::raise_open_files_limit().unwrap(), Some(hard));
        assert_eq!(getrlimit(Resource::Nofile).current, Some(hard));
    }
}
