//! `rota-updater`: the command line. Parses, loads config, and calls one library function per
//! subcommand; everything testable lives in the library.

mod app_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use indicatif::HumanBytes;
use rota_bootctl::{BootConfig, BootCtl};
use rota_bundle::Keyring;
use rota_updater::cli::{Cli, Command};
use rota_updater::commit::{self, CommitContext, CommitOutcome};
use rota_updater::config::{self, Config, ConfigPaths};
use rota_updater::daemon::{self, Daemon, DaemonContext};
use rota_updater::install::source::BundleSource;
use rota_updater::install::{
    self, Context, FailureKind, InstallError, InstallOptions, InstallReport,
};
use rota_updater::notify::Notifier;
use rota_updater::state::{Lifecycle, State};
use rota_updater::store::{Store, StoreError, StoreLock};
use rota_updater::{logging, progress, status};

/// Exit codes, also listed in `--help` and updater/README.md; `tests/exit_codes.rs` checks
/// each of them.
const EXIT_ERROR: u8 = 1;
const EXIT_TRIAL_FAILED: u8 = 2;
const EXIT_BAD_BUNDLE: u8 = 3;
const EXIT_TRANSPORT: u8 = 4;
/// Another rota-updater holds the state lock.
const EXIT_BUSY: u8 = 5;
/// As sysexits.h's EX_USAGE: clap's own usage errors would exit 2, commit's code.
const EXIT_USAGE: u8 = 64;

struct Loaded {
    config: Config,
    bootctl: BootCtl,
    store: Store,
}

fn load(config_path: Option<PathBuf>) -> Result<Loaded> {
    let paths = config_path.map_or_else(ConfigPaths::default, ConfigPaths::single);
    let config = config::load(&paths).context("loading the updater config")?;
    let boot_config =
        BootConfig::load(&config.bootctl_config).context("loading the bootctl config")?;
    let bootctl = BootCtl::from_config(&boot_config).context("opening the boot environment")?;
    let store = Store::new(&config.state_path);
    Ok(Loaded {
        config,
        bootctl,
        store,
    })
}

/// glibc gives every thread that allocates its own heap (arena) and keeps what is freed in it: a
/// delta install's short-lived threads (one request ahead, copy workers) grew peak memory by
/// ~2 MiB that way (6.8 MiB against 5.0 MiB with one arena, measured by `scripts/bench
/// delta`). Two arenas keep the workers from contending on one lock.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    logging::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are "errors" printed on stdout, exit 0.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            log::error!("{error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}

/// The exit code of a failed command (see `after_help`).
fn exit_code(error: &anyhow::Error) -> u8 {
    let busy = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<StoreError>(),
            Some(StoreError::Busy { .. })
        ) || matches!(
            cause.downcast_ref::<InstallError>(),
            Some(InstallError::Store(StoreError::Busy { .. }))
        )
    });
    if busy {
        return EXIT_BUSY;
    }
    if let Some(code) = app_cmd::exit_code(error) {
        return code;
    }
    match error.downcast_ref::<InstallError>().map(InstallError::kind) {
        Some(FailureKind::BadBundle) => EXIT_BAD_BUNDLE,
        Some(FailureKind::Transport) => EXIT_TRANSPORT,
        Some(FailureKind::Usage) => EXIT_USAGE,
        Some(FailureKind::Other) | None => EXIT_ERROR,
    }
}

