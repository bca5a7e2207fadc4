//! Prometheus text exposition at `/metrics`: request latency (a histogram per route), robot
//! events and deployments created (counters of this process), and, read from the database at
//! scrape time so every replica reports the truth: robots by state and version, deployments by
//! state, each release's outcomes on robots, how long finished deployments took, and the
//! robots of each environment behind its current release.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiResult;
use crate::state::AppState;

/// Upper bounds in seconds. Long-polls land in the top buckets; the `route` label keeps them
/// apart from the calls whose latency matters.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0,
];

/// Cumulative bucket counts over `N` upper bounds, with the count and sum.
struct Histogram<const N: usize> {
    counts: [u64; N],
    count: u64,
    sum: f64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            counts: [0; N],
            count: 0,
            sum: 0.0,
        }
    }
}

impl<const N: usize> Histogram<N> {
    fn observe(&mut self, bounds: &[f64; N], value: f64) {
        for (bound, count) in bounds.iter().zip(self.counts.iter_mut()) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    /// The `_bucket`, `_sum` and `_count` lines of `name` with `labels`.
    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64; N]) {
        for (bound, count) in bounds.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Histogram<{ BUCKETS.len() }>>>,
    events: Mutex<BTreeMap<String, u64>>,
    deployments_created: Mutex<u64>,
    dashboard_polls: std::sync::atomic::AtomicU64,
}

