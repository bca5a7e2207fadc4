//! The last steps of an install: arming the one-shot trial of a complete slot.

use rota_bootctl::{Slot, SlotState};

use super::checks::check_bundle;
use super::{Context, InstallError, InstallOptions, InstallReport, Refusal};
use crate::failpoint;
use crate::state::{BundleInfo, Lifecycle, Sha256Digest, State, TransitionError};

/// The last step of every install: `state` records `target` as installed (complete, verified
/// and durable). Sets the one-shot trial, then records "reboot pending"; a power cut between
/// the two is completed by the next boot's `commit`, which completes only an `Installed`
/// record.
pub(super) fn arm_trial(
    ctx: &Context,
    state: &mut State,
    target: Slot,
) -> Result<(), InstallError> {
    failpoint::hit("before-begin-trial");
    ctx.bootctl.begin_trial(target, ctx.config.trial_attempts)?;
    failpoint::hit("after-begin-trial");
    state.finish_install()?;
    ctx.store.save(state)?;
    Ok(())
}

/// Boots the inactive slot on trial without writing a byte when it still holds the bundle
/// `digest` (a rollback to the release the robot ran before): recorded exactly as an install
/// that finished, so the next boot's `commit` health-checks it and commits or rolls back as
/// usual. Refused for the reasons an install of that bundle would be (downgrade without
/// `allow_downgrade`, below the security floor, on the denylist).
///
/// `Ok(None)` when the slot is no usable copy, and the bundle must be installed instead: it
/// holds something else or nothing the state file knows of (a slot the robot rolled back from
/// is forgotten), its security version was not recorded (state format before 3), or the boot
/// environment marks it bad and `allow_denied` (force) is not set.
pub fn switch_to_inactive_slot(
    ctx: &Context,
    digest: &Sha256Digest,
    options: &InstallOptions,
) -> Result<Option<InstallReport>, InstallError> {
    let mut state = ctx.store.load()?;
    if let Lifecycle::Trial { .. } | Lifecycle::TrialFailed { .. } = state.lifecycle {
        return Err(Refusal::TrialInProgress(state.lifecycle.name()).into());
    }
    let booted = ctx.bootctl.booted_slot()?;
    let target = booted.other();
    let Some(content) = state
        .slot(target)
        .filter(|content| content.bundle_digest == *digest)
    else {
        return Ok(None);
    };
    let Some(security_version) = content.security_version else {
        log::info!("slot {target} holds bundle {digest}, but its security version was not recorded: installing it again");
        return Ok(None);
    };
    if ctx.bootctl.status()?.state(target) == SlotState::Bad && !options.allow_denied {
        log::info!("slot {target} holds bundle {digest}, but the boot environment marks it bad: installing it again");
        return Ok(None);
    }
    let info = BundleInfo {
        digest: *digest,
        version: content.version.clone(),
        // This updater wrote the slot, and refuses bundles for any other compatible string.
        compatible: ctx.config.compatible.clone(),
        security_version,
    };
    check_bundle(ctx.config, &state, booted, &info, options)?;
    state.begin_switch(target, info.clone(), options.permissions())?;
    ctx.store.save(&state)?;
    arm_trial(ctx, &mut state, target)?;
    log::info!(
        "slot {target} already held {}: it boots next, {}, nothing downloaded",
        info.version,
        rota_bootctl::slot::attempts_text(ctx.config.trial_attempts)
    );
    Ok(Some(InstallReport {
        slot: target,
        bundle: info,
        resumed_at_chunk: 0,
        reconnects: 0,
        fetched_bytes: 0,
        reused_bytes: 0,
    }))
}

/// Sets the trial of a slot recorded as installed (written, verified and durable) when a power
/// cut came before its trial was set: `resume` after such a cut. Needs no bundle.
pub fn arm_installed(ctx: &Context) -> Result<InstallReport, InstallError> {
    let mut state = ctx.store.load()?;
    let Lifecycle::Installed { slot, bundle } = state.lifecycle.clone() else {
        return Err(TransitionError {
            transition: "set the trial of an installed slot",
            from: state.lifecycle.name(),
        }
        .into());
    };
    arm_trial(ctx, &mut state, slot)?;
    Ok(InstallReport {
        slot,
        bundle,
        resumed_at_chunk: 0,
        reconnects: 0,
        fetched_bytes: 0,
        reused_bytes: 0,
    })
}