fn lock(loaded: &Loaded) -> Result<StoreLock> {
    loaded.store.lock().context("taking the state lock")
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Status { json } => {
            let loaded = load(cli.config)?;
            let state = loaded.store.load().context("reading the state file")?;
            let report = status::report(&state, Some(&loaded.bootctl));
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status::render(&report));
            }
            Ok(0)
        }
        Command::Install {
            source,
            reboot,
            allow_downgrade,
            allow_denied,
            full,
            delta,
            checkpoint_bytes,
            json,
        } => {
            let options = InstallOptions {
                allow_downgrade,
                allow_denied,
                checkpoint_bytes,
                reuse_booted_slot: !full,
                delta: delta.as_deref().map(BundleSource::parse),
            };
            install_from(
                cli.config,
                BundleSource::parse(&source),
                &options,
                reboot,
                json,
            )
        }
        Command::Plan {
            source,
            delta,
            json,
        } => {
            let loaded = load(cli.config)?;
            let lock = lock(&loaded)?;
            let source = BundleSource::parse(&source);
            let keyring = load_keyring(&loaded)?;
            let context = install_context(&loaded, &lock, &keyring, Some(&source));
            let delta = delta.as_deref().map(BundleSource::parse);
            let plan = install::dry_run(&context, &source, delta.as_ref())
                .with_context(|| format!("planning the install of {}", source.describe()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                let share = |part: u64| part as f64 * 100.0 / plan.bundle_bytes.max(1) as f64;
                println!(
                    "{} {} into slot {}:\n  fetch  {} in {} request(s) ({:.1} % of the {} bundle)\n  reuse  {} of the {} image from the booted slot",
                    plan.bundle.version,
                    plan.bundle.digest,
                    plan.slot,
                    HumanBytes(plan.fetch_bytes + plan.patch_bytes),
                    plan.requests,
                    share(plan.fetch_bytes + plan.patch_bytes),
                    HumanBytes(plan.bundle_bytes),
                    HumanBytes(plan.reuse_bytes),
                    HumanBytes(plan.image_bytes),
                );
            }
            Ok(0)
        }
        Command::Daemon => {
            let loaded = load(cli.config.clone())?;
            // An install by hand interrupted by a reboot or power cut is finished first (fleet
            // installs resume when the server offers their assignment again). Whatever happens
            // to it, the daemon goes on: one bundle must never keep a robot off its fleet.
            if let Err(error) = resume_by_hand(&loaded) {
                log::error!("resuming the interrupted install: {error:#}");
            }
            // At boot too: an app activation a power cut interrupted never passed its checks.
            if let Err(error) = app_cmd::settle(&loaded) {
                log::error!("{error:#}");
            }
            if loaded.config.server.is_none() {
                log::info!("no [server] in the config: no fleet to poll");
                return Ok(0);
            }
            let keyring = load_keyring(&loaded)?;
            let context = DaemonContext {
                config: &loaded.config,
                bootctl: &loaded.bootctl,
                keyring: &keyring,
                store: &loaded.store,
            };
            Daemon::new(context).context("starting the daemon")?.run()
        }
        Command::Resume { reboot, full } => {
            let loaded = load(cli.config.clone())?;
            let lock = lock(&loaded)?;
            let state = lock.load().context("reading the state file")?;
            if !is_interrupted(&state) {
                log::info!("no interrupted install ({})", state.lifecycle.name());
                return Ok(0);
            }
            // Continuing a fleet install keeps its deployment, and every install keeps what
            // it was allowed when it started.
            let mut options = InstallOptions::resuming(&state);
            options.reuse_booted_slot = !full;
            install_locked(&loaded, &lock, &state, &options, reboot, false)
        }
        Command::App { command } => app_cmd::run(&load(cli.config)?, command),
        Command::Commit => {
            let loaded = load(cli.config)?;
            let lock = lock(&loaded)?;
            let notifier = Notifier::from_env();
            let context = CommitContext {
                config: &loaded.config,
                bootctl: &loaded.bootctl,
                store: &lock,
                notifier: &notifier,
            };
            let outcome = commit::commit(&context)?;
            if let Some(server) = &loaded.config.server {
                // The outcome is decided and saved; a failure to queue the report must not
                // change it, only be seen.
                if let Err(error) = daemon::queue_commit_reports(server, &loaded.store, &outcome) {
                    log::error!("queueing the report for the fleet server: {error:#}");
                }
            }
            println!("{}", describe(&outcome));
            Ok(match outcome {
                CommitOutcome::TrialFailed { .. } | CommitOutcome::UnverifiedTrial { .. } => {
                    EXIT_TRIAL_FAILED
                }
                _ => 0,
            })
        }
    }
}

fn describe(outcome: &CommitOutcome) -> String {
    match outcome {
        CommitOutcome::NothingPending => "nothing pending".into(),
        CommitOutcome::Committed { slot, version } => format!("committed slot {slot} ({version})"),
        CommitOutcome::TrialFailed { slot, check, .. } => {
            format!("trial of slot {slot} failed check {check:?}; rebooting")
        }
        CommitOutcome::UnverifiedTrial { slot } => format!(
            "slot {slot} booted on trial but its install never finished: marked bad; rebooting"
        ),
        CommitOutcome::RolledBack {
            slot,
            reason,
            failed_check,
        } => match failed_check {
            Some(check) => format!("rolled back slot {slot}: {reason} (check {check:?})"),
            None => format!("rolled back slot {slot}: {reason}"),
        },
    }
}

/// An install interrupted by a reboot or power cut: `resume` continues it.
fn is_interrupted(state: &State) -> bool {
    matches!(
        state.lifecycle,
        Lifecycle::Installing { .. } | Lifecycle::Installed { .. }
    )
}

