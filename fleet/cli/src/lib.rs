//! `rota`, the operator CLI: parses with [`cli::Cli`], runs with [`run`].

#[macro_use]
pub mod output;
pub mod cli;
pub mod client;
pub mod commands;
pub mod profiles;
pub mod when;

use cli::{Cli, Command, ReleaseCommand};
use commands::deploy::{DeployArgs, Outcome};
use commands::{access, audit, deploy, history, inventory, notify, open, release, rollout};
use rota_protocol::operator::{DeploymentVerb, PromoteRequest, RollbackRequest};

/// Exit code for an error: the server is unreachable or refused the call, or bad input.
pub const EXIT_ERROR: u8 = 1;
/// Exit code for a command line clap cannot read.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a `--wait` in which robots rolled back or failed, or the rollout halted.
pub const EXIT_ROBOTS_FAILED: u8 = 3;
/// Exit code for a `--wait` that timed out.
pub const EXIT_TIMED_OUT: u8 = 4;
/// Exit code for a deployment that ended without updating any robot (with `--wait`, or at once
/// when it ended as it was made): every robot was skipped (it rolled back from that release
/// before) or cancelled.
pub const EXIT_NO_ROBOT_UPDATED: u8 = 5;

/// An error as `rota` reports it: `rota: error: MESSAGE` on stderr, or under `--json` one line
/// `{"error": {"message", "status", "code"}}` on stderr (stdout stays for results).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErrorReport {
    /// The whole chain of what went wrong, for people.
    pub message: String,
    /// The HTTP status when the server answered with an error.
    pub status: Option<u16>,
    /// A stable word: the server's error code (`not_found`, `conflict`, ...), or `unreachable`,
    /// `usage`, `error`.
    pub code: String,
    #[serde(skip)]
    pub exit_code: u8,
}

impl ErrorReport {
    pub fn of(err: &anyhow::Error, exit_code: u8) -> ErrorReport {
        let (status, code) = if let Some(server) = err.downcast_ref::<client::ServerError>() {
            (Some(server.status), server.error.clone())
        } else if err.downcast_ref::<client::Unreachable>().is_some() {
            (None, "unreachable".to_string())
        } else {
            (None, "error".to_string())
        };
        ErrorReport {
            message: format!("{err:#}"),
            status,
            code,
            exit_code,
        }
    }

    /// On stderr: JSON under --json, else `rota: error: ...`.
    pub fn print(&self, json: bool) {
        if json {
            let body = serde_json::json!({ "error": self });
            note!("{body}");
        } else {
            note!("rota: error: {}", self.message);
        }
    }
}

