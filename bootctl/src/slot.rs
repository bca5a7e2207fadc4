//! Slots and their states.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// One of the two root partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The slot that is not `self`.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The boot name used in `BOOT_ORDER`/`ORDER` and in variable names (`BOOT_A_LEFT`, `A_OK`).
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Slot {
    type Err = Error;

    /// Accepts `A`/`B` in either case: boot names are upper case, people type lower case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            other => Err(Error::UnknownSlot(other.to_owned())),
        }
    }
}

/// What the bootloader will do with a slot, as read from the boot environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SlotState {
    /// Bootable and confirmed.
    Good,
    /// Not bootable: marked bad, or missing from the boot order.
    Bad,
    /// Bootable only `attempts_left` more times unless marked good; `0` means its attempts are
    /// used up (it may still be the running slot, waiting for its health check).
    Trial { attempts_left: u32 },
}

/// `1 attempt`, `3 attempts`.
pub fn attempts_text(n: u32) -> String {
    format!("{n} attempt{}", if n == 1 { "" } else { "s" })
}

impl SlotState {
    /// The state in words. The boot scripts count every boot down, a good slot's too, so the
    /// booted slot's lowered counter means "not confirmed yet" (rota-commit.service confirms
    /// it each boot), not that it is on trial: a committed slot must not read as a trial.
    pub fn describe(self, booted: bool) -> String {
        match self {
            SlotState::Good => "good".to_owned(),
            SlotState::Bad => "bad".to_owned(),
            SlotState::Trial { attempts_left } if booted => format!(
                "booted, not confirmed yet ({} left)",
                attempts_text(attempts_left)
            ),
            SlotState::Trial { attempts_left } => {
                format!("trial ({} left)", attempts_text(attempts_left))
            }
        }
    }
}
