//! Robots' last-seen times, kept in memory and written in batches: a poll is then a pure read,
//! which is what lets one SQLite file serve a large fleet.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::db::Db;

/// Robots per UPDATE statement (two parameters each; both databases take far more).
const FLUSH_CHUNK: usize = 500;

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
            // Sorted, so concurrent writers lock robot rows in one order (no deadlocks on
            // PostgreSQL); one statement per chunk instead of one per robot.
            let mut rows: Vec<(&String, &i64)> = batch.iter().collect();
            rows.sort();
            for chunk in rows.chunks(FLUSH_CHUNK) {
                let values = (0..chunk.len())
                    .map(|i| format!("SELECT ${} AS id, ${} AS at", 2 * i + 1, 2 * i + 2))
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ");
                let sql = format!(
                    "UPDATE robots SET last_seen = seen.at FROM ({values}) AS seen
                     WHERE robots.id = seen.id AND (robots.last_seen IS NULL OR robots.last_seen < seen.at)"
                );
                let mut query = sqlx::query(&sql);
                for (robot_id, at) in chunk {
                    query = query.bind(robot_id.as_str()).bind(**at);
                }
                query.execute(&mut *write.tx).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flush_writes_newer_times_in_batches_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("t.db").display()
        ))
        .await
        .unwrap();
        db.migrate().await.unwrap();
        for n in 0..1200 {
            sqlx::query(
                "INSERT INTO robots (id, compatible, token_hash, approved, state, enrolled_at, last_seen)
                 VALUES ($1, 'x', $2, 1, 'idle', 0, 50)",
            )
            .bind(format!("r{n}"))
            .bind(format!("h{n}"))
            .execute(db.pool())
            .await
            .unwrap();
        }
        let seen = LastSeen::default();
        for n in 0..1200 {
            // r0 is touched with an older time than the stored one: it must stay.
            seen.touch(&format!("r{n}"), if n == 0 { 10 } else { 1000 + n });
        }
        assert_eq!(seen.flush(&db).await.unwrap(), 1200);
        assert_eq!(seen.flush(&db).await.unwrap(), 0);
        let times: Vec<(String, i64)> = sqlx::query_as("SELECT id, last_seen FROM robots")
            .fetch_all(db.pool())
            .await
            .unwrap();
        for (id, at) in times {
            let n: i64 = id[1..].parse().unwrap();
            assert_eq!(at, if n == 0 { 50 } else { 1000 + n }, "{id}");
        }
    }
}
