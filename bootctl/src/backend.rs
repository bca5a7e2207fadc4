//! The backend trait: how a bootloader's environment maps to slot states and operations.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::env::EnvVars;
use crate::{Result, Slot, SlotState};

/// Which bootloader environment a robot uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// U-Boot binary environment located through `fw_env.config`.
    Uboot,
    /// GRUB's `grubenv` block.
    Grub,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Uboot => "uboot",
            BackendKind::Grub => "grub",
        })
    }
}

/// A change to the boot selection. Each is applied as one read-modify-write of the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Put `slot` first with `attempts` boot attempts (the install path's "one-shot" trial).
    BeginTrial { slot: Slot, attempts: u32 },
    /// Confirm `slot`: give it its normal attempts (U-Boot) or clear its try flag (GRUB).
    MarkGood(Slot),
    /// Make `slot` unbootable; the other slot becomes first.
    MarkBad(Slot),
    /// Put `slot` first as a good slot, with the normal attempts.
    SetPrimary(Slot),
}

/// What a backend reads from its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootState {
    /// Slots in boot order, as the boot script will walk them.
    pub order: Vec<Slot>,
    /// The first slot in `order` the boot script will accept (RAUC's "primary"); `None` when
    /// no slot qualifies, in which case the boot script resets the counters.
    pub next: Option<Slot>,
    pub a: SlotState,
    pub b: SlotState,
    /// The boot-selection variables as stored (absent ones omitted).
    pub vars: BTreeMap<String, String>,
}

impl BootState {
    /// Builds a state from the slot order, the first bootable slot, a per-slot state function
    /// and the names of the variables to show.
    pub(crate) fn new(
        order: &[Slot],
        next: Option<Slot>,
        state: impl Fn(Slot) -> SlotState,
        env: &EnvVars,
        shown: &[String],
    ) -> Self {
        let vars = shown
            .iter()
            .filter_map(|name| env.get_str(name).map(|value| (name.clone(), value)))
            .collect();
        BootState {
            next,
            a: state(Slot::A),
            b: state(Slot::B),
            order: order.to_vec(),
            vars,
        }
    }

    pub fn state(&self, slot: Slot) -> SlotState {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }
}

/// A bootloader environment that Rota can read and change.
pub trait BootBackend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// Where the environment lives (for messages).
    fn location(&self) -> String;
    fn read_state(&self) -> Result<BootState>;
    /// Applies `op` durably; every variable the operation does not own is preserved.
    fn apply(&self, op: Operation) -> Result<()>;
}

/// Boot order tokens (`"B A"`), keeping names Rota does not know (a RAUC rescue slot `R`).
pub(crate) fn order_tokens(value: Option<&str>) -> Vec<String> {
    let tokens: Vec<String> = value
        .unwrap_or("")
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        // Both boot scripts (and RAUC's) use "A B" when the order is unset or empty.
        vec!["A".to_owned(), "B".to_owned()]
    } else {
        tokens
    }
}

/// The known slots in `tokens`, first occurrence only.
pub(crate) fn order_slots(tokens: &[String]) -> Vec<Slot> {
    let mut slots = Vec::new();
    for token in tokens {
        if let Ok(slot) = token.parse::<Slot>() {
            if token == slot.name() && !slots.contains(&slot) {
                slots.push(slot);
            }
        }
    }
    slots
}

/// `slot` first, then the other tokens in their order (RAUC's set_primary).
pub(crate) fn order_with_first(tokens: &[String], slot: Slot) -> String {
    let mut out = vec![slot.name()];
    out.extend(
        tokens
            .iter()
            .map(String::as_str)
            .filter(|t| *t != slot.name()),
    );
    out.join(" ")
}

/// The tokens without `slot`.
pub(crate) fn order_without(tokens: &[String], slot: Slot) -> String {
    tokens
        .iter()
        .map(String::as_str)
        .filter(|t| *t != slot.name())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `slot` appended if missing, otherwise unchanged.
pub(crate) fn order_including(tokens: &[String], slot: Slot) -> String {
    let mut out: Vec<&str> = tokens.iter().map(String::as_str).collect();
    if !out.contains(&slot.name()) {
        out.push(slot.name());
    }
    out.join(" ")
}

/// `slot` moved to the end.
pub(crate) fn order_with_last(tokens: &[String], slot: Slot) -> String {
    let mut out: Vec<&str> = tokens
        .iter()
        .map(String::as_str)
        .filter(|t| *t != slot.name())
        .collect();
    out.push(slot.name());
    out.join(" ")
}

/// Reads an unsigned number the way C's `strtoull(s, NULL, radix)` does: leading digits only,
/// `0` when there are none. Boot scripts and RAUC read counters this way, so a garbled value
/// means "no attempts" to them, and to Rota.
pub(crate) fn c_unsigned(value: &str, radix: u32) -> u64 {
    let s = value.trim_start();
    let s = if radix == 16 {
        s.strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s)
    } else {
        s
    };
    let digits: String = s.chars().take_while(|c| c.is_digit(radix)).collect();
    u64::from_str_radix(&digits, radix).unwrap_or(if digits.is_empty() { 0 } else { u64::MAX })
}
