//! GRUB backend: RAUC's `ORDER` / `<slot>_OK` / `<slot>_TRY` convention.
//!
//! What RAUC (src/bootloaders/grub.c) writes, and so what Rota writes:
//! - *set primary*: `<slot>_OK=1`, `<slot>_TRY=0`, `ORDER` = the slot then the others;
//! - *mark good*: `<slot>_OK=1`, `<slot>_TRY=0`; *mark bad*: `<slot>_OK=0`, `<slot>_TRY=0`;
//! - a slot is good to RAUC when it is in `ORDER` with `OK=1` and `TRY=0`. grub.cfg boots the
//!   first such slot after setting its `TRY=1`, so every slot gets exactly one unconfirmed boot.
//!
//! Rota adds: *mark bad* also moves the slot to the end of `ORDER` (the other slot first, as on
//! U-Boot), *mark good* puts a missing slot back into `ORDER`, and *begin trial* is set-primary
//! (GRUB's rules allow exactly one attempt, so any other count is refused).
//!
//! Slot states: not in `ORDER` or `OK` ≠ 1 → [`SlotState::Bad`]; `OK=1, TRY=0` →
//! [`SlotState::Good`] (RAUC's format cannot tell a not-yet-booted trial from a confirmed
//! slot); `OK=1, TRY=1` → [`SlotState::Trial`] with 0 attempts left (booted once, waiting for
//! confirmation). Unset variables take grub.cfg's defaults: `ORDER="A B"`, `OK=0`, `TRY=0`.

use std::path::Path;

use crate::backend::{
    c_unsigned, order_including, order_slots, order_tokens, order_with_first, order_with_last,
    BackendKind, BootBackend, BootState, Operation,
};
use crate::env::grub_store::GrubEnvStore;
use crate::env::EnvVars;
use crate::{Error, Result, Slot, SlotState};

pub const ORDER: &str = "ORDER";

/// `A_OK` / `B_OK`.
pub fn ok_var(slot: Slot) -> String {
    format!("{}_OK", slot.name())
}

/// `A_TRY` / `B_TRY`.
pub fn try_var(slot: Slot) -> String {
    format!("{}_TRY", slot.name())
}

fn flag(vars: &EnvVars, name: &str) -> u64 {
    vars.get_str(name).map_or(0, |v| c_unsigned(&v, 10))
}

/// Derives the boot state from the variables (pure; table-tested).
pub fn state_from_vars(vars: &EnvVars) -> BootState {
    let tokens = order_tokens(vars.get_str(ORDER).as_deref());
    let order = order_slots(&tokens);
    let ok = |slot: Slot| flag(vars, &ok_var(slot)) == 1;
    let tried = |slot: Slot| flag(vars, &try_var(slot)) != 0;
    let state = |slot: Slot| {
        if !order.contains(&slot) || !ok(slot) {
            SlotState::Bad
        } else if tried(slot) {
            SlotState::Trial { attempts_left: 0 }
        } else {
            SlotState::Good
        }
    };
    let next = order.iter().copied().find(|&slot| ok(slot) && !tried(slot));
    let shown = [
        ORDER.to_owned(),
        ok_var(Slot::A),
        try_var(Slot::A),
        ok_var(Slot::B),
        try_var(Slot::B),
    ];
    BootState::new(&order, next, state, vars, &shown)
}

/// Applies `op` to the variables (pure; table-tested).
pub fn apply_to_vars(vars: &mut EnvVars, op: Operation) -> Result<()> {
    let tokens = order_tokens(vars.get_str(ORDER).as_deref());
    match op {
        Operation::BeginTrial { attempts, .. } if attempts != 1 => {
            return Err(Error::InvalidAttempts {
                backend: "grub",
                attempts,
                reason: "GRUB's try flag allows exactly one trial boot",
            })
        }
        Operation::BeginTrial { slot, .. } | Operation::SetPrimary(slot) => {
            vars.set(ok_var(slot), "1");
            vars.set(try_var(slot), "0");
            vars.set(ORDER, order_with_first(&tokens, slot));
        }
        Operation::MarkGood(slot) => {
            vars.set(ok_var(slot), "1");
            vars.set(try_var(slot), "0");
            vars.set(ORDER, order_including(&tokens, slot));
        }
        Operation::MarkBad(slot) => {
            vars.set(ok_var(slot), "0");
            vars.set(try_var(slot), "0");
            vars.set(ORDER, order_with_last(&tokens, slot));
        }
    }
    Ok(())
}

/// The GRUB backend over one grubenv file.
pub struct GrubBackend {
    store: GrubEnvStore,
}

impl GrubBackend {
    pub fn open(grubenv: &Path) -> Self {
        Self {
            store: GrubEnvStore::new(grubenv),
        }
    }
}

impl BootBackend for GrubBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Grub
    }

    fn location(&self) -> String {
        self.store.path().display().to_string()
    }

    fn read_state(&self) -> Result<BootState> {
        Ok(state_from_vars(&self.store.load()?.vars))
    }

    fn apply(&self, op: Operation) -> Result<()> {
        let loaded = self.store.load()?;
        let mut vars = loaded.vars.clone();
        apply_to_vars(&mut vars, op)?;
        self.store.store(&loaded, &vars)
    }
}
