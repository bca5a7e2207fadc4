//! The updater's lifecycle and everything it must remember across reboots and power cuts.
//!
//! One [`Lifecycle`] enum whose variants carry their data; each transition is a method on
//! [`State`] that refuses to start from a state it does not belong to. The diagram is in
//! `updater/STATE.md`. Persistence (versioned, atomic) lives in [`crate::store`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use rota_bootctl::Slot;
use serde::{Deserialize, Serialize};

pub use rota_bundle::Sha256Digest;

/// Which bundle, as the updater identifies it: the digest covers the signed header and manifest,
/// which in turn pin every image byte, so two bundles with the same digest install the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub digest: Sha256Digest,
    pub version: String,
    pub compatible: String,
    pub security_version: u32,
}

/// What a slot holds, as far as the updater wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotContent {
    pub version: String,
    pub bundle_digest: Sha256Digest,
    /// Unix seconds when the last byte was written and verified (or the slot was switched to).
    pub installed_at: u64,
    /// The bundle's security version. `None` when recorded by an updater before state format 3:
    /// such a slot is never booted by a switch, since nothing proves it is above the
    /// anti-rollback floor; a rollback to it downloads the bundle again.
    pub security_version: Option<u32>,
}

/// How far an interrupted install got: every chunk before `next_chunk` of image `image` is in the
/// slot, verified and fsynced. A hint only; resume re-checks those chunks against the slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InstallProgress {
    pub image: u32,
    pub next_chunk: u64,
    pub bytes_done: u64,
}

/// Why a trial ended on the old slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RollbackReason {
    /// A required health check failed.
    HealthCheckFailed,
    /// The health checks did not finish before the deadline.
    DeadlineExceeded,
    /// The bootloader fell back on its own: the trial slot panicked, hung, or the watchdog reset
    /// the board until its attempts were used up.
    AttemptsExhausted,
}

impl fmt::Display for RollbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RollbackReason::HealthCheckFailed => "health check failed",
            RollbackReason::DeadlineExceeded => "health check deadline exceeded",
            RollbackReason::AttemptsExhausted => "attempts exhausted (panic/hang/watchdog)",
        })
    }
}

/// Where the updater is. See `updater/STATE.md` for the diagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Lifecycle {
    /// Nothing in flight.
    #[default]
    Idle,
    /// Writing `bundle` into `slot`, which is marked bad while it is written.
    Installing {
        slot: Slot,
        bundle: BundleInfo,
        /// File path or URL, so a restarted daemon can resume.
        source: String,
        progress: InstallProgress,
    },
    /// Every hash matched and the one-shot trial is set; the next boot tries `slot`.
    RebootPending { slot: Slot, bundle: BundleInfo },
    /// Booted into `slot` on trial; health checks are running (or were, when power failed).
    Trial {
        slot: Slot,
        bundle: BundleInfo,
        started_at: u64,
    },
    /// A health check failed on `slot`; it is marked bad and the board reboots into the old slot,
    /// where `commit` records the rollback.
    TrialFailed {
        slot: Slot,
        bundle: BundleInfo,
        reason: RollbackReason,
        failed_check: Option<String>,
        output: String,
    },
    /// `slot` passed its health checks and is marked good.
    Committed {
        slot: Slot,
        bundle: BundleInfo,
        at: u64,
    },
    /// The trial of `bundle` on `slot` ended on the other slot.
    RolledBack {
        slot: Slot,
        bundle: BundleInfo,
        reason: RollbackReason,
        failed_check: Option<String>,
        output: String,
        at: u64,
    },
    /// Every chunk of `bundle` is in `slot`, verified and durable; the one-shot trial is being
    /// set. The only state from which a boot of `slot` on trial is completed into a trial:
    /// `Installing` proves nothing about the slot's bytes. (Last variant: postcard numbers
    /// variants by position, so appending keeps older files readable.)
    Installed { slot: Slot, bundle: BundleInfo },
}

