//! U-Boot backend: RAUC's `BOOT_ORDER` / `BOOT_<slot>_LEFT` convention.
//!
//! What RAUC (src/bootloaders/uboot.c) writes, and so what Rota writes:
//! - counters are lower-case hex without prefix (`printf("%x")`), read back with
//!   `strtoull(.., 16)`; boot scripts compare them as `test 0x${BOOT_A_LEFT} -gt 0`;
//! - *set primary*: `BOOT_ORDER` = the slot, then the other names in their order; the slot's
//!   counter = the default attempts (3);
//! - *mark good*: the slot's counter = the default attempts; *mark bad*: the slot is removed
//!   from `BOOT_ORDER` and its counter set to 0;
//! - a slot is good to RAUC when it is in `BOOT_ORDER` with a counter above 0.
//!
//! Rota adds: *begin trial* is set-primary with a chosen number of attempts (1 by default, the
//! one-shot install), and *mark good* also puts a slot back into `BOOT_ORDER` (at the end) if a
//! mark-bad had removed it, so that marking good always makes a slot bootable.
//!
//! Slot states: not in the order → [`SlotState::Bad`]; counter at or above the default
//! attempts → [`SlotState::Good`]; otherwise [`SlotState::Trial`] with the counter as attempts
//! left (a slot that booted but was not yet confirmed has a counter below the default, and will
//! be dropped if it is never confirmed). Unset variables take the boot script's defaults:
//! order `A B`, counter 3.

use std::path::Path;

use crate::backend::{
    c_unsigned, order_including, order_slots, order_tokens, order_with_first, order_without,
    BackendKind, BootBackend, BootState, Operation,
};
use crate::env::uboot_store::UbootEnvStore;
use crate::env::EnvVars;
use crate::{Error, Result, Slot, SlotState};

pub const BOOT_ORDER: &str = "BOOT_ORDER";
/// RAUC's default for both the attempts of a good slot and of a new primary.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// The largest counter the shipped boot script can count down (one hex digit).
pub const MAX_ATTEMPTS: u32 = 15;
/// The counter the boot script assumes when a slot's variable is unset.
const SCRIPT_DEFAULT_LEFT: u64 = 3;

/// `BOOT_A_LEFT` / `BOOT_B_LEFT`.
pub fn left_var(slot: Slot) -> String {
    format!("BOOT_{}_LEFT", slot.name())
}

fn attempts_left(vars: &EnvVars, slot: Slot) -> u64 {
    match vars.get_str(&left_var(slot)) {
        Some(v) if !v.is_empty() => c_unsigned(&v, 16),
        _ => SCRIPT_DEFAULT_LEFT,
    }
}

/// Derives the boot state from the variables (pure; table-tested).
pub fn state_from_vars(vars: &EnvVars, default_attempts: u32) -> BootState {
    let tokens = order_tokens(vars.get_str(BOOT_ORDER).as_deref());
    let order = order_slots(&tokens);
    let state = |slot: Slot| {
        let left = attempts_left(vars, slot);
        if !order.contains(&slot) {
            SlotState::Bad
        } else if left >= u64::from(default_attempts) {
            SlotState::Good
        } else {
            // Below default_attempts (a u32), so the conversion cannot truncate.
            SlotState::Trial {
                attempts_left: left as u32,
            }
        }
    };
    let next = order
        .iter()
        .copied()
        .find(|&slot| attempts_left(vars, slot) > 0);
    let shown = [BOOT_ORDER.to_owned(), left_var(Slot::A), left_var(Slot::B)];
    BootState::new(&order, next, state, vars, &shown)
}

/// Checks a number of attempts against what the boot script can count down.
pub fn check_attempts(attempts: u32) -> Result<()> {
    if attempts == 0 || attempts > MAX_ATTEMPTS {
        return Err(Error::InvalidAttempts {
            backend: "uboot",
            attempts,
            reason: "must be 1..=15 (the boot script counts down one hex digit)",
        });
    }
    Ok(())
}

/// Applies `op` to the variables (pure; table-tested).
pub fn apply_to_vars(vars: &mut EnvVars, op: Operation, default_attempts: u32) -> Result<()> {
    check_attempts(default_attempts)?;
    let tokens = order_tokens(vars.get_str(BOOT_ORDER).as_deref());
    match op {
        Operation::BeginTrial { slot, attempts } => {
            check_attempts(attempts)?;
            vars.set(left_var(slot), format!("{attempts:x}"));
            vars.set(BOOT_ORDER, order_with_first(&tokens, slot));
        }
        Operation::SetPrimary(slot) => {
            vars.set(left_var(slot), format!("{default_attempts:x}"));
            vars.set(BOOT_ORDER, order_with_first(&tokens, slot));
        }
        Operation::MarkGood(slot) => {
            vars.set(left_var(slot), format!("{default_attempts:x}"));
            vars.set(BOOT_ORDER, order_including(&tokens, slot));
        }
        Operation::MarkBad(slot) => {
            vars.set(BOOT_ORDER, order_without(&tokens, slot));
            vars.set(left_var(slot), "0");
        }
    }
    Ok(())
}

/// The U-Boot backend over an env located by `fw_env.config`.
pub struct UbootBackend {
    store: UbootEnvStore,
    config_path: String,
    default_attempts: u32,
}

impl UbootBackend {
    /// Reads `fw_env.config` at `config_path`; the env itself is read at each operation.
    pub fn open(config_path: &Path, default_attempts: u32) -> Result<Self> {
        check_attempts(default_attempts)?;
        Ok(Self {
            store: UbootEnvStore::open(config_path)?,
            config_path: config_path.display().to_string(),
            default_attempts,
        })
    }
}

impl BootBackend for UbootBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Uboot
    }

    fn location(&self) -> String {
        self.config_path.clone()
    }

    fn read_state(&self) -> Result<BootState> {
        Ok(state_from_vars(
            &self.store.load()?.vars,
            self.default_attempts,
        ))
    }

    fn apply(&self, op: Operation) -> Result<()> {
        let loaded = self.store.load()?;
        let mut vars = loaded.vars.clone();
        apply_to_vars(&mut vars, op, self.default_attempts)?;
        self.store.store(&loaded, &vars)
    }
}
