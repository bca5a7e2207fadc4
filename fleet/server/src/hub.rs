//! Wakes long-polling robots when something changes for them.
//!
//! One `Notify` per robot that ever long-polled. A poll registers interest *before* it reads
//! the database, so a deployment created between the read and the wait still wakes it.
//! With several server replicas on PostgreSQL, [`crate::replica_wake`] carries wake-ups to the
//! other replicas' hubs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct WakeHub {
    robots: Mutex<HashMap<String, Arc<Notify>>>,
}

impl WakeHub {
    /// The robot's wake-up signal, created on first use.
    pub fn signal(&self, robot_id: &str) -> Arc<Notify> {
        let mut robots = self.robots.lock().unwrap_or_else(|e| e.into_inner());
        robots.entry(robot_id.to_string()).or_default().clone()
    }

    /// Wakes every poll of `robot_id` that is waiting now.
    pub fn wake(&self, robot_id: &str) {
        let robots = self.robots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(signal) = robots.get(robot_id) {
            signal.notify_waiters();
        }
    }

    pub fn wake_many<'a>(&self, robot_ids: impl IntoIterator<Item = &'a str>) {
        let robots = self.robots.lock().unwrap_or_else(|e| e.into_inner());
        for id in robot_ids {
            if let Some(signal) = robots.get(id) {
                signal.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wake_between_registering_and_waiting_is_not_lost() {
        let hub = WakeHub::default();
        let signal = hub.signal("r1");
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        hub.wake("r1");
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("woken");
    }
}
