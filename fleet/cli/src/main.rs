//! `rota`: see `rota --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = rota_cli::cli::Cli::parse();
    match rota_cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("rota: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
