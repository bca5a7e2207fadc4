//! `rota-updater status`: booted slot, what each slot holds, what is pending, the last result.

use std::fmt::Write as _;

use rota_bootctl::{BootCtl, Slot, SlotState};
use serde::Serialize;

use crate::state::{Lifecycle, Sha256Digest, State};

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub booted: Option<Slot>,
    /// The slot the bootloader tries next.
    pub next: Option<Slot>,
    pub state: &'static str,
    pub slots: Vec<SlotReport>,
    pub pending: Option<Pending>,
    pub last_result: Option<LastResult>,
    pub security_floor: u32,
    pub denylist: Vec<Denied>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    pub slot: Slot,
    pub boot_state: Option<SlotState>,
    pub version: Option<String>,
    pub bundle_digest: Option<Sha256Digest>,
    pub installed_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub slot: Slot,
    pub version: String,
    pub bundle_digest: Sha256Digest,
    /// installing, reboot-pending, trial, trial-failed.
    pub stage: &'static str,
    /// Bytes verified and durable so far (installing only).
    pub bytes_done: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastResult {
    /// committed or rolled-back.
    pub result: &'static str,
    pub slot: Slot,
    pub version: String,
    pub bundle_digest: Sha256Digest,
    pub reason: Option<String>,
    pub failed_check: Option<String>,
    pub output: Option<String>,
    pub at: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Denied {
    pub version: String,
    pub bundle_digest: Sha256Digest,
    pub reason: String,
    pub at: u64,
}

/// Combines the state file with the boot env. A boot env that cannot be read is reported as
/// unknown rather than failing: status must work when things are broken.
pub fn report(state: &State, bootctl: Option<&BootCtl>) -> StatusReport {
    let boot = bootctl.and_then(|ctl| match ctl.status() {
        Ok(status) => Some(status),
        Err(error) => {
            log::warn!("boot environment unreadable: {error}");
            None
        }
    });
    let booted = boot
        .as_ref()
        .and_then(|status| status.booted)
        .or_else(|| bootctl.and_then(|ctl| ctl.booted_slot().ok()));
    let slots = Slot::ALL
        .iter()
        .map(|&slot| {
            let content = state.slot(slot);
            SlotReport {
                slot,
                boot_state: boot.as_ref().map(|status| status.state(slot)),
                version: content.map(|content| content.version.clone()),
                bundle_digest: content.map(|content| content.bundle_digest),
                installed_at: content.map(|content| content.installed_at),
            }
        })
        .collect();
    let (pending, last_result) = match &state.lifecycle {
        Lifecycle::Idle => (None, None),
        Lifecycle::Installing {
            slot,
            bundle,
            progress,
            ..
        } => (
            Some(Pending {
                slot: *slot,
                version: bundle.version.clone(),
                bundle_digest: bundle.digest,
                stage: state.lifecycle.name(),
                bytes_done: Some(progress.bytes_done),
            }),
            None,
        ),
        Lifecycle::Installed { slot, bundle }
        | Lifecycle::RebootPending { slot, bundle }
        | Lifecycle::Trial { slot, bundle, .. }
        | Lifecycle::TrialFailed { slot, bundle, .. } => (
            Some(Pending {
                slot: *slot,
                version: bundle.version.clone(),
                bundle_digest: bundle.digest,
                stage: state.lifecycle.name(),
                bytes_done: None,
            }),
            None,
        ),
        Lifecycle::Committed { slot, bundle, at } => (
            None,
            Some(LastResult {
                result: "committed",
                slot: *slot,
                version: bundle.version.clone(),
                bundle_digest: bundle.digest,
                reason: None,
                failed_check: None,
                output: None,
                at: *at,
            }),
        ),
        Lifecycle::RolledBack {
            slot,
            bundle,
            reason,
            failed_check,
            output,
            at,
        } => (
            None,
            Some(LastResult {
                result: "rolled-back",
                slot: *slot,
                version: bundle.version.clone(),
                bundle_digest: bundle.digest,
                reason: Some(reason.to_string()),
                failed_check: failed_check.clone(),
                output: Some(output.clone()),
                at: *at,
            }),
        ),
    };
    StatusReport {
        booted,
        next: boot.as_ref().and_then(|status| status.next),
        state: state.lifecycle.name(),
        slots,
        pending,
        last_result,
        security_floor: state.security_floor,
        denylist: state
            .denylist
            .iter()
            .map(|denied| Denied {
                version: denied.bundle.version.clone(),
                bundle_digest: denied.bundle.digest,
                reason: denied.reason.to_string(),
                at: denied.at,
            })
            .collect(),
    }
}

/// The human form printed without `--json`.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let slot_name = |slot: Option<Slot>| slot.map_or("unknown".to_owned(), |slot| slot.to_string());
    let _ = writeln!(
        out,
        "booted: {}   next boot: {}",
        slot_name(report.booted),
        slot_name(report.next)
    );
    let _ = writeln!(out, "state:  {}", report.state);
    for slot in &report.slots {
        let booted = Some(slot.slot) == report.booted;
        let marker = if booted { "*" } else { " " };
        let boot_state = slot
            .boot_state
            .map_or("unknown".into(), |state| state.describe(booted));
        let line = format!(
            "{marker}slot {}: {:<28} {} {}",
            slot.slot,
            boot_state,
            slot.version.as_deref().unwrap_or("(unknown content)"),
            slot.bundle_digest
                .map(|digest| digest.to_hex()[..16].to_owned())
                .unwrap_or_default()
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if let Some(pending) = &report.pending {
        let _ = writeln!(
            out,
            "pending: {} into slot {} ({}){}",
            pending.version,
            pending.slot,
            pending.stage,
            pending
                .bytes_done
                .map(|bytes| format!(", {bytes} bytes done"))
                .unwrap_or_default()
        );
    }
    if let Some(last) = &report.last_result {
        let _ = write!(
            out,
            "last result: {} {} on slot {}",
            last.result, last.version, last.slot
        );
        if let Some(reason) = &last.reason {
            let _ = write!(out, ": {reason}");
        }
        if let Some(check) = &last.failed_check {
            let _ = write!(out, " (check {check:?})");
        }
        out.push('\n');
        if let Some(output) = last.output.as_deref().filter(|output| !output.is_empty()) {
            for line in output.lines() {
                let _ = writeln!(out, "  | {line}");
            }
        }
    }
    for denied in &report.denylist {
        let _ = writeln!(
            out,
            "denied: {} {} ({})",
            denied.version, denied.bundle_digest, denied.reason
        );
    }
    out
}
