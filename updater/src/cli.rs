//! The command line of `rota-updater`, as clap reads it. It lives in the library so that the
//! packaging's man pages and shell completions come from the same definition as the binary;
//! `main.rs` runs it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::install;

#[derive(Parser)]
#[command(
    name = "rota-updater",
    version,
    about = "Installs signed Rota bundles into the inactive slot, trial-boots them, and commits them after health checks.",
    after_help = "Exit codes:\n   0  success (for commit: committed, rolled back recorded, or nothing pending)\n   1  other error (I/O, boot environment, config, state file)\n   2  commit: a health check failed, or the trial slot's install never finished; the slot\n      is marked bad and a reboot was requested\n   3  the bundle is bad or refused (signature, damage, compatible, downgrade, denylist,\n      size): retrying the same bundle cannot help\n   4  transport: the source is unreachable, timed out, or broke after the retry budget,\n      or stdin ended early: retrying later may help\n   5  busy: another rota-updater holds the state lock (an install, resume or commit\n      is running)\n  64  usage: bad arguments, or the bundle path is missing or a directory\n\nEnvironment:\n  ROTA_LOG        log level: error, warn, info (default), debug\n  ROTA_FAILPOINT  crash-test hook: NAME[@N] exits at the N-th time NAME is reached"
)]
pub struct Cli {
    /// Read only this config file instead of /usr/lib/rota/updater.toml, /etc/rota/updater.toml
    /// and /etc/rota/updater.d/*.toml (merged in that order; the default).
    #[arg(long, global = true, value_name = "FILE", env = "ROTA_UPDATER_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show the booted slot, what each slot holds, the pending install and the last result.
    Status {
        /// Print JSON on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stream a bundle into the inactive slot and set a one-shot trial boot of it.
    ///
    /// The signature is checked before anything else; a refused bundle leaves the slot and the
    /// boot environment untouched. Chunks the booted slot already holds (by the chunk index its
    /// own install left) are copied from it, each checked against the new signed manifest;
    /// only the others are fetched, by Range requests (see `plan`). An interrupted install of
    /// the same bundle resumes from the last verified chunk.
    Install {
        /// Bundle: a file path, an http(s):// URL, or - for stdin.
        source: String,
        /// Reboot into the new slot when the install succeeded. Default: do not reboot.
        #[arg(long)]
        reboot: bool,
        /// Allow a lower version than the booted slot runs (never below the security floor).
        /// Default: refused.
        #[arg(long)]
        allow_downgrade: bool,
        /// Allow a bundle that rolled back before. Default: refused.
        #[arg(long)]
        allow_denied: bool,
        /// Fetch every chunk; copy nothing from the booted slot. Default: chunks the booted slot
        /// holds are copied (each checked first).
        #[arg(long)]
        full: bool,
        /// A delta from the bundle the booted slot runs to this one (`rota-image delta`), file
        /// or URL: chunks it has a patch for are rebuilt from the booted slot instead of
        /// fetched. One for another pair of bundles is set aside with a warning.
        #[arg(long, value_name = "SOURCE")]
        delta: Option<String>,
        /// Bytes between durable progress checkpoints (each fsyncs the slot). Default: 128 MiB.
        #[arg(long, value_name = "BYTES", default_value_t = install::DEFAULT_CHECKPOINT_BYTES)]
        checkpoint_bytes: u64,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show what installing a bundle would fetch and what it would copy from the booted slot,
    /// without writing anything.
    ///
    /// Reads only the bundle's header and manifest (two Range requests for a URL), checks the
    /// signature and everything that would refuse the bundle, and plans against the chunk index
    /// of the booted slot.
    Plan {
        /// Bundle: a file path or an http(s):// URL.
        source: String,
        /// A delta to plan with, as `install --delta`.
        #[arg(long, value_name = "SOURCE")]
        delta: Option<String>,
        /// Print the plan as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Continue an interrupted install from the source recorded in the state file.
    Resume {
        /// Reboot into the new slot when the install succeeded. Default: do not reboot.
        #[arg(long)]
        reboot: bool,
        /// Fetch every chunk still missing; copy nothing from the booted slot.
        #[arg(long)]
        full: bool,
    },
    /// Decide this boot: health-check and commit a trial slot, or record a rollback.
    ///
    /// Run by rota-commit.service early in every boot; does nothing when no trial is pending.
    /// When the install came from the fleet, the outcome is queued for the daemon to report
    /// (trial, then committed or rolled back with the reason).
    Commit,
    /// Talk to the fleet server ([server] in the config): enroll, poll, install assignments
    /// (or switch to the inactive slot when it holds the assigned release), reboot by the reboot
    /// policy and inside the assignment's update window (local time), report every step. Runs
    /// until stopped (rota-updater.service).
    ///
    /// First finishes an install by hand that a reboot interrupted (what `resume` does). An
    /// unreachable server is retried with backoff; unsent reports wait in the outbox on the data
    /// partition. Exits 0 at once without [server]; 1 only when it cannot start (no robot id,
    /// bad config, unreadable state).
    Daemon,
    /// Install, list, roll back and inspect app releases: signed trees of files beside the OS
    /// (`rota-image app`), switched atomically without a reboot.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
}

#[derive(Subcommand)]
pub enum AppCommand {
    /// Install an app release and make it current: its units restart, its checks run, and a
    /// failure switches back to the release before (exit 2).
    ///
    /// The signature, compatible string, OS range and version are checked before a byte is
    /// stored. Files are stored once under [apps] dir and shared by every kept release. A
    /// release kept already is switched to without a download.
    Install {
        /// App bundle: a file path, an http(s):// URL, or - for stdin.
        source: String,
        /// Allow a lower version than the current release. Default: refused.
        #[arg(long)]
        allow_downgrade: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Make a kept release current again, as install does, with no download and no reboot.
    Rollback {
        /// The app.
        name: String,
        /// A kept release: its id, its version, or commit:SHA (default: the previous release).
        #[arg(long, value_name = "VERSION|ID|commit:SHA")]
        to: Option<String>,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List every kept release of every app (or of one), oldest first; * marks the current.
    List {
        /// Only this app.
        name: Option<String>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show each app's current and previous release and its last activation's outcome.
    Status {
        /// Only this app.
        name: Option<String>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}
