//! Rollouts: deployment verbs, rollback, promote, environments.

use std::time::Duration;

use anyhow::bail;
use reqwest::Method;
use rota_protocol::operator::{
    Deployment, DeploymentTarget, DeploymentVerb, Environment, EnvironmentSpec, Guard,
    PromoteRequest, RollbackOutcome, RollbackRequest, Strategy,
};
use rota_protocol::robot::UpdateWindow;

use crate::cli::{EnvCommand, StrategyArgs, WaitArgs};
use crate::client::Api;
use crate::commands::deploy::{self, Outcome};
use crate::output;

/// The strategy the flags describe; `None` when they name none (the environment decides).
pub fn strategy_from(args: &StrategyArgs) -> anyhow::Result<Option<Strategy>> {
    let guard = Guard {
        max_failures: args.max_failures.unwrap_or_default(),
        silence_timeout_secs: args
            .silence_timeout
            .unwrap_or(Guard::default().silence_timeout_secs),
        auto_rollback: args.auto_rollback,
    };
    let strategy = match (&args.staged, &args.canary) {
        (Some(percents), _) => Strategy::Staged {
            percents: percents.clone(),
            wait_secs: args.stage_wait.unwrap_or(0),
            guard,
        },
        (None, Some(canary)) => {
            let (group, count) = match canary.parse::<u32>() {
                Ok(count) => (None, Some(count)),
                Err(_) => (Some(canary.clone()), None),
            };
            Strategy::Canary {
                group,
                count,
                wait_secs: args.stage_wait,
                guard,
            }
        }
        (None, None) if args.immediate => Strategy::Immediate,
        (None, None) => {
            let guarded = args.max_failures.is_some()
                || args.silence_timeout.is_some()
                || args.auto_rollback
                || args.stage_wait.is_some();
            if guarded {
                bail!("--stage-wait, --max-failures, --silence-timeout and --auto-rollback need --staged or --canary");
            }
            return Ok(None);
        }
    };
    strategy.validate().map_err(anyhow::Error::msg)?;
    Ok(Some(strategy))
}

fn describe(d: &Deployment) -> String {
    let stages = if d.stage_count > 1 {
        format!(", stage {} of {}", d.current_stage + 1, d.stage_count)
    } else {
        String::new()
    };
    format!(
        "deployment {} ({}): {} to {}, {}{stages}",
        d.id,
        d.kind.as_str(),
        d.release_label(),
        d.target,
        deploy::state_text(d.state)
    )
}

/// Prints a created deployment and, with --wait, watches it end.
pub fn finish(
    api: &Api,
    created: &Deployment,
    wait: &WaitArgs,
    json: bool,
) -> anyhow::Result<Outcome> {
    note!("{}", describe(created));
    // A deployment that ended as it was made (every robot skipped) is reported as --wait
    // would report it, exit code included.
    let (last, outcome) = if wait.wait || created.state.is_final() {
        deploy::watch(api, created, Duration::from_secs(wait.timeout))?
    } else {
        (created.clone(), Outcome::Done)
    };
    // The outcome decides the exit code even when nobody reads stdout any more.
    output::unless_closed(|| {
        if json {
            output::json(&last)?;
        } else {
            outln!("{}", last.id);
        }
        Ok(())
    })?;
    Ok(outcome)
}

pub fn verb(api: &Api, verb: DeploymentVerb, id: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("/deployments/{id}/{}", verb.as_str());
    let deployment: Deployment = api.send_json::<(), _>(Method::POST, &path, None)?;
    if json {
        return output::json(&deployment);
    }
    note!("{}", describe(&deployment));
    outln!("{}", deployment.state.as_str());
    Ok(())
}

pub fn rollback(
    api: &Api,
    request: RollbackRequest,
    wait: &WaitArgs,
    json: bool,
) -> anyhow::Result<Outcome> {
    let dry_run = request.dry_run;
    let outcome: RollbackOutcome = api.send_json(Method::POST, "/rollbacks", Some(&request))?;
    // A dry run says so before and after its plan, in the conditional: nothing moved.
    let (would, go) = if dry_run {
        note!("dry run: nothing changes, no deployment is created");
        ("would be ", "would go back to")
    } else {
        ("", "back to")
    };
    for robot in &outcome.unresolved {
        note!("- {} {would}left alone: {}", robot.robot_id, robot.reason);
    }
    if !outcome.unchanged.is_empty() {
        note!("- already there: {}", outcome.unchanged.join(", "));
    }
    for group in &outcome.plan {
        note!("→ {go} v{}: {}", group.version, group.robots.join(", "));
    }
    if dry_run {
        let robots: usize = outcome.plan.iter().map(|g| g.robots.len()).sum();
        note!(
            "dry run: {} would roll back; nothing changed (run it again without --dry-run)",
            output::count(robots, "robot", "robots")
        );
        if json {
            output::json(&with_dry_run(&outcome, true)?)?;
        }
        return Ok(Outcome::Done);
    }
    let mut worst = Outcome::Done;
    let mut finished = Vec::new();
    for deployment in &outcome.deployments {
        note!("{}", describe(deployment));
        let (last, result) = if wait.wait {
            deploy::watch(api, deployment, Duration::from_secs(wait.timeout))?
        } else {
            (deployment.clone(), Outcome::Done)
        };
        if result != Outcome::Done {
            worst = result;
        }
        finished.push(last);
    }
    if json {
        let outcome = RollbackOutcome {
            deployments: finished,
            ..outcome
        };
        output::unless_closed(|| output::json(&with_dry_run(&outcome, false)?))?;
    } else {
        output::unless_closed(|| {
            for deployment in &finished {
                outln!("{}", deployment.id);
            }
            Ok(())
        })?;
    }
    Ok(worst)
}

