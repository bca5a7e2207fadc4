//! Command-line interface of `rota-bootctl`.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rota_bootctl::config::DEFAULT_CONFIG_PATH;
use rota_bootctl::{BackendKind, BootConfig, BootCtl, BootStatus, Slot, SlotState};

const EXIT_OK: i32 = 0;
const EXIT_ERROR: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_CORRUPT_ENV: i32 = 3;
const EXIT_NO_BOOTED_SLOT: i32 = 4;

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
struct Cli {
    /// Config file [default: /etc/rota/bootctl.toml; used only if it exists]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Backend, overriding the config [default: from config, else uboot]
    #[arg(long, global = true, value_enum)]
    backend: Option<BackendArg>,
    /// fw_env.config locating the U-Boot env; implies --backend uboot [default: /etc/fw_env.config]
    #[arg(long, global = true, value_name = "PATH")]
    uboot_config: Option<PathBuf>,
    /// grubenv file; implies --backend grub [default: /boot/efi/grub/grubenv]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        conflicts_with = "uboot_config"
    )]
    grubenv: Option<PathBuf>,
    /// File holding the kernel command line [default: /proc/cmdline]
    #[arg(long, global = true, value_name = "PATH")]
    cmdline: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Uboot,
    Grub,
}

#[derive(Subcommand)]
enum Command {
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
struct SlotArg(Slot);

impl FromStr for SlotArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(SlotArg)
            .map_err(|e: rota_bootctl::Error| e.to_string())
    }
}

/// `booted`, `other` (than booted), or a slot name.
#[derive(Clone, Copy)]
enum SlotRef {
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
    fn resolve(self, ctl: &BootCtl) -> rota_bootctl::Result<Slot> {
        match self {
            SlotRef::Booted => ctl.booted_slot(),
            SlotRef::Other => Ok(ctl.booted_slot()?.other()),
            SlotRef::Named(slot) => Ok(slot),
        }
    }
}

/// Runs the CLI and returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    match execute(cli) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("rota-bootctl: {e:#}");
            exit_code(&e)
        }
    }
}

fn exit_code(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<rota_bootctl::Error>() {
        Some(err) if err.is_corrupt_env() => EXIT_CORRUPT_ENV,
        Some(rota_bootctl::Error::NoSlotOnCmdline { .. }) => EXIT_NO_BOOTED_SLOT,
        Some(rota_bootctl::Error::UnknownSlot(_) | rota_bootctl::Error::InvalidAttempts { .. }) => {
            EXIT_USAGE
        }
        _ => EXIT_ERROR,
    }
}

fn load_config(cli: &Cli) -> Result<BootConfig> {
    let mut config = match &cli.config {
        Some(path) => BootConfig::load(path)?,
        None => BootConfig::load_or_default(DEFAULT_CONFIG_PATH)?,
    };
    if let Some(backend) = cli.backend {
        config.backend = match backend {
            BackendArg::Uboot => BackendKind::Uboot,
            BackendArg::Grub => BackendKind::Grub,
        };
    }
    if let Some(path) = &cli.uboot_config {
        config.backend = BackendKind::Uboot;
        config.uboot_config = path.clone();
    }
    if let Some(path) = &cli.grubenv {
        config.backend = BackendKind::Grub;
        config.grubenv = path.clone();
    }
    if let Some(path) = &cli.cmdline {
        config.cmdline = path.clone();
    }
    Ok(config)
}

fn execute(cli: Cli) -> Result<()> {
    let config = load_config(&cli)?;
    let ctl = BootCtl::from_config(&config)
        .with_context(|| format!("opening the {} boot environment", config.backend))?;
    let (slot, action) = match cli.command {
        Command::Status { json } => {
            let status = ctl.status().context("reading the boot status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render(&status));
            }
            return Ok(());
        }
        Command::Trial { slot, attempts } => {
            ctl.begin_trial(slot.0, attempts)
                .with_context(|| format!("starting a trial of slot {}", slot.0))?;
            (
                slot.0,
                format!("slot {} boots next ({attempts} attempt(s))", slot.0),
            )
        }
        Command::MarkGood { slot } => {
            let slot = slot.resolve(&ctl)?;
            ctl.mark_good(slot)
                .with_context(|| format!("marking slot {slot} good"))?;
            (slot, format!("slot {slot} marked good"))
        }
        Command::MarkBad { slot } => {
            let slot = slot.resolve(&ctl)?;
            ctl.mark_bad(slot)
                .with_context(|| format!("marking slot {slot} bad"))?;
            (slot, format!("slot {slot} marked bad"))
        }
        Command::SetPrimary { slot } => {
            ctl.set_primary(slot.0)
                .with_context(|| format!("making slot {} primary", slot.0))?;
            (slot.0, format!("slot {} is primary", slot.0))
        }
    };
    // The changed slot goes to stdout for scripts; the human summary to stderr.
    println!("{slot}");
    eprintln!("rota-bootctl: {action}");
    Ok(())
}

/// A slot's state in words. The boot scripts count every boot down, a good slot's too, so the
/// booted slot's lowered counter means "not confirmed yet" (rota-commit.service confirms it
/// each boot), not that it is on trial: a committed slot must not read as a trial.
fn describe(state: SlotState, booted: bool) -> String {
    let attempts = |n: u32| format!("{n} attempt{} left", if n == 1 { "" } else { "s" });
    match state {
        SlotState::Good => "good".to_owned(),
        SlotState::Bad => "bad".to_owned(),
        SlotState::Trial { attempts_left } if booted => {
            format!("booted, not confirmed yet ({})", attempts(attempts_left))
        }
        SlotState::Trial { attempts_left } => format!("trial ({})", attempts(attempts_left)),
    }
}

fn render(status: &BootStatus) -> String {
    let slot_or_none = |s: Option<Slot>| s.map_or("none".to_owned(), |s| s.to_string());
    let order: Vec<String> = status.order.iter().map(Slot::to_string).collect();
    let mut out = format!(
        "backend: {} ({})\nbooted:  {}\nnext:    {}\norder:   {}\n",
        status.backend,
        status.location,
        slot_or_none(status.booted),
        slot_or_none(status.next),
        order.join(" "),
    );
    for slot in &status.slots {
        let booted = status.booted == Some(slot.slot);
        out += &format!("slot {}:  {}\n", slot.slot, describe(slot.state, booted));
    }
    for (name, value) in &status.env {
        out += &format!("  {name}={value}\n");
    }
    out
}
