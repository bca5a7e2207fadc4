//! `rota`, the operator CLI: parses with [`cli::Cli`], runs with [`run`].

pub mod cli;
pub mod client;
pub mod commands;
pub mod credentials;
pub mod output;
pub mod when;

use std::time::Duration;

use cli::{Cli, Command, ReleaseCommand};
use commands::deploy::{DeployArgs, Outcome};
use commands::{access, audit, deploy, history, inventory, release};

/// Exit code for a `deploy --wait` in which robots rolled back or failed.
pub const EXIT_ROBOTS_FAILED: u8 = 3;
/// Exit code for a `deploy --wait` that timed out.
pub const EXIT_TIMED_OUT: u8 = 4;

/// Runs one command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let json = cli.json;
    let server = cli.server.as_deref();
    match cli.command {
        Command::Login { key } => access::login(server, key, json)?,
        Command::Whoami => access::whoami(&commands::api(server)?, json)?,
        Command::Release(ReleaseCommand::Publish {
            bundle,
            branch,
            commit,
        }) => release::publish(
            &commands::api(server)?,
            &bundle,
            branch.as_deref(),
            commit.as_deref(),
            json,
        )?,
        Command::Release(ReleaseCommand::List) => release::list(&commands::api(server)?, json)?,
        Command::Deploy {
            release,
            to,
            force,
            wait,
            timeout,
        } => {
            let args = DeployArgs {
                release,
                target: to,
                force,
                wait,
                timeout: Duration::from_secs(timeout),
            };
            return Ok(match deploy::deploy(&commands::api(server)?, args, json)? {
                Outcome::Done => 0,
                Outcome::RobotsFailed => EXIT_ROBOTS_FAILED,
                Outcome::TimedOut => EXIT_TIMED_OUT,
            });
        }
        Command::Status => inventory::status(&commands::api(server)?, json)?,
        Command::Deployments { id } => {
            inventory::deployments(&commands::api(server)?, id.as_deref(), json)?
        }
        Command::Robots { action, group } => {
            inventory::robots(&commands::api(server)?, action, group.as_deref(), json)?
        }
        Command::Groups { action } => inventory::groups(&commands::api(server)?, action, json)?,
        Command::History {
            robot,
            group,
            since,
            until,
            events,
            deployment,
            limit,
        } => {
            let filter = history::Filter {
                robot,
                group,
                since,
                until,
            };
            let api = commands::api(server)?;
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
            audit::audit(&commands::api(server)?, &filter, limit, json)?
        }
        Command::Keys(command) => access::keys(&commands::api(server)?, command, json)?,
    }
    Ok(0)
}