impl Metrics {
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default()
            .observe(&BUCKETS, elapsed.as_secs_f64());
    }

    pub fn count_event(&self, event: &str) {
        *self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(event.to_string())
            .or_default() += 1;
    }

    pub fn count_dashboard_poll(&self) {
        self.dashboard_polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn count_deployment(&self) {
        *self
            .deployments_created
            .lock()
            .unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn render_counters(&self, out: &mut String) {
        out.push_str("# HELP rota_http_request_duration_seconds Time to answer API requests.\n");
        out.push_str("# TYPE rota_http_request_duration_seconds histogram\n");
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((method, route, status), h) in requests.iter() {
            let labels = format!(
                "method=\"{method}\",route=\"{}\",status=\"{status}\"",
                escape(route)
            );
            h.render(out, "rota_http_request_duration_seconds", &labels, &BUCKETS);
        }
        drop(requests);
        out.push_str("# HELP rota_robot_events_total Events robots reported, by event.\n");
        out.push_str("# TYPE rota_robot_events_total counter\n");
        for (event, count) in self.events.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "rota_robot_events_total{{event=\"{event}\"}} {count}");
        }
        out.push_str(
            "# HELP rota_deployments_created_total Deployments created by this process.\n",
        );
        out.push_str("# TYPE rota_deployments_created_total counter\n");
        let created = *self
            .deployments_created
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "rota_deployments_created_total {created}");
        out.push_str("# HELP rota_dashboard_change_polls_total Looks at the database for the dashboard's live updates (one poller per replica, whatever the number of open pages).\n# TYPE rota_dashboard_change_polls_total counter\n");
        let polls = self
            .dashboard_polls
            .load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "rota_dashboard_change_polls_total {polls}");
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware timing every request under its route pattern (not its raw path, which would
/// make one series per robot).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    state.metrics.observe_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `GET /metrics`
pub async fn render(State(state): State<AppState>) -> ApiResult<Response> {
    let mut out = String::new();
    state.metrics.render_counters(&mut out);
    let pool = state.db.pool();
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM robots GROUP BY state")
            .fetch_all(pool)
            .await?;
    out.push_str("# HELP rota_robots Robots by state.\n# TYPE rota_robots gauge\n");
    for (robot_state, count) in by_state {
        let _ = writeln!(
            out,
            "rota_robots{{state=\"{}\"}} {count}",
            escape(&robot_state)
        );
    }
    let by_version: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT version, COUNT(*) FROM robots GROUP BY version")
            .fetch_all(pool)
            .await?;
    out.push_str("# HELP rota_robots_by_version Robots by the version they run.\n# TYPE rota_robots_by_version gauge\n");
    for (version, count) in by_version {
        let version = version.unwrap_or_else(|| "unknown".into());
        let _ = writeln!(
            out,
            "rota_robots_by_version{{version=\"{}\"}} {count}",
            escape(&version)
        );
    }
    let deployments: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM deployments GROUP BY state")
            .fetch_all(pool)
            .await?;
    out.push_str("# HELP rota_deployments Deployments by state.\n# TYPE rota_deployments gauge\n");
    for (deployment_state, count) in deployments {
        let _ = writeln!(
            out,
            "rota_deployments{{state=\"{}\"}} {count}",
            escape(&deployment_state)
        );
    }
    release_outcomes(pool, &mut out).await?;
    deployment_durations(pool, &mut out).await?;
    update_lag(&state, &mut out).await?;
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// How each release ended on robots, from what they reported (kept beyond deployment
/// retention): committed, rolled back, failed.
async fn release_outcomes(pool: &sqlx::AnyPool, out: &mut String) -> ApiResult<()> {
    let rows: Vec<(String, Option<String>, String, i64)> = sqlx::query_as(
        "SELECT r.version, r.app, x.event, COUNT(*) FROM robot_events x
         JOIN releases r ON r.id = x.release_id
         WHERE x.event IN ('committed', 'rolled_back', 'failed')
         GROUP BY r.version, r.app, x.event ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await?;
    out.push_str("# HELP rota_release_outcomes_total Robots that committed, rolled back or failed each release.\n# TYPE rota_release_outcomes_total counter\n");
    for (version, app, outcome, count) in rows {
        let _ = writeln!(
            out,
            "rota_release_outcomes_total{{release=\"{}\",outcome=\"{outcome}\"}} {count}",
            escape(&rota_protocol::operator::release_label(
                app.as_deref(),
                &version
            ))
        );
    }
    Ok(())
}

/// Upper bounds in seconds of how long finished deployments took, creation to end.
const DEPLOYMENT_BUCKETS: [f64; 9] = [
    10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// How long the finished deployments the server keeps took, by how they ended: a histogram
/// read at scrape time, so every replica reports the same.
async fn deployment_durations(pool: &sqlx::AnyPool, out: &mut String) -> ApiResult<()> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, finished_at - created_at FROM deployments
         WHERE finished_at IS NOT NULL ORDER BY state",
    )
    .fetch_all(pool)
    .await?;
    let mut by_state: BTreeMap<String, Histogram<9>> = BTreeMap::new();
    for (end, millis) in rows {
        by_state
            .entry(end)
            .or_default()
            .observe(&DEPLOYMENT_BUCKETS, millis.max(0) as f64 / 1000.0);
    }
    out.push_str("# HELP rota_deployment_duration_seconds How long finished deployments took, by how they ended.\n# TYPE rota_deployment_duration_seconds histogram\n");
    for (end, histogram) in &by_state {
        histogram.render(
            out,
            "rota_deployment_duration_seconds",
            &format!("state=\"{}\"", escape(end)),
            &DEPLOYMENT_BUCKETS,
        );
    }
    Ok(())
}

/// Robots of each environment not on its current OS release: the release of the newest
/// deployment to the environment that succeeded.
async fn update_lag(state: &AppState, out: &mut String) -> ApiResult<()> {
    let mut conn = state.db.pool().acquire().await?;
    let environments: Vec<String> =
        sqlx::query_scalar("SELECT name FROM environments ORDER BY name")
            .fetch_all(&mut *conn)
            .await?;
    out.push_str("# HELP rota_robots_behind Robots of an environment not running the OS release its newest successful deployment gave.\n# TYPE rota_robots_behind gauge\n");
    // Every robot's version, read once for all environments.
    let versions: BTreeMap<String, Option<String>> =
        sqlx::query_as::<_, (String, Option<String>)>("SELECT id, version FROM robots")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    for environment in environments {
        let current: Option<String> = sqlx::query_scalar(
            "SELECT r.version FROM deployments d JOIN releases r ON r.id = d.release_id
             WHERE d.environment = $1 AND d.state = 'succeeded' AND r.app IS NULL
             ORDER BY d.created_at DESC LIMIT 1",
        )
        .bind(&environment)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(current) = current else {
            continue;
        };
        let target = rota_protocol::operator::DeploymentTarget::Env(environment.clone());
        let robots = crate::rollout::target_robots(&mut conn, &target).await?;
        let behind = robots
            .iter()
            .filter(|robot| {
                versions.get(&robot.id).and_then(Option::as_deref) != Some(current.as_str())
            })
            .count();
        let _ = writeln!(
            out,
            "rota_robots_behind{{environment=\"{}\",release=\"v{}\"}} {behind}",
            escape(&environment),
            escape(&current)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.observe_request("GET", "/x", 200, Duration::from_millis(3));
        metrics.observe_request("GET", "/x", 200, Duration::from_millis(40));
        let mut out = String::new();
        metrics.render_counters(&mut out);
        assert!(out.contains(r#"rota_http_request_duration_seconds_bucket{method="GET",route="/x",status="200",le="0.001"} 0"#));
        assert!(out.contains(r#"rota_http_request_duration_seconds_bucket{method="GET",route="/x",status="200",le="0.005"} 1"#));
        assert!(out.contains(r#"rota_http_request_duration_seconds_bucket{method="GET",route="/x",status="200",le="0.05"} 2"#));
        assert!(out.contains(
            r#"rota_http_request_duration_seconds_count{method="GET",route="/x",status="200"} 2"#
        ));
    }
}
