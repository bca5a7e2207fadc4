//! The command line, as clap reads it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use rota_protocol::operator::{DeploymentTarget, FailureThreshold, Role};

use crate::when::When;

/// Operate a Rota fleet: publish releases, deploy them, watch robots commit, audit.
///
/// stdout carries only results (an id, a table, or JSON with --json); progress and human
/// messages go to stderr, so `id=$(rota deploy ...)` works in scripts.
///
/// Servers and keys: `rota login --server URL [--profile NAME]` checks a key and stores it in
/// a named profile of ~/.config/rota/config.toml (mode 0600; `rota profiles` lists them).
/// Which server: --server, else the profile named by --profile / ROTA_PROFILE, else
/// ROTA_SERVER, else the current profile. ROTA_API_KEY (or ROTA_KEY) overrides the profile's
/// key. A stored key is only sent to the server it was stored for.
///
/// Exit codes: 0 success (also when the reader of stdout stops early, as `| head` does);
/// 1 error (unreachable server, refused call, bad input); 2 command-line error; 3 `--wait`
/// ended with robots rolled back or failed, or the rollout halted; 4 `--wait` timed out;
/// 5 the deployment ended with no robot updated (every robot skipped or cancelled).
///
/// With --json, an error is one line of JSON, the last on stderr:
/// {"error":{"message":"...","status":404,"code":"not_found"}} (status is null when the server
/// did not answer; code is the server's error code, or unreachable, usage or error).
#[derive(Debug, Parser)]
#[command(name = "rota", version)]
pub struct Cli {
    /// Print results as JSON on stdout, and errors as JSON on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// Server URL. [default: --profile's server, else $ROTA_SERVER, else the current
    /// profile's]
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Use this profile's server and key. [default: the current profile]
    #[arg(long, global = true, env = "ROTA_PROFILE")]
    pub profile: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check an API key against the server and store both in a profile, made current.
    ///
    /// The profile is the one --profile names, else the current or another one already holding
    /// this server, else `default` on a first login, else the server's host name.
    #[command(
        after_help = "Examples:\n  rota login --server http://127.0.0.1:8080\n  \
        rota login --profile prod --server https://rota.example.com\n"
    )]
    Login {
        /// The API key; read from stdin when not given here or in ROTA_API_KEY (or ROTA_KEY).
        #[arg(long)]
        key: Option<String>,
    },
    /// List the stored profiles, or switch or remove one.
    #[command(after_help = "Examples:\n  rota profiles\n  rota profiles use lab\n  \
        rota profiles remove old-lab\n")]
    Profiles {
        #[command(subcommand)]
        action: Option<ProfilesCommand>,
    },
    /// Open the dashboard in a browser (and print its address).
    ///
    /// PAGE: fleet (default), deployments, releases, audit, charts, a deployment id (dep_...)
    /// or robot:ID. Without a browser (no DISPLAY, a pipe, --print) only the address is printed.
    #[command(after_help = "Examples:\n  rota open\n  rota open dep_4f2a9c\n  \
        rota open robot:robot-7 --print\n")]
    Open {
        /// The page to open.
        page: Option<String>,
        /// Only print the address.
        #[arg(long)]
        print: bool,
    },
    /// Show the stored key's id, name and role.
    Whoami,
    /// Publish and list releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Send a release to robots: at once, in stages, or canaries first.
    ///
    /// Without a strategy flag the target environment's strategy applies (immediate when the
    /// target is in no environment). A canary without --stage-wait waits for `rota approve`
    /// before the rest.
    #[command(after_help = DEPLOY_EXAMPLES)]
    Deploy {
        /// Release id, or its version when only one board has that version; an app release as
        /// APP@VERSION (nav@1.4.0): robots install it beside the OS, no reboot. A bundle file
        /// (*.rota) is published first.
        release: String,
        /// Which robots: `all`, `group:NAME`, `env:NAME`, `robot:ID` or `robots:ID,ID`.
        #[arg(long)]
        to: DeploymentTarget,
        #[command(flatten)]
        strategy: StrategyArgs,
        /// Offer it even to robots that rolled back from it before. [default: off]
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Pause a deployment: robots that started finish, nobody new starts.
    Pause {
        /// The deployment's id (dep_...), as `rota deploy` printed it.
        deployment: String,
    },
    /// Resume a paused deployment.
    Resume {
        /// The deployment's id (dep_...).
        deployment: String,
    },
    /// Abort a deployment: robots that had not started never will.
    Abort {
        /// The deployment's id (dep_...).
        deployment: String,
    },
    /// Approve a deployment awaiting approval (not your own), or start the next stage of a
    /// canary waiting for it.
    Approve {
        /// The deployment's id (dep_...).
        deployment: String,
    },
    /// Offer the release again to the robots that failed or rolled back; reopens a halted
    /// deployment.
    Retry {
        /// The deployment's id (dep_...).
        deployment: String,
    },
    /// Roll robots back: a new deployment of what they ran at a point.
    ///
    /// --to takes a version (v2.1.0), commit:SHA, a deployment id (dep_...), a time
    /// (2026-11-24T10:00:00Z) or an age (2-hours-ago: what each robot had committed then).
    /// Without --to, each robot goes back to the newest release it committed before its
    /// current one with a lower version (never up). Robots whose other slot still holds that
    /// release switch to it and reboot, without a download. A time in the future is refused.
    #[command(after_help = ROLLBACK_EXAMPLES)]
    Rollback {
        /// Where to go back to. [default: the previous release]
        #[arg(long)]
        to: Option<String>,
        /// Roll back this app instead of the OS: robots switch to a release they keep, with no
        /// download and no reboot. [default: the OS]
        #[arg(long)]
        app: Option<String>,
        /// Only this group.
        #[arg(long, conflicts_with_all = ["robot", "env"])]
        group: Option<String>,
        /// Only this robot.
        #[arg(long, conflicts_with = "env")]
        robot: Option<String>,
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// Offer at once instead of with the environment's strategy. [default: off]
        #[arg(long)]
        immediate: bool,
        /// Only print where each robot would go; nothing changes.
        #[arg(long, conflicts_with = "wait")]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Deploy what one environment runs now to another, with the other's rules.
    #[command(after_help = "Examples:\n  rota promote staging production --wait\n  \
        rota promote staging production --app nav --wait\n")]
    Promote {
        /// The environment whose release goes on.
        from: String,
        /// The environment it goes to, under its own strategy, approval and window.
        to: String,
        /// Promote the release of this app that `from` runs instead of its OS release.
        /// [default: the OS]
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List environments, or create or change one (admin).
    Env {
        #[command(subcommand)]
        action: Option<EnvCommand>,
    },
    /// The fleet at a glance: robots by state and version, running deployments.
    #[command(after_help = "Examples:\n  rota status\n  rota status --watch\n  \
        rota status --watch --interval 5s --json\n")]
    Status {
        /// Keep watching: redraw on a terminal, else print the status again each time it
        /// changes (one JSON document per line with --json). Ctrl-C stops.
        #[arg(long, short)]
        watch: bool,
        /// With --watch, how often to ask the server. [default: 2s]
        #[arg(long, value_parser = parse_duration_secs, requires = "watch")]
        interval: Option<u64>,
    },
    /// List deployments, or show one with every robot's state.
    Deployments {
        /// Show this deployment instead of the list.
        id: Option<String>,
    },
    /// List robots, or show, tag, approve or remove one.
    Robots {
        #[command(subcommand)]
        action: Option<RobotsCommand>,
        /// Only robots in this group.
        #[arg(long)]
        group: Option<String>,
    },
    /// List groups, show one, or change them; a dynamic group is a query over inventory and
    /// tags.
    Groups {
        #[command(subcommand)]
        action: Option<GroupsCommand>,
    },
    /// Every release each robot ran: since when, how it got there (a deployment and its kind,
    /// the robot's own rollback, or a local install no deployment gave it) and how it ended.
    ///
    /// --since and --until take RFC 3339 (2024-05-01T10:00:00Z, or with an offset like
    /// +02:00), a date (2024-05-01, midnight UTC), or a time ago (2-hours-ago, 30m, 1d12h).
    #[command(after_help = "\
Examples:
  rota history --robot robot-007
  rota history --group lab --since 2-days-ago --json
  rota history --events --robot robot-007 --limit 20
")]
    History {
        /// Only this robot. [default: every robot]
        #[arg(long, conflicts_with = "group")]
        robot: Option<String>,
        /// Only robots now in this group. [default: every robot]
        #[arg(long)]
        group: Option<String>,
        /// Only this app's releases (an app's releases run beside the OS: each app has its
        /// own history). [default: the OS's releases, then each app's]
        #[arg(long, conflicts_with = "events")]
        app: Option<String>,
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
        /// With --events, at most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The audit log of operator actions (and enrollments and webhook deliveries), newest
    /// first.
    ///
    /// --since and --until take RFC 3339 (2024-05-01T10:00:00Z, or with an offset like
    /// +02:00), a date (2024-05-01, midnight UTC), or a time ago (2-hours-ago, 30m, 1d12h).
    #[command(after_help = "\
Examples:
  rota audit --since 2024-05-01T08:00:00+02:00 --until 30m --actor github --action webhook
  rota audit --action release --limit 10
")]
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
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Notification channels (a signed JSON webhook, Slack, email) and their delivery log.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Manage operator API keys (admin).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a shell completion script on stdout.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  rota completions bash
  rota completions zsh
  rota completions fish

Save the script where the shell looks for it: for bash
~/.local/share/bash-completion/completions/rota, for zsh _rota in a directory of $fpath, for
fish ~/.config/fish/completions/rota.fish. The rota-cli Debian package installs all three.
";

const DEPLOY_EXAMPLES: &str = "\
Examples:
  rota deploy 2.1.0 --to env:production
  rota deploy 2.1.0 --to all --wait --timeout 600
  rota deploy 2.1.0 --to all --staged 10,50,100 --stage-wait 5m --max-failures 10% --auto-rollback
  rota deploy 2.1.0 --to group:lab --canary 2
  rota deploy 2.1.0 --to robots:robot-001,robot-002 --immediate --force
  rota deploy nav.rota --to env:staging --wait
  rota deploy nav@1.3.0 --to env:staging

nav.rota is an app release built by `rota-image app ./nav ...`: published, then deployed.
";

const ROLLBACK_EXAMPLES: &str = "\
Examples:
  rota rollback --dry-run
  rota rollback --to v2.0.0 --group lab --wait
  rota rollback --to 2-hours-ago --env production
  rota rollback --to commit:abc123 --robot robot-007 --immediate
  rota rollback --to 2026-11-24T10:00:00Z
  rota rollback --app nav --to v1.3.0 --env staging
";

const ENV_SET_EXAMPLES: &str = "\
Examples:
  rota env set production --groups prod-eu,prod-us --approval-required \\
      --window \"mon,tue,wed,thu 22:00-04:00\" --staged 10,50,100 --stage-wait 5m \\
      --max-failures 10% --auto-rollback
  rota env set staging --groups lab --auto-deploy --canary 2 --stage-wait 10m
";

/// How a deployment reaches its robots.
#[derive(Debug, Clone, Default, Args)]
pub struct StrategyArgs {
    /// Every robot at once, even where the environment says otherwise.
    #[arg(long, conflicts_with_all = ["staged", "canary"])]
    pub immediate: bool,
    /// Stages in percent of the target, rising to 100, like 10,50,100.
    #[arg(long, value_delimiter = ',', conflicts_with = "canary")]
    pub staged: Option<Vec<u8>>,
    /// Canaries first: a group name, or a number of robots.
    #[arg(long)]
    pub canary: Option<String>,
    /// Wait between one stage finishing and the next starting, like 5m. [default: 0 for
    /// --staged; --canary without it waits for `rota approve`]
    #[arg(long, value_parser = parse_duration_secs)]
    pub stage_wait: Option<u64>,
    /// Halt past this many failed robots: a count (2) or a share of those offered (10%).
    /// [default: 0]
    #[arg(long)]
    pub max_failures: Option<FailureThreshold>,
    /// A robot silent this long counts as failed, like 30m. [default: 30m]
    #[arg(long, value_parser = parse_duration_secs)]
    pub silence_timeout: Option<u64>,
    /// On halt, send robots that took the release back to what they ran before.
    #[arg(long)]
    pub auto_rollback: bool,
}

/// `--wait` and its timeout, shared by the commands that create deployments.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait until every robot has committed, rolled back or failed (or the rollout halts),
    /// printing each robot as it ends. [default: off]
    #[arg(long)]
    pub wait: bool,
    /// With --wait, give up after this many seconds (exit code 4); the deployment goes on.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

/// `300`, `90s`, `5m`, `1h`: seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    humantime::parse_duration(text)
        .map(|duration| duration.as_secs())
        .map_err(|_| format!("{text:?} is not a duration like 300, 90s, 5m or 1h"))
}

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Make a profile the current one.
    Use {
        /// The profile's name, as `rota profiles` lists it.
        name: String,
    },
    /// Forget a profile and its stored key.
    Remove {
        /// The profile's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Create or replace an environment (admin).
    ///
    /// The strategy flags set the environment's default strategy: what deployments to it use
    /// when they name none.
    #[command(
        after_help = ENV_SET_EXAMPLES,
        mut_arg("immediate", |arg| arg.help(
            "The environment's deployments go to every robot at once (the default when no \
             strategy flag is given)"
        )),
    )]
    Set {
        /// The environment's name, like production or staging.
        name: String,
        /// Groups in this environment (created when missing).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Releases published from a branch mapped here (server config branch_environments)
        /// deploy themselves.
        #[arg(long)]
        auto_deploy: bool,
        /// Deployments wait for an approver who is not their creator.
        #[arg(long)]
        approval_required: bool,
        /// Robots install and reboot only inside this window of their local time, like
        /// 22:00-04:00 or "sat,sun 00:00-00:00". [default: any time]
        #[arg(long)]
        window: Option<String>,
        /// The environment's default strategy (immediate when none is given).
        #[command(flatten)]
        strategy: StrategyArgs,
    },
    /// List environments.
    List,
    /// Variables and secrets of an environment, for its robots' apps.
    Var {
        #[command(subcommand)]
        action: VarCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum VarCommand {
    /// Set a variable (admin). Robots get it with their next app deployment, in the app's
    /// EnvironmentFile (mode 0600). A secret's value is never shown again, nor audited: only
    /// its name and version.
    #[command(
        after_help = "Examples:\n  rota env var set staging API_URL=https://api.example.com\n  \
        rota env var set production API_KEY=- --secret\n\n\
        NAME=- reads the value from stdin (one line), which keeps secrets out of the shell history.\n"
    )]
    Set {
        /// The environment.
        env: String,
        /// NAME=VALUE; NAME=- reads the value from stdin.
        assignment: String,
        /// A secret: its value is never answered, logged or audited after this.
        #[arg(long)]
        secret: bool,
    },
    /// List an environment's variables; secrets show their version, not their value.
    List {
        /// The environment.
        env: String,
    },
    /// Remove a variable (admin).
    Unset {
        /// The environment.
        env: String,
        /// The variable's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Create or replace a channel (admin): a webhook, Slack or email.
    ///
    /// It hears the events of deployments to its environment and of that environment's robots
    /// (every environment without --env): deployment.created, deployment.awaiting_approval,
    /// deployment.stage_started, deployment.halted, deployment.succeeded, deployment.failed,
    /// robot.rolled_back, robot.offline (and test). A webhook gets a JSON POST signed with
    /// HMAC-SHA256 of the body in X-Rota-Signature-256 (sha256=HEX) when it has a secret;
    /// Slack gets {"text"}; email goes over SMTP with STARTTLS (smtp://USER@HOST:587) or TLS
    /// (smtps://HOST:465), the server's certificate checked, the secret as the password.
    /// Deliveries are retried 5 times, 1 to 8 s apart, then recorded as failed; a rollout
    /// never waits for them.
    #[command(
        after_help = "Examples:\n  rota notify set ops --webhook https://ops.example.com/rota --secret -\n  \
        rota notify set team --slack https://hooks.slack.com/services/T0/B0/XXXX --env production \\\n    \
        --events deployment.halted,robot.rolled_back,robot.offline\n  \
        rota notify set oncall --email smtp://rota@mail.example.com --secret - \\\n    \
        --from rota@example.com --to oncall@example.com --events deployment.halted\n\n\
        --secret - reads the webhook's HMAC key (at least 16 characters) or the SMTP password\n\
        from stdin.\n"
    )]
    Set {
        /// The channel's name.
        name: String,
        /// POST signed JSON to this URL.
        #[arg(long, conflicts_with_all = ["slack", "email"], required_unless_present_any = ["slack", "email"])]
        webhook: Option<String>,
        /// POST to this Slack incoming-webhook URL (the URL is its secret: never shown again).
        #[arg(long, conflicts_with = "email")]
        slack: Option<String>,
        /// Mail through this SMTP server: smtp://[USER@]HOST[:587] (STARTTLS) or
        /// smtps://[USER@]HOST[:465].
        #[arg(long, requires_all = ["to", "from"])]
        email: Option<String>,
        /// An email channel's recipient; give it once per address.
        #[arg(long, requires = "email")]
        to: Vec<String>,
        /// An email channel's sender address.
        #[arg(long, requires = "email")]
        from: Option<String>,
        /// The webhook's HMAC key or the SMTP password; `-` reads it from stdin.
        /// [default: none]
        #[arg(long, conflicts_with = "slack")]
        secret: Option<String>,
        /// Only this environment's deployments and robots. [default: all]
        #[arg(long)]
        env: Option<String>,
        /// Only these events, comma-separated. [default: every event]
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
    },
    /// List the channels; secrets never show.
    List,
    /// Remove a channel (admin); its pending deliveries fail.
    Remove {
        /// The channel's name.
        name: String,
    },
    /// Send a test notification to a channel now and wait for how it went.
    #[command(after_help = "Examples:\n  rota notify test ops\n")]
    Test {
        /// The channel's name.
        name: String,
    },
    /// The delivery log, newest first.
    #[command(after_help = "Examples:\n  rota notify deliveries --channel ops --state failed\n")]
    Deliveries {
        /// Only this channel's.
        #[arg(long)]
        channel: Option<String>,
        /// Only pending, delivered or failed ones.
        #[arg(long, value_parser = ["pending", "delivered", "failed"])]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Upload a signed bundle; prints the release id.
    ///
    /// In CI the branch and commit come from the environment when the flags are absent, as
    /// GitHub Actions (and Gitea/Forgejo Actions) set it. When the bundle's signed manifest
    /// names a branch or commit, what is given here must agree with it (else the server
    /// refuses the upload, 422).
    #[command(
        after_help = "Examples:\n  rota release publish build/robot-2.1.0.rota\n  \
        rota release publish robot.rota --branch main --commit 0a1b2c3d\n"
    )]
    Publish {
        /// The signed bundle file (.rota), as `rota-image bundle` writes it.
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
    /// Show one robot: health, last failure, addresses, board, OS, kernel, disk, tags, slots.
    Show {
        /// The robot's id, as it enrolled.
        id: String,
    },
    /// Set or remove operator tags on a robot; dynamic groups select robots by them.
    ///
    /// Operator tags live on the server. A robot may also carry tags from its own config
    /// (`[server] tags` in updater.toml); where both name a tag, the operator's counts.
    #[command(
        after_help = "Examples:\n  rota robots tag robot-007 site=lab arm=so-100\n  \
                            rota robots tag robot-007 --remove site\n"
    )]
    Tag {
        /// The robot's id.
        id: String,
        /// Tags to set, as NAME=VALUE.
        #[arg(value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Names of operator tags to remove (repeatable). [default: none]
        #[arg(long = "remove", value_name = "NAME")]
        remove: Vec<String>,
    },
    /// Let a robot that enrolled under approval receive deployments (admin).
    Approve {
        /// The robot's id.
        id: String,
    },
    /// Remove a robot so it can enroll again (admin). Its history stays.
    Remove {
        /// The robot's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Create a group (no-op if it exists), or with --query a dynamic one (or change its query).
    ///
    /// A dynamic group's robots are the ones its query matches, worked out when asked for; a
    /// deployment to it reaches those that match when it is created. Query grammar: fields
    /// id, compatible, version, state, board, os, os_version, kernel, address, tag.NAME;
    /// operators = (exact), != and ~ (contains, ignoring case); values in double quotes;
    /// and, or, not, parentheses.
    #[command(after_help = "Examples:\n  rota groups create lab\n  \
                            rota groups create lab-pis --query 'board ~ \"Raspberry Pi 5\" and tag.site = \"lab\"'\n")]
    Create {
        /// The group's name.
        name: String,
        /// Make it a dynamic group with this query. [default: robots are added by hand]
        #[arg(long)]
        query: Option<String>,
    },
    /// Show a group: its query, if dynamic, and the robots in it now.
    Show {
        /// The group's name.
        name: String,
    },
    /// Delete a group; its robots stay enrolled.
    Delete {
        /// The group's name.
        name: String,
    },
    /// Put robots into a group.
    #[command(after_help = "Examples:\n  rota groups add lab robot-001 robot-002\n")]
    Add {
        /// The group's name.
        name: String,
        /// Ids of the robots to add.
        #[arg(required = true)]
        robots: Vec<String>,
    },
    /// Take robots out of a group.
    Remove {
        /// The group's name.
        name: String,
        /// Ids of the robots to take out.
        #[arg(required = true)]
        robots: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List keys.
    List,
    /// Create a key; prints it once.
    #[command(after_help = "Examples:\n  rota keys create ci --role deployer\n")]
    Create {
        /// A name to recognise the key by (who or what uses it).
        name: String,
        /// viewer, deployer or admin.
        #[arg(long)]
        role: Role,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key's id, as `rota keys list` shows it.
        id: String,
    },
}

/// `NAME=VALUE`, for `rota robots tag`.
fn parse_tag(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    rota_protocol::robot::validate_tag(name, value)?;
    Ok((name.to_string(), value.to_string()))
}
