//! `rota-updater commit`, run early in every boot by `rota-commit.service`: decides what the
//! boot means for a pending install.
//!
//! - booted the pending slot: health checks under the deadline; pass → mark good, "committed";
//!   fail → record the failing check, mark bad, reboot into the previous slot;
//! - booted the other slot although a trial was pending: the bootloader gave up (panic, hang,
//!   watchdog reset used the attempts up) → "rolled back" with that reason;
//! - booted the previous slot after a failed check: "rolled back" with the check's name;
//! - booted on trial a slot the state says is still being written (a trial armed by an earlier
//!   install, which a power cut let boot before the new install marked the slot bad): its
//!   bytes are unverified, so it is marked bad and the board reboots; the install resumes.
//!
//! Each step saves the state before acting on the boot env, so a power cut anywhere leaves a
//! state that the next boot's `commit` continues from.

use std::process::Command;

use rota_bootctl::{BootCtl, Slot, SlotState};

use crate::config::Config;
use crate::failpoint;
use crate::health::{self, Verdict};
use crate::notify::Notifier;
use crate::state::{Lifecycle, RollbackReason, TransitionError};
use crate::store::{StoreError, StoreLock};

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("boot environment: {0}")]
    Boot(#[from] rota_bootctl::Error),
    #[error("reboot command {command:?}: {message}")]
    Reboot {
        command: Vec<String>,
        message: String,
    },
}

/// What `commit` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// No trial pending: a normal boot.
    NothingPending,
    Committed {
        slot: Slot,
        version: String,
    },
    /// A required check failed on the trial slot; it is marked bad and a reboot was requested.
    TrialFailed {
        slot: Slot,
        check: String,
        output: String,
    },
    RolledBack {
        slot: Slot,
        reason: RollbackReason,
        failed_check: Option<String>,
    },
    /// Booted on trial a slot whose install never finished: nothing proves what it holds. It
    /// is marked bad and a reboot was requested; the install stays recorded, to be resumed.
    UnverifiedTrial {
        slot: Slot,
    },
}

pub struct CommitContext<'a> {
    pub config: &'a Config,
    pub bootctl: &'a BootCtl,
    /// Held by the caller: commit writes the state and the boot env.
    pub store: &'a StoreLock,
    pub notifier: &'a Notifier,
}

/// Runs the configured reboot command (`systemctl reboot` by default).
pub fn request_reboot(config: &Config) -> Result<(), CommitError> {
    let command = &config.reboot_command;
    log::warn!("rebooting: {}", command.join(" "));
    let error = |message: String| CommitError::Reboot {
        command: command.clone(),
        message,
    };
    let status = Command::new(&command[0])
        .args(&command[1..])
        .status()
        .map_err(|io| error(io.to_string()))?;
    if !status.success() {
        return Err(error(status.to_string()));
    }
    Ok(())
}

/// A normal boot of a good slot: the boot scripts count every boot (U-Boot decrements the
/// counter, GRUB sets TRY=1), so the running slot is confirmed each boot, as RAUC's mark-good
/// service does; otherwise a few reboots would use its attempts up.
fn confirm_booted_slot(bootctl: &BootCtl, booted: Slot) -> Result<(), CommitError> {
    if let SlotState::Trial { .. } = bootctl.status()?.state(booted) {
        log::info!("confirming booted slot {booted}");
        bootctl.mark_good(booted)?;
    }
    Ok(())
}

fn in_trial(ctx: &CommitContext, slot: Slot) -> Result<bool, CommitError> {
    Ok(matches!(
        ctx.bootctl.status()?.state(slot),
        SlotState::Trial { .. }
    ))
}

