//! `rota-image`: parses the command line and runs one subcommand (see `rota_image::commands`).

use clap::Parser;
use rota_image::cli::{Cli, Command};
use rota_image::commands;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Rootfs(args) => commands::rootfs(args),
        Command::Golden(args) => commands::golden(args),
        Command::Flash(args) => commands::flash(args),
        Command::Keygen(args) => commands::keygen(args),
        Command::Bundle(args) => commands::bundle(args),
        Command::Inspect(args) => commands::inspect(args),
        Command::Verify(args) => commands::verify(args),
        Command::Delta(args) => commands::delta(args),
        Command::App(args) => commands::app(args),
    };
    result.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}
