//! deploy [--wait]: create a deployment, then watch robots finish one by one.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use rota_protocol::operator::{
    CreateDeploymentRequest, Deployment, DeploymentState, DeploymentTarget, Strategy,
};
use rota_protocol::robot::AssignmentState;

use crate::cli::WaitArgs;
use crate::client::Api;

/// How `deploy` ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    RobotsFailed,
    TimedOut,
    /// It ended without updating any robot: all skipped or cancelled.
    NoRobotUpdated,
}

const POLL_INTERVAL: Duration = Duration::from_millis(300);

pub struct DeployArgs {
    pub release: String,
    pub target: DeploymentTarget,
    pub strategy: Option<Strategy>,
    pub force: bool,
    pub wait: WaitArgs,
}

pub fn deploy(api: &Api, args: DeployArgs, json: bool) -> anyhow::Result<Outcome> {
    // A bundle file is published first: build, then `rota deploy nav-1.4.0.rota --to ...`.
    let bundle = std::path::Path::new(&args.release);
    let release = if args.release.ends_with(".rota") && bundle.is_file() {
        crate::commands::release::upload(api, bundle, None, None)?.id
    } else {
        args.release
    };
    let request = CreateDeploymentRequest {
        release,
        target: args.target,
        strategy: args.strategy,
        force: args.force,
    };
    let created: Deployment = api.send_json(Method::POST, "/deployments", Some(&request))?;
    let robots = created.robots.as_ref().map_or(0, Vec::len);
    note!(
        "{} targeted; dashboard: {}/#/deployments/{}",
        crate::output::count(robots, "robot", "robots"),
        api.server(),
        created.id
    );
    crate::commands::rollout::finish(api, &created, &args.wait, json)
}

/// A deployment's state in words: `no robot updated`, `awaiting approval`.
pub fn state_text(state: DeploymentState) -> String {
    state.as_str().replace('_', " ")
}

/// One stderr line for a robot that finished.
pub fn finished_line(
    robot: &str,
    release: &str,
    state: AssignmentState,
    secs: Option<f64>,
    detail: Option<&str>,
) -> String {
    let secs = secs.map(|s| format!(" {s:.1}s")).unwrap_or_default();
    let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
    match state {
        AssignmentState::Committed => format!("✓ {robot} {release} committed{secs}"),
        AssignmentState::RolledBack => format!("✗ {robot} {release} rolled back{secs}{detail}"),
        AssignmentState::Failed => format!("✗ {robot} {release} failed{secs}{detail}"),
        other => format!("- {robot} {release} {other}{detail}"),
    }
}

/// Follows a deployment until it ends (or halts), printing robots as they finish.
pub fn watch(
    api: &Api,
    created: &Deployment,
    timeout: Duration,
) -> anyhow::Result<(Deployment, Outcome)> {
    let started = Instant::now();
    let mut reported: HashSet<String> = HashSet::new();
    let mut last_summary = String::new();
    loop {
        let deployment: Deployment = api.get(&format!("/deployments/{}", created.id))?;
        for robot in deployment.robots.iter().flatten() {
            if robot.state.is_final() && reported.insert(robot.robot_id.clone()) {
                note!(
                    "{}",
                    finished_line(
                        &robot.robot_id,
                        &deployment.release_label(),
                        robot.state,
                        robot.finished_after_secs,
                        robot.detail.as_deref()
                    )
                );
            }
        }
        let summary = deployment
            .counts
            .iter()
            .filter(|(state, _)| {
                !AssignmentState::parse(state).is_some_and(AssignmentState::is_final)
            })
            .map(|(state, n)| format!("{n} {state}"))
            .collect::<Vec<_>>()
            .join(", ");
        if !summary.is_empty() && summary != last_summary {
            note!("  waiting: {summary}");
            last_summary = summary;
        }
        if deployment.state.is_final() {
            let failed = deployment
                .robots
                .iter()
                .flatten()
                .filter(|r| r.state.is_failure())
                .count();
            let count = |state: &str| deployment.counts.get(state).copied().unwrap_or(0);
            let committed = count("committed");
            let not_reached = count("skipped") + count("cancelled");
            let mut summary = format!(
                "deployment {} {}: {committed} committed, {failed} rolled back or failed",
                deployment.id,
                state_text(deployment.state)
            );
            if not_reached > 0 {
                summary.push_str(&format!(", {not_reached} skipped or cancelled"));
            }
            note!("{summary}");
            if let Some(reason) = &deployment.halt_reason {
                note!("halted: {reason}");
            }
            let outcome = if failed > 0 || deployment.state == DeploymentState::Halted {
                Outcome::RobotsFailed
            } else if deployment.state == DeploymentState::NoRobotUpdated {
                note!(
                    "no robot was updated: skipped robots rolled back from v{} before \
                     (`rota deploy --force` offers it to them again)",
                    deployment.version
                );
                Outcome::NoRobotUpdated
            } else {
                Outcome::Done
            };
            return Ok((deployment, outcome));
        }
        if started.elapsed() >= timeout {
            note!(
                "gave up waiting after {}s; the deployment goes on",
                timeout.as_secs()
            );
            return Ok((deployment, Outcome::TimedOut));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_lines_read_like_the_issue_says() {
        assert_eq!(
            finished_line(
                "lekiwi-001",
                "v2.1.0",
                AssignmentState::Committed,
                Some(8.21),
                None
            ),
            "✓ lekiwi-001 v2.1.0 committed 8.2s"
        );
        assert_eq!(
            finished_line(
                "r2",
                "v2.1.0",
                AssignmentState::RolledBack,
                Some(3.0),
                Some("health check failed")
            ),
            "✗ r2 v2.1.0 rolled back 3.0s: health check failed"
        );
        assert_eq!(
            finished_line(
                "r3",
                "v2.1.0",
                AssignmentState::Skipped,
                None,
                Some("rolled back before")
            ),
            "- r3 v2.1.0 skipped: rolled back before"
        );
    }
}
