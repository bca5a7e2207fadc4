//! Command-line interface of `rota-bootctl`.

use anyhow::{Context, Result};
use clap::Parser;
use rota_bootctl::args::{BackendArg, Cli, Command};
use rota_bootctl::config::DEFAULT_CONFIG_PATH;
use rota_bootctl::{BackendKind, BootConfig, BootCtl, BootStatus, Slot};

const EXIT_OK: i32 = 0;
const EXIT_ERROR: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_CORRUPT_ENV: i32 = 3;
const EXIT_NO_BOOTED_SLOT: i32 = 4;

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
                format!(
                    "slot {} boots next ({})",
                    slot.0,
                    rota_bootctl::slot::attempts_text(attempts)
                ),
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
        out += &format!("slot {}:  {}\n", slot.slot, slot.state.describe(booted));
    }
    for (name, value) in &status.env {
        out += &format!("  {name}={value}\n");
    }
    out
}
