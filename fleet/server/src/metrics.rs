//! Prometheus text exposition at `/metrics`: request latency (a histogram per route), robot
//! events and deployments created (counters), and robots by state and version, deployments by
//! state (gauges read from the database at scrape time, so every replica reports the truth).

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

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    events: Mutex<BTreeMap<String, u64>>,
    deployments_created: Mutex<u64>,
}

impl Metrics {
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let histogram = requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        for (bound, count) in BUCKETS.iter().zip(histogram.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    pub fn count_event(&self, event: &str) {
        *self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(event.to_string())
            .or_default() += 1;
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
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "rota_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "rota_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "rota_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "rota_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
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
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
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
