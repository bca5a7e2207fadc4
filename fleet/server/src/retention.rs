//! How long deployments are kept: the newest `keep_deployments` of each environment (deployments
//! to no environment count as one more), and beyond those every deployment that is unfinished
//! or still referenced by an enrolled robot: the deployments of its two newest committed
//! assignments on each track (its OS and each app), which gave it what it runs and what it
//! ran before. A pruned deployment's rows (the deployment, its assignments, its rollout log)
//! are deleted; the robots' own events, from which history and rollbacks are read, and the
//! audit log stay.

use sqlx::AnyConnection;

use crate::db::Db;
use crate::error::ApiResult;

/// Days a finished notification delivery stays in the delivery log.
const DELIVERY_DAYS: i64 = 30;

/// Deployments deleted per transaction, so a first prune of a large history does not hold the
/// writer for long.
const BATCH: i64 = 500;

/// Finished deployments of one environment (`''`: none) outside its newest `$2`, that no robot
/// references.
const PRUNABLE_SQL: &str = "
    SELECT d.id FROM deployments d
    WHERE COALESCE(d.environment, '') = $1 AND d.finished_at IS NOT NULL
      AND d.id NOT IN (SELECT n.id FROM deployments n WHERE COALESCE(n.environment, '') = $1
                       ORDER BY n.created_at DESC, n.id DESC LIMIT $2)
      AND NOT EXISTS (
        SELECT 1 FROM assignments a JOIN releases r ON r.id = a.release_id
        JOIN robots robot ON robot.id = a.robot_id
        WHERE a.deployment_id = d.id AND a.state = 'committed'
          AND (SELECT COUNT(*) FROM assignments b JOIN releases rb ON rb.id = b.release_id
               WHERE b.robot_id = a.robot_id AND b.state = 'committed'
                 AND COALESCE(rb.app, '') = COALESCE(r.app, '')
                 AND b.finished_at > a.finished_at) < 2)
    ORDER BY d.created_at LIMIT $3";

/// Deletes what the retention lets go; `keep` 0 keeps every deployment. Finished
/// notification deliveries go after 30 days whatever `keep` says. Returns how many
/// deployments were deleted.
pub async fn prune_deployments(db: &Db, keep: u32) -> ApiResult<u64> {
    if keep == 0 {
        return prune_deliveries(db).await.map(|()| 0);
    }
    let environments: Vec<String> = {
        let mut conn = db.pool().acquire().await?;
        sqlx::query_scalar("SELECT DISTINCT COALESCE(environment, '') FROM deployments")
            .fetch_all(&mut *conn)
            .await?
    };
    let mut deleted = 0;
    for environment in environments {
        loop {
            // Found outside the writer's turn (the search is the expensive part) ...
            let ids: Vec<String> = {
                let mut conn = db.pool().acquire().await?;
                sqlx::query_scalar(PRUNABLE_SQL)
                    .bind(&environment)
                    .bind(i64::from(keep))
                    .bind(BATCH)
                    .fetch_all(&mut *conn)
                    .await?
            };
            // ... and each checked again under its lock: `retry` may have reopened it since.
            let mut write = db.begin_write().await?;
            let mut gone = 0;
            for id in &ids {
                crate::rollout::lock_deployment(&mut write.tx, db.backend(), id).await?;
                let finished: Option<Option<i64>> =
                    sqlx::query_scalar("SELECT finished_at FROM deployments WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *write.tx)
                        .await?;
                if matches!(finished, Some(Some(_))) {
                    delete_deployment(&mut write.tx, id).await?;
                    gone += 1;
                }
            }
            write.commit().await?;
            deleted += gone;
            if (ids.len() as i64) < BATCH {
                break;
            }
        }
    }
    if deleted > 0 {
        tracing::info!("retention: deleted {deleted} old deployments");
    }
    prune_deliveries(db).await?;
    Ok(deleted)
}

/// Finished notification deliveries older than [`DELIVERY_DAYS`].
async fn prune_deliveries(db: &Db) -> ApiResult<()> {
    let cutoff = crate::time::now_ms() - DELIVERY_DAYS * 24 * 3600 * 1000;
    let mut write = db.begin_write().await?;
    sqlx::query(
        "DELETE FROM notification_deliveries WHERE finished_at IS NOT NULL AND finished_at < $1",
    )
    .bind(cutoff)
    .execute(&mut *write.tx)
    .await?;
    write.commit().await?;
    Ok(())
}

async fn delete_deployment(conn: &mut AnyConnection, id: &str) -> ApiResult<()> {
    for sql in [
        "DELETE FROM assignments WHERE deployment_id = $1",
        "DELETE FROM deployment_log WHERE deployment_id = $1",
        "DELETE FROM deployments WHERE id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *conn).await?;
    }
    Ok(())
}
