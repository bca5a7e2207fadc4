//! history: the releases each robot ran, or (--events) what robots reported.

use rota_protocol::operator::{
    release_label as label, HistoryEntry, ReleaseRun, RobotReleaseHistory, RunEnd, RunOrigin,
};

use crate::client::Api;
use crate::commands::show_filtered_list;
use crate::output::{self, or_dash};
use crate::when::When;

/// Which robots and which time range.
#[derive(Debug, Default)]
pub struct Filter {
    pub robot: Option<String>,
    pub group: Option<String>,
    pub app: Option<String>,
    pub since: Option<When>,
    pub until: Option<When>,
}

impl Filter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(robot) = &self.robot {
            query.push(("robot", robot.clone()));
        }
        if let Some(group) = &self.group {
            query.push(("group", group.clone()));
        }
        if let Some(app) = &self.app {
            query.push(("app", app.clone()));
        }
        if let Some(since) = self.since {
            query.push(("since", since.rfc3339()));
        }
        if let Some(until) = self.until {
            query.push(("until", until.rfc3339()));
        }
        query
    }
}

/// How the robot came to run it, in a few words.
fn origin_text(app: Option<&str>, origin: &RunOrigin) -> String {
    match origin {
        RunOrigin::Deployment {
            deployment_id,
            deployment_kind,
            ..
        } => format!(
            "{} {deployment_id}",
            deployment_kind.as_deref().unwrap_or("deployment")
        ),
        RunOrigin::RobotRollback { from_version, .. } => {
            format!("robot rolled back from {}", label(app, from_version))
        }
        RunOrigin::LocalInstall => "local install".into(),
    }
}

/// How the run ended, in a few words.
fn end_text(app: Option<&str>, end: &RunEnd) -> String {
    match end {
        RunEnd::Running => "running".into(),
        RunEnd::Replaced { by_version, at } => {
            format!(
                "replaced by {} at {}",
                label(app, by_version),
                output::time(at)
            )
        }
        RunEnd::RolledBack { reason, at } => {
            format!("rolled back at {}: {reason}", output::time(at))
        }
        RunEnd::Failed { error, at } => format!("failed at {}: {error}", output::time(at)),
    }
}

/// A run's row; an app's release reads `nav@1.4.0`, the OS's `v1.4.0`.
fn run_row(robot_id: &str, app: Option<&str>, run: &ReleaseRun) -> Vec<String> {
    vec![
        robot_id.to_string(),
        label(app, &run.version),
        output::time(&run.started_at),
        origin_text(app, &run.origin),
        end_text(app, &run.end),
    ]
}

pub fn releases(api: &Api, filter: &Filter, json: bool) -> anyhow::Result<()> {
    let histories: Vec<RobotReleaseHistory> =
        api.get_with_query("/history/releases", &filter.query())?;
    if json {
        return output::json(&histories);
    }
    let mut rows = Vec::new();
    for history in &histories {
        if history.runs.is_empty() {
            rows.push(vec![
                history.robot_id.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "no release in this range".into(),
            ]);
        }
        rows.extend(
            history
                .runs
                .iter()
                .map(|run| run_row(&history.robot_id, history.app.as_deref(), run)),
        );
    }
    output::table(
        &["ROBOT", "VERSION", "SINCE", "HOW", "ENDED"],
        &rows,
        Some("no robots match: robots appear here once they enroll"),
    )
}

pub fn events(
    api: &Api,
    filter: &Filter,
    deployment: Option<&str>,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let mut query = filter.query();
    query.push(("limit", limit.to_string()));
    if let Some(deployment) = deployment {
        query.push(("deployment", deployment.to_string()));
    }
    let headers = ["AT", "ROBOT", "VERSION", "EVENT", "DETAIL", "DEPLOYMENT"];
    show_filtered_list(
        api,
        "/history",
        &query,
        json,
        &headers,
        "no events match: robots report events as they download, install and commit",
        |e: &HistoryEntry| {
            vec![
                output::time(&e.at),
                e.robot_id.clone(),
                e.version.as_deref().map_or("-".into(), |v| format!("v{v}")),
                e.event.clone(),
                or_dash(e.detail.as_deref()),
                or_dash(e.deployment_id.as_deref()),
            ]
        },
    )
}