impl Lifecycle {
    /// Short name for messages and `status`.
    pub fn name(&self) -> &'static str {
        match self {
            Lifecycle::Idle => "idle",
            Lifecycle::Installing { .. } => "installing",
            Lifecycle::Installed { .. } => "installed",
            Lifecycle::RebootPending { .. } => "reboot-pending",
            Lifecycle::Trial { .. } => "trial",
            Lifecycle::TrialFailed { .. } => "trial-failed",
            Lifecycle::Committed { .. } => "committed",
            Lifecycle::RolledBack { .. } => "rolled-back",
        }
    }

    /// True when no install or trial is in flight, so a new install may start.
    pub fn is_settled(&self) -> bool {
        matches!(
            self,
            Lifecycle::Idle | Lifecycle::Committed { .. } | Lifecycle::RolledBack { .. }
        )
    }
}

/// A bundle that must never be installed again automatically, because its trial rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedBundle {
    pub bundle: BundleInfo,
    pub reason: RollbackReason,
    pub at: u64,
}

/// Everything the updater persists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct State {
    pub lifecycle: Lifecycle,
    pub slot_a: Option<SlotContent>,
    pub slot_b: Option<SlotContent>,
    pub denylist: Vec<DeniedBundle>,
    /// Anti-rollback floor: the highest security version ever committed. Bundles below it are
    /// refused, with or without `--allow-downgrade`.
    pub security_floor: u32,
    /// The fleet deployment the install in flight (or last finished) belongs to, so the reports
    /// after the trial boot name the same deployment. `None` for installs from the command line.
    /// Set by the daemon before it installs; the lifecycle transitions leave it alone.
    pub deployment_id: Option<String>,
    /// The update window of that deployment (`[days ]HH:MM-HH:MM`, the robot's local time),
    /// kept so that a restarted daemon reboots into the installed update only inside it, even
    /// before the server answers. Set with `deployment_id`.
    pub update_window: Option<String>,
    /// What the install in flight (or last started) was allowed, so that `resume` and a
    /// restarted daemon continue it with the same permissions: an interrupted downgrade (a
    /// fleet rollback) must not turn into a refusal.
    pub permissions: InstallPermissions,
}

/// What an install may do beyond the defaults; recorded with the install.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InstallPermissions {
    /// A lower version than the booted slot runs (never below the security floor).
    pub allow_downgrade: bool,
    /// A bundle on the denylist (an operator retrying a rolled-back release on purpose).
    pub allow_denied: bool,
}

/// A transition was asked for from a state it does not start from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {transition} while {from}")]
pub struct TransitionError {
    pub transition: &'static str,
    pub from: &'static str,
}

pub type TransitionResult = Result<(), TransitionError>;

/// Unix seconds now; the state records wall-clock times for people, never for decisions.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

