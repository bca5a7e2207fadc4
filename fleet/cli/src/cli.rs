//! The command line, as clap reads it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rota_protocol::operator::{DeploymentTarget, Role};

use crate::when::When;

/// Operate a Rota fleet: publish releases, deploy them, watch robots commit, audit.
///
/// stdout carries only results (an id, a table, or JSON with --json); progress and human
/// messages go to stderr, so `id=$(rota deploy ...)` works in scripts.
///
/// Credentials: `rota login --server URL` stores the server and API key in
/// ~/.config/rota/credentials.toml (mode 0600). ROTA_SERVER and ROTA_API_KEY override it.
///
/// Exit codes: 0 success; 1 error (unreachable server, refused call, bad input);
/// 2 command-line error; 3 `deploy --wait` ended with robots rolled back or failed;
/// 4 `deploy --wait` timed out.
#[derive(Debug, Parser)]
#[command(name = "rota", version)]
pub struct Cli {
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Server URL. [default: the one stored by `rota login`]
    #[arg(long, global = true, env = "ROTA_SERVER")]
    pub server: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check an API key against the server and store both for later commands.
    Login {
        /// The API key; read from stdin when not given here or in ROTA_API_KEY.
        #[arg(long, env = "ROTA_API_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Show the stored key's id, name and role.
    Whoami,
    /// Publish and list releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Send a release to robots (immediately).
    Deploy {
        /// Release id, or its version when only one board has that version.
        release: String,
        /// Which robots: `all`, `group:NAME` or `robot:ID`.
        #[arg(long)]
        to: DeploymentTarget,
        /// Offer it even to robots that rolled back from it before. [default: off]
        #[arg(long)]
        force: bool,
        /// Wait until every robot has committed, rolled back or failed, printing each as it
        /// ends. [default: off]
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this many seconds (exit code 4). [default: 1800]
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
    },
    /// The fleet at a glance: robots by state and version, running deployments.
    Status,
    /// List deployments, or show one with every robot's state.
    Deployments {
        /// Show this deployment instead of the list.
        id: Option<String>,
    },
    /// List robots, or approve or remove one.
    Robots {
        #[command(subcommand)]
        action: Option<RobotsCommand>,
        /// Only robots in this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// List groups, or change them.
    Groups {
        #[command(subcommand)]
        action: Option<GroupsCommand>,
    },
    /// Every release each robot ran: since when, how it got there (a deployment and its kind,
    /// the robot's own rollback, or a local install no deployment gave it) and how it ended.
    ///
    /// --since and --until take RFC 3339 (2024-05-01T10:00:00Z, or with an offset like
    /// +02:00), a date (2024-05-01, midnight UTC), or a time ago (2-hours-ago, 30m, 1d12h).
    History {
        /// Only this robot. [default: every robot]
        #[arg(long, conflicts_with = "group")]
        robot: Option<String>,
        /// Only robots now in this group. [default: every robot]
        #[arg(long)]
        group: Option<String>,
        /// Only releases still running at this time or later (with --events: events from
        /// then on). [default: no bound]
        #[arg(long)]
        since: Option<When>,
        /// Only releases that started by this time (with --events: events until then).
        /// [default: no bound]
        #[arg(long)]
        until: Option<When>,
        /// Show the events robots reported, newest first, instead of the releases they ran.
        /// [default: off]
        #[arg(long)]
        events: bool,
        /// With --events, only this deployment's events. [default: all]
        #[arg(long, requires = "events")]
        deployment: Option<String>,
        /// With --events, at most this many entries. [default: 50]
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The audit log of operator actions (and enrollments and webhook deliveries), newest
    /// first.
    ///
    /// --since and --until take RFC 3339 (2024-05-01T10:00:00Z, or with an offset like
    /// +02:00), a date (2024-05-01, midnight UTC), or a time ago (2-hours-ago, 30m, 1d12h).
    Audit {
        /// Only entries at or after this time. [default: no bound]
        #[arg(long)]
        since: Option<When>,
        /// Only entries at or before this time. [default: no bound]
        #[arg(long)]
        until: Option<When>,
        /// Only entries whose actor contains this text, ignoring case: `github`, a key id, a
        /// key's name. [default: any]
        #[arg(long)]
        actor: Option<String>,
        /// Only this action, or every action under it: `release` matches `release.publish`.
        /// [default: any]
        #[arg(long)]
        action: Option<String>,
        /// At most this many entries. [default: 50]
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Manage operator API keys (admin).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Upload a signed bundle; prints the release id.
    ///
    /// In CI the branch and commit come from the environment when the flags are absent, as
    /// GitHub Actions (and Gitea/Forgejo Actions) set it. When the bundle's signed manifest
    /// names a branch or commit, what is given here must agree with it (else the server
    /// refuses the upload, 422).
    Publish {
        bundle: PathBuf,
        /// Git branch the bundle was built from. [default: $GITHUB_HEAD_REF in a pull request
        /// build, else $GITHUB_REF_NAME when $GITHUB_REF_TYPE is branch; none outside CI]
        #[arg(long)]
        branch: Option<String>,
        /// Git commit the bundle was built from. [default: $GITHUB_SHA; none outside CI]
        #[arg(long)]
        commit: Option<String>,
    },
    /// List releases, newest first.
    List,
}

#[derive(Debug, Subcommand)]
pub enum RobotsCommand {
    /// Show one robot with its slots.
    Show { id: String },
    /// Let a robot that enrolled under approval receive deployments (admin).
    Approve { id: String },
    /// Remove a robot so it can enroll again (admin). Its history stays.
    Remove { id: String },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Create a group (no-op if it exists).
    Create { name: String },
    /// Delete a group; its robots stay enrolled.
    Delete { name: String },
    /// Put robots into a group.
    Add { name: String, robots: Vec<String> },
    /// Take robots out of a group.
    Remove { name: String, robots: Vec<String> },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List keys.
    List,
    /// Create a key; prints it once.
    Create {
        name: String,
        /// viewer, deployer or admin.
        #[arg(long)]
        role: Role,
    },
    /// Revoke a key by id.
    Revoke { id: String },
}
