//! Rota's view of the bootloader: which slot is booted, which boots next, and the state of each
//! slot, kept in the boot environment with RAUC's variable conventions so that existing boot
//! scripts work unchanged.
//!
//! The entry point is [`BootCtl`], built from a [`BootConfig`]:
//!
//! ```no_run
//! use rota_bootctl::{BootConfig, BootCtl, Slot};
//! # fn main() -> rota_bootctl::Result<()> {
//! let config = BootConfig::load("/etc/rota/bootctl.toml")?;
//! let ctl = BootCtl::from_config(&config)?;
//! let booted = ctl.booted_slot()?;
//! ctl.begin_trial(booted.other(), 1)?;
//! # Ok(()) }
//! ```
//!
//! Layers, bottom up: `env::*` parse and serialise the on-disk formats (pure functions over
//! bytes, fuzzed); `env::*_store` do the power-cut-safe I/O; `uboot_backend` and `grub_backend`
//! map RAUC's variables to [`SlotState`]s and back; [`BootCtl`] ties a backend to the kernel
//! command line.

pub mod args;
pub mod backend;
pub mod cmdline;
pub mod config;
mod ctl;
pub mod env;
mod error;
pub mod grub_backend;
pub mod mountinfo;
pub mod slot;
pub mod uboot_backend;

pub use backend::{BackendKind, BootBackend, Operation};
pub use config::BootConfig;
pub use ctl::{BootCtl, BootStatus, SlotStatus};
pub use error::{Error, Result};
pub use slot::{Slot, SlotState};