impl State {
    pub fn slot(&self, slot: Slot) -> Option<&SlotContent> {
        match slot {
            Slot::A => self.slot_a.as_ref(),
            Slot::B => self.slot_b.as_ref(),
        }
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut Option<SlotContent> {
        match slot {
            Slot::A => &mut self.slot_a,
            Slot::B => &mut self.slot_b,
        }
    }

    pub fn is_denied(&self, digest: &Sha256Digest) -> Option<&DeniedBundle> {
        self.denylist
            .iter()
            .find(|denied| &denied.bundle.digest == digest)
    }

    fn refuse(&self, transition: &'static str) -> TransitionResult {
        Err(TransitionError {
            transition,
            from: self.lifecycle.name(),
        })
    }

    /// Starts writing `bundle` into `slot`. Allowed when settled, and also over an unfinished
    /// install or an unbooted pending one (the operator changed their mind). Saved before the
    /// boot env marks `slot` bad, so a power cut in between leaves a record that claims nothing
    /// about the slot's bytes: a boot of `slot` on a trial armed earlier is then refused by
    /// `commit`, never completed.
    pub fn begin_install(
        &mut self,
        slot: Slot,
        bundle: BundleInfo,
        source: String,
        permissions: InstallPermissions,
    ) -> TransitionResult {
        self.refuse_unless_replaceable("begin an install")?;
        // The slot's old content is being overwritten from the first byte on.
        *self.slot_mut(slot) = None;
        self.permissions = permissions;
        self.lifecycle = Lifecycle::Installing {
            slot,
            bundle,
            source,
            progress: InstallProgress::default(),
        };
        Ok(())
    }

    /// Boots `slot`, which already holds `bundle` (recorded when it was installed), without
    /// writing it: straight to `Installed`.
    pub fn begin_switch(
        &mut self,
        slot: Slot,
        bundle: BundleInfo,
        permissions: InstallPermissions,
    ) -> TransitionResult {
        self.refuse_unless_replaceable("switch slots")?;
        self.permissions = permissions;
        self.record_installed(slot, bundle);
        Ok(())
    }

    /// Nothing is in flight that a new install or switch would lose: settled, or an install
    /// that has not booted yet.
    fn refuse_unless_replaceable(&self, transition: &'static str) -> TransitionResult {
        match &self.lifecycle {
            Lifecycle::Idle
            | Lifecycle::Committed { .. }
            | Lifecycle::RolledBack { .. }
            | Lifecycle::Installing { .. }
            | Lifecycle::Installed { .. }
            | Lifecycle::RebootPending { .. } => Ok(()),
            _ => self.refuse(transition),
        }
    }

    /// Gives up an interrupted install that cannot be finished (its bundle is refused now):
    /// the slot stays marked bad and unrecorded.
    pub fn abandon_install(&mut self) -> TransitionResult {
        let Lifecycle::Installing { .. } = &self.lifecycle else {
            return self.refuse("abandon an install");
        };
        self.lifecycle = Lifecycle::Idle;
        Ok(())
    }

    /// Records that every chunk before `progress.next_chunk` is verified and durable.
    pub fn record_progress(&mut self, new_progress: InstallProgress) -> TransitionResult {
        match &mut self.lifecycle {
            Lifecycle::Installing { progress, .. } => {
                *progress = new_progress;
                Ok(())
            }
            _ => self.refuse("record install progress"),
        }
    }

    /// Every chunk is written, verified and durable (fsynced): the slot holds the bundle.
    /// Saved before the trial is set in the boot env.
    pub fn finish_writing(&mut self) -> TransitionResult {
        let Lifecycle::Installing { slot, bundle, .. } = &self.lifecycle else {
            return self.refuse("finish writing");
        };
        let (slot, bundle) = (*slot, bundle.clone());
        self.record_installed(slot, bundle);
        Ok(())
    }

    fn record_installed(&mut self, slot: Slot, bundle: BundleInfo) {
        *self.slot_mut(slot) = Some(SlotContent {
            version: bundle.version.clone(),
            bundle_digest: bundle.digest,
            installed_at: now_unix(),
            security_version: Some(bundle.security_version),
        });
        self.lifecycle = Lifecycle::Installed { slot, bundle };
    }

    /// The trial of the installed slot is set in the boot env.
    pub fn finish_install(&mut self) -> TransitionResult {
        let Lifecycle::Installed { slot, bundle } = &self.lifecycle else {
            return self.refuse("finish an install");
        };
        self.lifecycle = Lifecycle::RebootPending {
            slot: *slot,
            bundle: bundle.clone(),
        };
        Ok(())
    }

    /// Booted into the pending slot on trial. Re-entering `Trial` is allowed: a power cut during
    /// the checks with attempts left boots the trial slot again.
    pub fn begin_trial(&mut self) -> TransitionResult {
        let (slot, bundle) = match &self.lifecycle {
            Lifecycle::RebootPending { slot, bundle } | Lifecycle::Trial { slot, bundle, .. } => {
                (*slot, bundle.clone())
            }
            _ => return self.refuse("begin a trial"),
        };
        self.lifecycle = Lifecycle::Trial {
            slot,
            bundle,
            started_at: now_unix(),
        };
        Ok(())
    }

    /// All required checks passed and the slot is marked good.
    pub fn commit(&mut self) -> TransitionResult {
        let Lifecycle::Trial { slot, bundle, .. } = &self.lifecycle else {
            return self.refuse("commit");
        };
        self.security_floor = self.security_floor.max(bundle.security_version);
        self.lifecycle = Lifecycle::Committed {
            slot: *slot,
            bundle: bundle.clone(),
            at: now_unix(),
        };
        Ok(())
    }

    /// A check failed on the trial slot; it is marked bad and a reboot follows.
    pub fn fail_trial(
        &mut self,
        reason: RollbackReason,
        failed_check: Option<String>,
        output: String,
    ) -> TransitionResult {
        let Lifecycle::Trial { slot, bundle, .. } = &self.lifecycle else {
            return self.refuse("fail a trial");
        };
        self.lifecycle = Lifecycle::TrialFailed {
            slot: *slot,
            bundle: bundle.clone(),
            reason,
            failed_check,
            output,
        };
        Ok(())
    }

    /// Booted the old slot: the trial is over. From `TrialFailed` the reason is the failed check;
    /// from `RebootPending` or `Trial` the bootloader gave up on its own.
    pub fn roll_back(&mut self) -> TransitionResult {
        let (slot, bundle, reason, failed_check, output) = match &self.lifecycle {
            Lifecycle::TrialFailed {
                slot,
                bundle,
                reason,
                failed_check,
                output,
            } => (
                *slot,
                bundle.clone(),
                reason.clone(),
                failed_check.clone(),
                output.clone(),
            ),
            Lifecycle::Installed { slot, bundle }
            | Lifecycle::RebootPending { slot, bundle }
            | Lifecycle::Trial { slot, bundle, .. } => (
                *slot,
                bundle.clone(),
                RollbackReason::AttemptsExhausted,
                None,
                String::new(),
            ),
            _ => return self.refuse("roll back"),
        };
        let at = now_unix();
        if self.is_denied(&bundle.digest).is_none() {
            self.denylist.push(DeniedBundle {
                bundle: bundle.clone(),
                reason: reason.clone(),
                at,
            });
        }
        // The slot still holds the bytes, but they are known not to work: say so.
        *self.slot_mut(slot) = None;
        self.lifecycle = Lifecycle::RolledBack {
            slot,
            bundle,
            reason,
            failed_check,
            output,
            at,
        };
        Ok(())
    }

    /// Records what the booted slot holds when the updater has no record of it (first boot of a
    /// golden image), so `status` can say what runs.
    pub fn adopt_booted_slot(&mut self, slot: Slot, content: SlotContent) {
        let entry = self.slot_mut(slot);
        if entry.is_none() {
            *entry = Some(content);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(byte: u8) -> BundleInfo {
        BundleInfo {
            digest: Sha256Digest([byte; 32]),
            version: format!("1.0.{byte}"),
            compatible: "board".into(),
            security_version: 1,
        }
    }

    type Step = fn(&mut State) -> TransitionResult;

    fn install(state: &mut State) -> TransitionResult {
        state.begin_install(
            Slot::B,
            bundle(1),
            "file".into(),
            InstallPermissions::default(),
        )
    }
    fn progress(state: &mut State) -> TransitionResult {
        state.record_progress(InstallProgress::default())
    }
    fn written(state: &mut State) -> TransitionResult {
        state.finish_writing()
    }
    /// Written and armed: the two steps every install ends with.
    fn finish(state: &mut State) -> TransitionResult {
        state.finish_writing()?;
        state.finish_install()
    }
    fn arm(state: &mut State) -> TransitionResult {
        state.finish_install()
    }
    fn switch(state: &mut State) -> TransitionResult {
        state.begin_switch(Slot::B, bundle(2), InstallPermissions::default())
    }
    fn abandon(state: &mut State) -> TransitionResult {
        state.abandon_install()
    }
    fn trial(state: &mut State) -> TransitionResult {
        state.begin_trial()
    }
    fn commit(state: &mut State) -> TransitionResult {
        state.commit()
    }
    fn fail(state: &mut State) -> TransitionResult {
        state.fail_trial(
            RollbackReason::HealthCheckFailed,
            Some("x".into()),
            String::new(),
        )
    }
    fn roll_back(state: &mut State) -> TransitionResult {
        state.roll_back()
    }

    fn run(steps: &[Step]) -> (State, Vec<bool>) {
        let mut state = State::default();
        let results = steps.iter().map(|step| step(&mut state).is_ok()).collect();
        (state, results)
    }

    #[test]
    fn transitions_accept_and_refuse_by_start_state() {
        let cases: &[(&str, &[Step], &[bool], &str)] = &[
            (
                "happy path",
                &[install, progress, finish, trial, commit],
                &[true; 5],
                "committed",
            ),
            (
                "health failure",
                &[install, finish, trial, fail, roll_back],
                &[true; 5],
                "rolled-back",
            ),
            (
                "attempts exhausted before trial",
                &[install, finish, roll_back],
                &[true; 3],
                "rolled-back",
            ),
            (
                "attempts exhausted during trial",
                &[install, finish, trial, roll_back],
                &[true; 4],
                "rolled-back",
            ),
            (
                "trial re-entered after power cut",
                &[install, finish, trial, trial, commit],
                &[true; 5],
                "committed",
            ),
            ("commit without trial", &[commit], &[false], "idle"),
            ("trial without install", &[trial], &[false], "idle"),
            (
                "trial of unfinished install",
                &[install, trial],
                &[true, false],
                "installing",
            ),
            ("progress when idle", &[progress], &[false], "idle"),
            (
                "install during trial",
                &[install, finish, trial, install],
                &[true, true, true, false],
                "trial",
            ),
            (
                "roll back when committed",
                &[install, finish, trial, commit, roll_back],
                &[true, true, true, true, false],
                "committed",
            ),
            (
                "fail when pending",
                &[install, finish, fail],
                &[true, true, false],
                "reboot-pending",
            ),
            (
                "reinstall over pending",
                &[install, finish, install],
                &[true; 3],
                "installing",
            ),
            (
                "armed only after written",
                &[install, arm, written, arm],
                &[true, false, true, true],
                "reboot-pending",
            ),
            (
                "written but never armed, reinstalled",
                &[install, written, install],
                &[true; 3],
                "installing",
            ),
            (
                "written, armed, attempts exhausted before the record",
                &[install, written, roll_back],
                &[true; 3],
                "rolled-back",
            ),
            ("switch is installed", &[switch], &[true], "installed"),
            (
                "switch then arm",
                &[switch, arm, trial],
                &[true; 3],
                "trial",
            ),
            (
                "no switch during a trial",
                &[install, finish, trial, switch],
                &[true, true, true, false],
                "trial",
            ),
            (
                "abandon an install",
                &[install, abandon],
                &[true; 2],
                "idle",
            ),
            (
                "abandon only an install",
                &[install, written, abandon],
                &[true, true, false],
                "installed",
            ),
        ];
        for (name, steps, expected, end) in cases {
            let (state, results) = run(steps);
            assert_eq!(&results, expected, "{name}");
            assert_eq!(state.lifecycle.name(), *end, "{name}");
        }
    }

    #[test]
    fn rollback_denies_the_bundle_and_forgets_the_slot_content() {
        let (state, _) = run(&[install, finish, trial, fail, roll_back]);
        assert!(state.is_denied(&bundle(1).digest).is_some());
        assert_eq!(state.slot(Slot::B), None);
        let Lifecycle::RolledBack {
            failed_check,
            reason,
            ..
        } = &state.lifecycle
        else {
            panic!("{:?}", state.lifecycle)
        };
        assert_eq!(failed_check.as_deref(), Some("x"));
        assert_eq!(*reason, RollbackReason::HealthCheckFailed);
    }

    #[test]
    fn finished_install_records_the_slot_content() {
        let (state, _) = run(&[install, finish, trial, commit]);
        assert_eq!(
            state.security_floor, 1,
            "commit raises the anti-rollback floor"
        );
        let content = state.slot(Slot::B).expect("slot B recorded");
        assert_eq!(content.version, "1.0.1");
        assert_eq!(content.bundle_digest, bundle(1).digest);
        assert_eq!(state.slot(Slot::A), None);
    }
}
