//! Robots' last-seen times, kept in memory and written in batches: a poll is then a pure read,
//! which is what lets one SQLite file serve a large fleet.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::db::Db;

#[derive(Default)]
pub struct LastSeen {
    pending: Mutex<HashMap<String, i64>>,
}

impl LastSeen {
    pub fn touch(&self, robot_id: &str, at_ms: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.insert(robot_id.to_string(), at_ms);
    }

    /// The newest time not yet written, for reads that want it fresh.
    pub fn get(&self, robot_id: &str) -> Option<i64> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(robot_id)
            .copied()
    }

    /// Writes what accumulated in one transaction. On failure the times are put back.
    pub async fn flush(&self, db: &Db) -> Result<usize, sqlx::Error> {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return Ok(0);
        }
        let result = async {
            let mut write = db.begin_write().await?;
            for (robot_id, at) in &batch {
                sqlx::query("UPDATE robots SET last_seen = $1 WHERE id = $2 AND (last_seen IS NULL OR last_seen < $3)")
                    .bind(*at)
                    .bind(robot_id)
                    .bind(*at)
                    .execute(&mut *write.tx)
                    .await?;
            }
            write.commit().await
        }
        .await;
        match result {
            Ok(()) => Ok(batch.len()),
            Err(err) => {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                for (robot_id, at) in batch {
                    let slot = pending.entry(robot_id).or_insert(at);
                    *slot = (*slot).max(at);
                }
                Err(err)
            }
        }
    }
}
