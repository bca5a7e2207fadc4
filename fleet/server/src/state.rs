//! What every request handler shares.

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Settings;
use crate::db::Db;
use crate::hub::WakeHub;
use crate::metrics::Metrics;
use crate::seen::LastSeen;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub db: Db,
    pub settings: Settings,
    pub hub: WakeHub,
    pub metrics: Metrics,
    pub last_seen: LastSeen,
    /// Turns true when the server shuts down, so long-polls answer at once.
    pub shutdown: watch::Receiver<bool>,
    /// The dashboard's view of the database, as one poller per replica last saw it
    /// ([`crate::dashboard::events`]); every event stream watches this.
    pub dashboard_changes: watch::Sender<Option<String>>,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }

    /// Wakes the long-polls of robots offered something new, on this replica and the others.
    pub async fn wake(&self, robots: &[String]) {
        self.hub.wake_many(robots.iter().map(String::as_str));
        crate::replica_wake::publish(&self.db, robots).await;
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
