//! The command line of `rota-bootctl`, as clap reads it. It lives in the library so that tools
//! other than the binary (the packaging's man pages and shell completions) see the same
//! definition; the binary's `cli.rs` runs it.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{BootCtl, Slot};

#[derive(Parser)]
#[command(
    name = "rota-bootctl",
    version,
    about = "Inspect and change which A/B slot the bootloader boots (RAUC-compatible U-Boot and GRUB environments)",
    after_help = "\
Exit codes:
  0  success
  1  error (I/O, configuration, fw_env.config)
  2  usage error (bad arguments, unknown slot, invalid attempts)
  3  the boot environment is corrupt (CRC mismatch, both copies bad, torn grubenv write); nothing was written
  4  the booted slot is needed but the kernel command line has no rota.slot= or rauc.slot=

Config (/etc/rota/bootctl.toml, every key optional):
  backend = \"uboot\" | \"grub\"   uboot_config = PATH   grubenv = PATH
  cmdline = PATH                default_attempts = N (U-Boot, 1..=15, default 3)"
)]
pub struct Cli {
    /// Config file [default: /etc/rota/bootctl.toml; used only if it exists]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Backend, overriding the config [default: from config, else uboot]
    #[arg(long, global = true, value_enum)]
    pub backend: Option<BackendArg>,
    /// fw_env.config locating the U-Boot env; implies --backend uboot [default: /etc/fw_env.config]
    #[arg(long, global = true, value_name = "PATH")]
    pub uboot_config: Option<PathBuf>,
    /// grubenv file; implies --backend grub [default: /boot/efi/grub/grubenv]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        conflicts_with = "uboot_config"
    )]
    pub grubenv: Option<PathBuf>,
    /// File holding the kernel command line [default: /proc/cmdline]
    #[arg(long, global = true, value_name = "PATH")]
    pub cmdline: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BackendArg {
    Uboot,
    Grub,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show the booted slot, the next slot, the boot order and each slot's state
    Status {
        /// Print JSON on stdout instead of text
        #[arg(long)]
        json: bool,
    },
    /// Make SLOT boot next with N attempts (after writing and verifying it)
    Trial {
        /// A or B
        slot: SlotArg,
        /// Boot attempts before falling back [default: 1, one-shot; GRUB allows only 1]
        #[arg(long, default_value_t = 1, value_name = "N")]
        attempts: u32,
    },
    /// Confirm a slot after its health checks passed
    MarkGood {
        /// booted, other, A or B
        #[arg(default_value = "booted")]
        slot: SlotRef,
    },
    /// Make a slot unbootable; the other slot boots next
    MarkBad {
        /// booted, other, A or B
        #[arg(default_value = "booted")]
        slot: SlotRef,
    },
    /// Make SLOT the first, good slot
    SetPrimary {
        /// A or B
        slot: SlotArg,
    },
}

/// A slot named on the command line (clap needs `Clone + FromStr<Err: Display>`).
#[derive(Clone, Copy)]
pub struct SlotArg(pub Slot);

impl FromStr for SlotArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(SlotArg)
            .map_err(|e: crate::Error| e.to_string())
    }
}

/// `booted`, `other` (than booted), or a slot name.
#[derive(Clone, Copy)]
pub enum SlotRef {
    Booted,
    Other,
    Named(Slot),
}

impl FromStr for SlotRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "booted" => Ok(SlotRef::Booted),
            "other" => Ok(SlotRef::Other),
            _ => s
                .parse()
                .map(SlotRef::Named)
                .map_err(|_| format!("unknown slot {s:?} (expected booted, other, A or B)")),
        }
    }
}

impl SlotRef {
    pub fn resolve(self, ctl: &BootCtl) -> crate::Result<Slot> {
        match self {
            SlotRef::Booted => ctl.booted_slot(),
            SlotRef::Other => Ok(ctl.booted_slot()?.other()),
            SlotRef::Named(slot) => Ok(slot),
        }
    }
}