/// The outcome as JSON with `"dry_run": true|false`, so a script cannot take a plan for a
/// rollback that happened.
fn with_dry_run(outcome: &RollbackOutcome, dry_run: bool) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(outcome)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("dry_run".into(), dry_run.into());
    }
    Ok(value)
}

pub fn rollback_target(
    group: Option<String>,
    robot: Option<String>,
    env: Option<String>,
) -> DeploymentTarget {
    match (group, robot, env) {
        (Some(group), _, _) => DeploymentTarget::Group(group),
        (_, Some(robot), _) => DeploymentTarget::Robot(robot),
        (_, _, Some(env)) => DeploymentTarget::Env(env),
        _ => DeploymentTarget::All,
    }
}

pub fn promote(
    api: &Api,
    from: &str,
    request: &PromoteRequest,
    wait: &WaitArgs,
    json: bool,
) -> anyhow::Result<Outcome> {
    let created: Deployment = api.send_json(
        Method::POST,
        &format!("/environments/{from}/promote"),
        Some(request),
    )?;
    finish(api, &created, wait, json)
}

pub fn environments(api: &Api, action: Option<EnvCommand>, json: bool) -> anyhow::Result<()> {
    let environment: Environment = match action {
        Some(EnvCommand::Var { action }) => {
            return crate::commands::env_vars::vars(api, action, json);
        }
        None | Some(EnvCommand::List) => {
            let headers = [
                "NAME",
                "GROUPS",
                "STRATEGY",
                "APPROVAL",
                "WINDOW",
                "AUTO-DEPLOY",
            ];
            return crate::commands::show_list(
                api,
                "/environments",
                json,
                &headers,
                "no environments yet: create one with `rota env set NAME --groups GROUP,...`",
                |e: &Environment| {
                    vec![
                        e.name.clone(),
                        e.groups.join(","),
                        strategy_text(&e.strategy),
                        if e.approval_required { "required" } else { "-" }.into(),
                        e.update_window
                            .as_ref()
                            .map_or("-".into(), UpdateWindow::to_string),
                        if e.auto_deploy { "yes" } else { "no" }.into(),
                    ]
                },
            );
        }
        Some(EnvCommand::Set {
            name,
            groups,
            auto_deploy,
            approval_required,
            window,
            strategy,
        }) => {
            let spec = EnvironmentSpec {
                auto_deploy,
                approval_required,
                update_window: window
                    .as_deref()
                    .map(UpdateWindow::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                strategy: strategy_from(&strategy)?.unwrap_or_default(),
                groups,
            };
            api.send_json(Method::PUT, &format!("/environments/{name}"), Some(&spec))?
        }
    };
    if json {
        return output::json(&environment);
    }
    outln!(
        "{}: groups {}, {}, approval {}, window {}",
        environment.name,
        environment.groups.join(","),
        strategy_text(&environment.strategy),
        if environment.approval_required {
            "required"
        } else {
            "not required"
        },
        environment
            .update_window
            .as_ref()
            .map_or("any time".into(), UpdateWindow::to_string)
    );
    Ok(())
}

pub fn strategy_text(strategy: &Strategy) -> String {
    let guard = |guard: &Guard| {
        format!(
            ", halt past {} failures{}",
            guard.max_failures,
            if guard.auto_rollback {
                ", auto-rollback"
            } else {
                ""
            }
        )
    };
    match strategy {
        Strategy::Immediate => "immediate".into(),
        Strategy::Staged {
            percents,
            wait_secs,
            guard: g,
        } => format!(
            "staged {} every {wait_secs}s{}",
            percents
                .iter()
                .map(|p| format!("{p}%"))
                .collect::<Vec<_>>()
                .join("→"),
            guard(g)
        ),
        Strategy::Canary {
            group,
            count,
            wait_secs,
            guard: g,
        } => format!(
            "canary {} then {}{}",
            group.clone().unwrap_or_else(|| {
                let n = count.unwrap_or(1) as usize;
                output::count(n, "robot", "robots")
            }),
            wait_secs.map_or("on approval".into(), |w| format!("after {w}s")),
            guard(g)
        ),
    }
}