pub fn commit(ctx: &CommitContext) -> Result<CommitOutcome, CommitError> {
    let mut state = ctx.store.load()?;
    let booted = ctx.bootctl.booted_slot()?;

    match state.lifecycle {
        // The trial was set but the power went before "reboot pending" was saved. `Installed`
        // is saved only after every chunk was verified and fsynced: the record is complete.
        Lifecycle::Installed { slot, .. } if slot == booted && in_trial(ctx, slot)? => {
            log::warn!("booted slot {slot} on trial before its trial was recorded: recording it");
            state.finish_install()?;
            ctx.store.save(&state)?;
        }
        // Armed, then the attempts were used up before anything was recorded.
        Lifecycle::Installed { slot, .. }
            if slot != booted
                && ctx.bootctl.status()?.state(slot) == (SlotState::Trial { attempts_left: 0 }) =>
        {
            log::warn!("slot {slot} used its trial attempts up before its trial was recorded");
            state.finish_install()?;
        }
        // Never completed from this record: whatever the slot holds, this install did not
        // verify it (the trial was armed by an earlier install of the same slot).
        Lifecycle::Installing { slot, .. } if slot == booted && in_trial(ctx, slot)? => {
            log::error!(
                "booted slot {slot} on trial, but the state says an install into it never \
                 finished: its contents are unverified; marking it bad and rebooting"
            );
            ctx.bootctl.mark_bad(slot)?;
            failpoint::hit("after-mark-bad-unverified");
            request_reboot(ctx.config)?;
            return Ok(CommitOutcome::UnverifiedTrial { slot });
        }
        _ => {}
    }

    let outcome = match state.lifecycle.clone() {
        Lifecycle::RebootPending { slot, .. } | Lifecycle::Trial { slot, .. } if slot == booted => {
            state.begin_trial()?;
            ctx.store.save(&state)?;
            failpoint::hit("after-trial-recorded");
            log::info!("slot {slot} is on trial: running health checks");
            let report = health::run_checks(&ctx.config.health, ctx.notifier);
            match report.first_required_failure() {
                None => {
                    failpoint::hit("before-mark-good");
                    ctx.bootctl.mark_good(slot)?;
                    failpoint::hit("after-mark-good");
                    state.commit()?;
                    ctx.store.save(&state)?;
                    let version = match &state.lifecycle {
                        Lifecycle::Committed { bundle, .. } => bundle.version.clone(),
                        _ => String::new(),
                    };
                    log::info!("committed slot {slot} ({version})");
                    CommitOutcome::Committed { slot, version }
                }
                Some(failure) => {
                    let reason = if failure.verdict == Verdict::TimedOut {
                        RollbackReason::DeadlineExceeded
                    } else {
                        RollbackReason::HealthCheckFailed
                    };
                    // The record first: after the reboot it is all that says which check failed.
                    state.fail_trial(reason, Some(failure.name.clone()), failure.output.clone())?;
                    ctx.store.save(&state)?;
                    ctx.bootctl.mark_bad(slot)?;
                    failpoint::hit("after-mark-bad-trial");
                    log::error!(
                        "health check {:?} failed on slot {slot}: rolling back",
                        failure.name
                    );
                    request_reboot(ctx.config)?;
                    CommitOutcome::TrialFailed {
                        slot,
                        check: failure.name.clone(),
                        output: failure.output.clone(),
                    }
                }
            }
        }
        Lifecycle::TrialFailed {
            slot,
            output,
            failed_check,
            ..
        } if slot == booted => {
            // Still on the failed slot: the reboot did not happen (or the mark did not stick).
            ctx.bootctl.mark_bad(slot)?;
            request_reboot(ctx.config)?;
            CommitOutcome::TrialFailed {
                slot,
                check: failed_check.unwrap_or_default(),
                output,
            }
        }
        Lifecycle::RebootPending { slot, .. }
        | Lifecycle::Trial { slot, .. }
        | Lifecycle::TrialFailed { slot, .. } => {
            // Booted the other slot. Make sure the failed one is not tried again.
            ctx.bootctl.mark_bad(slot)?;
            state.roll_back()?;
            ctx.store.save(&state)?;
            let Lifecycle::RolledBack {
                reason,
                failed_check,
                ..
            } = &state.lifecycle
            else {
                unreachable!("roll_back ends in RolledBack");
            };
            // The rollback worked: the robot runs its good slot. A warning, not an error (the
            // command succeeds), so that an `error:` line always means commit failed.
            log::warn!("slot {slot} rolled back: {reason}");
            CommitOutcome::RolledBack {
                slot,
                reason: reason.clone(),
                failed_check: failed_check.clone(),
            }
        }
        _ => CommitOutcome::NothingPending,
    };
    if matches!(
        outcome,
        CommitOutcome::NothingPending | CommitOutcome::RolledBack { .. }
    ) {
        confirm_booted_slot(ctx.bootctl, booted)?;
    }
    if !matches!(
        outcome,
        CommitOutcome::TrialFailed { .. } | CommitOutcome::UnverifiedTrial { .. }
    ) {
        ctx.notifier.ready(match &outcome {
            CommitOutcome::Committed { .. } => "committed",
            CommitOutcome::RolledBack { .. } => "rolled back",
            _ => "nothing pending",
        });
    }
    Ok(outcome)
}