/// The daemon's start: resumes an install by hand (no deployment) with what it was allowed.
/// A bundle refused now (a key was revoked, say) is abandoned, so the next start does not try
/// it again.
fn resume_by_hand(loaded: &Loaded) -> Result<()> {
    let state = loaded.store.load().context("reading the state file")?;
    if !is_interrupted(&state) || state.deployment_id.is_some() {
        return Ok(());
    }
    let lock = lock(loaded)?;
    let state = lock.load().context("reading the state file")?;
    if !is_interrupted(&state) || state.deployment_id.is_some() {
        return Ok(());
    }
    match install_locked(
        loaded,
        &lock,
        &state,
        &InstallOptions::resuming(&state),
        false,
        false,
    ) {
        Ok(_) => Ok(()),
        Err(error) if exit_code(&error) == EXIT_BAD_BUNDLE => {
            let mut state = lock.load().context("reading the state file")?;
            if state.abandon_install().is_ok() {
                lock.save(&state).context("writing the state file")?;
                log::error!("abandoned the interrupted install: its bundle is refused now");
            }
            Err(error)
        }
        Err(error) => Err(error),
    }
}

/// Continues the install `state` records, with `options` (the permissions it recorded).
fn install_locked(
    loaded: &Loaded,
    lock: &StoreLock,
    state: &State,
    options: &InstallOptions,
    reboot: bool,
    json: bool,
) -> Result<u8> {
    let source = match &state.lifecycle {
        Lifecycle::Installing { source, .. } => BundleSource::parse(source),
        Lifecycle::Installed { .. } => {
            let keyring = load_keyring(loaded)?;
            let context = install_context(loaded, lock, &keyring, None);
            let report =
                install::arm_installed(&context).context("setting the installed slot's trial")?;
            return finish(loaded, &report, reboot, json);
        }
        _ => return Ok(0),
    };
    run_install(loaded, lock, &source, options, reboot, json)
}

fn install_from(
    config_path: Option<PathBuf>,
    source: BundleSource,
    options: &InstallOptions,
    reboot: bool,
    json: bool,
) -> Result<u8> {
    let loaded = load(config_path)?;
    let lock = lock(&loaded)?;
    // An install by hand belongs to no fleet deployment: its outcome must not be reported
    // under the deployment of an earlier one, nor its reboot wait for that one's window.
    let mut state = lock.load().context("reading the state file")?;
    let had_window = state.update_window.take().is_some();
    if state.deployment_id.take().is_some() || had_window {
        lock.save(&state).context("writing the state file")?;
    }
    run_install(&loaded, &lock, &source, options, reboot, json)
}

fn run_install(
    loaded: &Loaded,
    lock: &StoreLock,
    source: &BundleSource,
    options: &InstallOptions,
    reboot: bool,
    json: bool,
) -> Result<u8> {
    let keyring = load_keyring(loaded)?;
    let context = install_context(loaded, lock, &keyring, Some(source));
    let mut progress = progress::for_stderr("install");
    let report = install::install(&context, source, options, progress.as_mut())
        .with_context(|| format!("installing {}", source.describe()))?;
    finish(loaded, &report, reboot, json)
}

fn load_keyring(loaded: &Loaded) -> Result<Keyring> {
    Keyring::load_dir(&loaded.config.keyring_dir).context("loading the keyring")
}

/// What an install, a plan or arming a trial works with; the robot's token goes with `source`
/// only when it is a URL on the robot's fleet server.
fn install_context<'a>(
    loaded: &'a Loaded,
    lock: &'a StoreLock,
    keyring: &'a Keyring,
    source: Option<&BundleSource>,
) -> Context<'a> {
    Context {
        config: &loaded.config,
        bootctl: &loaded.bootctl,
        keyring,
        store: lock,
        bearer_token: source.and_then(|source| robot_token_for(&loaded.config, source)),
    }
}

/// The robot's fleet token for a bundle on its fleet server (an install the daemon started
/// and a power cut interrupted, or one by hand), read from where the daemon keeps it.
fn robot_token_for(config: &Config, source: &BundleSource) -> Option<String> {
    let (Some(server), BundleSource::Http(url)) = (&config.server, source) else {
        return None;
    };
    let token = std::fs::read_to_string(&server.token_path).ok()?;
    daemon::bearer_for(server, Some(token.trim()), url)
}

fn finish(loaded: &Loaded, report: &InstallReport, reboot: bool, json: bool) -> Result<u8> {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "slot": report.slot,
                "version": report.bundle.version,
                "bundle_digest": report.bundle.digest,
                "resumed_at_chunk": report.resumed_at_chunk,
                "reconnects": report.reconnects,
                "fetched_bytes": report.fetched_bytes,
                "reused_bytes": report.reused_bytes,
            })
        );
    } else {
        println!(
            "installed {} into slot {} ({} fetched, {} reused from the booted slot)",
            report.bundle.version,
            report.slot,
            HumanBytes(report.fetched_bytes),
            HumanBytes(report.reused_bytes)
        );
    }
    if reboot {
        commit::request_reboot(&loaded.config)?;
    }
    Ok(0)
}
