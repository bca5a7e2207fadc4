//! [`BootCtl`]: the operations the updater and the CLI use, over any backend.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::backend::{BackendKind, BootBackend, Operation};
use crate::grub_backend::GrubBackend;
use crate::uboot_backend::UbootBackend;
use crate::{cmdline, BootConfig, Result, Slot, SlotState};

/// The state of one slot in [`BootStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    #[serde(flatten)]
    pub state: SlotState,
}

/// Everything `status` reports; serialised as the CLI's `--json` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BootStatus {
    pub backend: BackendKind,
    /// Where the environment lives (fw_env.config or grubenv path).
    pub location: String,
    /// The running slot, from the kernel command line; `None` when it carries no marker.
    pub booted: Option<Slot>,
    /// The slot the boot script will pick next (RAUC's "primary"); `None` when no slot
    /// qualifies, in which case the boot script resets the counters and retries.
    pub next: Option<Slot>,
    /// Slots in boot order.
    pub order: Vec<Slot>,
    /// State of A and B, in that order.
    pub slots: Vec<SlotStatus>,
    /// The boot-selection variables as stored.
    pub env: BTreeMap<String, String>,
}

impl BootStatus {
    pub fn state(&self, slot: Slot) -> SlotState {
        self.slots
            .iter()
            .find(|s| s.slot == slot)
            .map(|s| s.state)
            .unwrap_or(SlotState::Bad)
    }
}

/// Boot selection for one robot: a backend plus the kernel command line.
pub struct BootCtl {
    backend: Box<dyn BootBackend>,
    cmdline: PathBuf,
}

impl BootCtl {
    /// Opens the configured backend (reading `fw_env.config` for U-Boot).
    pub fn from_config(config: &BootConfig) -> Result<BootCtl> {
        let backend: Box<dyn BootBackend> = match config.backend {
            BackendKind::Uboot => Box::new(UbootBackend::open(
                &config.uboot_config,
                config.default_attempts,
            )?),
            BackendKind::Grub => Box::new(GrubBackend::open(&config.grubenv)),
        };
        Ok(Self::new(backend, config.cmdline.clone()))
    }

    /// Uses any backend (for more backends, or tests).
    pub fn new(backend: Box<dyn BootBackend>, cmdline: impl Into<PathBuf>) -> BootCtl {
        BootCtl {
            backend,
            cmdline: cmdline.into(),
        }
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// The running slot, from `rota.slot=` or `rauc.slot=` on the kernel command line.
    pub fn booted_slot(&self) -> Result<Slot> {
        cmdline::read_booted_slot(&self.cmdline)
    }

    /// Reads the environment and the command line. A command line without a slot marker is not
    /// an error here (`booted` is `None`), so status works on any machine.
    pub fn status(&self) -> Result<BootStatus> {
        let state = self.backend.read_state()?;
        let booted = match self.booted_slot() {
            Ok(slot) => Some(slot),
            Err(crate::Error::NoSlotOnCmdline { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(BootStatus {
            backend: self.backend.kind(),
            location: self.backend.location(),
            booted,
            next: state.next,
            slots: Slot::ALL
                .iter()
                .map(|&slot| SlotStatus {
                    slot,
                    state: state.state(slot),
                })
                .collect(),
            order: state.order,
            env: state.vars,
        })
    }

    /// Makes `slot` boot next with `attempts` tries (1 = one-shot). Call only after the slot's
    /// contents are fully written and verified.
    pub fn begin_trial(&self, slot: Slot, attempts: u32) -> Result<()> {
        self.backend.apply(Operation::BeginTrial { slot, attempts })
    }

    /// Confirms `slot` (after its health checks passed).
    pub fn mark_good(&self, slot: Slot) -> Result<()> {
        self.backend.apply(Operation::MarkGood(slot))
    }

    /// Makes `slot` unbootable and the other slot first.
    pub fn mark_bad(&self, slot: Slot) -> Result<()> {
        self.backend.apply(Operation::MarkBad(slot))
    }

    /// Makes `slot` the first, good slot.
    pub fn set_primary(&self, slot: Slot) -> Result<()> {
        self.backend.apply(Operation::SetPrimary(slot))
    }
}