/// Runs one command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let json = cli.json;
    let overrides = profiles::Overrides::from_env(cli.server, cli.profile);
    let exit_code = |outcome| match outcome {
        Outcome::Done => 0,
        Outcome::RobotsFailed => EXIT_ROBOTS_FAILED,
        Outcome::TimedOut => EXIT_TIMED_OUT,
        Outcome::NoRobotUpdated => EXIT_NO_ROBOT_UPDATED,
    };
    match cli.command {
        Command::Login { key } => access::login(&overrides, key, json)?,
        Command::Profiles { action } => access::profiles(action, json)?,
        Command::Open { page, print } => open::open(&overrides, page.as_deref(), print, json)?,
        Command::Whoami => access::whoami(&commands::api(&overrides)?, json)?,
        Command::Release(ReleaseCommand::Publish {
            bundle,
            branch,
            commit,
        }) => release::publish(
            &commands::api(&overrides)?,
            &bundle,
            branch.as_deref(),
            commit.as_deref(),
            json,
        )?,
        Command::Release(ReleaseCommand::List) => release::list(&commands::api(&overrides)?, json)?,
        Command::Deploy {
            release,
            to,
            strategy,
            force,
            wait,
        } => {
            let args = DeployArgs {
                release,
                target: to,
                strategy: rollout::strategy_from(&strategy)?,
                force,
                wait,
            };
            return Ok(exit_code(deploy::deploy(
                &commands::api(&overrides)?,
                args,
                json,
            )?));
        }
        Command::Rollback {
            to,
            app,
            group,
            robot,
            env,
            immediate,
            dry_run,
            wait,
        } => {
            let request = RollbackRequest {
                to,
                target: rollout::rollback_target(group, robot, env),
                immediate,
                dry_run,
                app,
            };
            return Ok(exit_code(rollout::rollback(
                &commands::api(&overrides)?,
                request,
                &wait,
                json,
            )?));
        }
        Command::Promote {
            from,
            to,
            app,
            wait,
        } => {
            let request = PromoteRequest { to, app };
            return Ok(exit_code(rollout::promote(
                &commands::api(&overrides)?,
                &from,
                &request,
                &wait,
                json,
            )?));
        }
        Command::Env { action } => {
            rollout::environments(&commands::api(&overrides)?, action, json)?
        }
        Command::Pause { deployment } => rollout::verb(
            &commands::api(&overrides)?,
            DeploymentVerb::Pause,
            &deployment,
            json,
        )?,
        Command::Resume { deployment } => rollout::verb(
            &commands::api(&overrides)?,
            DeploymentVerb::Resume,
            &deployment,
            json,
        )?,
        Command::Abort { deployment } => rollout::verb(
            &commands::api(&overrides)?,
            DeploymentVerb::Abort,
            &deployment,
            json,
        )?,
        Command::Approve { deployment } => rollout::verb(
            &commands::api(&overrides)?,
            DeploymentVerb::Approve,
            &deployment,
            json,
        )?,
        Command::Retry { deployment } => rollout::verb(
            &commands::api(&overrides)?,
            DeploymentVerb::Retry,
            &deployment,
            json,
        )?,
        Command::Status { watch, interval } => {
            let api = commands::api(&overrides)?;
            if watch {
                let every = std::time::Duration::from_secs(interval.unwrap_or(2).max(1));
                inventory::watch_status(&api, every, json)?
            } else {
                inventory::status(&api, json)?
            }
        }
        Command::Deployments { id } => {
            inventory::deployments(&commands::api(&overrides)?, id.as_deref(), json)?
        }
        Command::Robots { action, group } => {
            inventory::robots(&commands::api(&overrides)?, action, group.as_deref(), json)?
        }
        Command::Groups { action } => inventory::groups(&commands::api(&overrides)?, action, json)?,
        Command::History {
            robot,
            group,
            app,
            since,
            until,
            events,
            deployment,
            limit,
        } => {
            let filter = history::Filter {
                robot,
                group,
                app,
                since,
                until,
            };
            let api = commands::api(&overrides)?;
            if events {
                history::events(&api, &filter, deployment.as_deref(), limit, json)?
            } else {
                history::releases(&api, &filter, json)?
            }
        }
        Command::Audit {
            since,
            until,
            actor,
            action,
            limit,
        } => {
            let filter = audit::Filter {
                since,
                until,
                actor,
                action,
            };
            audit::audit(&commands::api(&overrides)?, &filter, limit, json)?
        }
        Command::Notify(command) => {
            return Ok(exit_code(notify::notify(
                &commands::api(&overrides)?,
                command,
                json,
            )?));
        }
        Command::Keys(command) => access::keys(&commands::api(&overrides)?, command, json)?,
        Command::Completions { shell } => {
            // Through a buffer: clap_complete panics on a write error, and `| head` is not one.
            let mut script = Vec::new();
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "rota", &mut script);
            let script = String::from_utf8(script)?;
            if json {
                output::json(&serde_json::json!({ "shell": shell.to_string(), "script": script }))?;
            } else {
                output::line(format_args!("{}", script.trim_end()))?;
            }
        }
    }
    Ok(0)
}
