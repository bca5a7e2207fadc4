//! `rota`: see `rota --help`.

use std::process::ExitCode;

use clap::Parser;
use rota_cli::output::StdoutClosed;
use rota_cli::{ErrorReport, EXIT_ERROR, EXIT_USAGE};

fn main() -> ExitCode {
    // Before clap has read it: usage errors are JSON too under --json.
    let json = std::env::args_os()
        .skip(1)
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json");
    let cli = match rota_cli::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err, json),
    };
    match rota_cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) if err.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(err) => {
            let report = ErrorReport::of(&err, EXIT_ERROR);
            report.print(json);
            ExitCode::from(report.exit_code)
        }
    }
}

/// `--help` and `--version` print and exit 0 (quietly when stdout is closed); a bad command
/// line exits 2, as a JSON error under --json.
fn usage_error(err: clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational || !json {
        // clap writes help to stdout and errors to stderr; a closed pipe is not an error.
        let _ = err.print();
        return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(EXIT_USAGE));
    }
    let text = err.to_string();
    let message = text
        .lines()
        .next()
        .unwrap_or("bad command line")
        .trim_start_matches("error: ")
        .to_string();
    ErrorReport {
        message,
        status: None,
        code: "usage".into(),
        exit_code: EXIT_USAGE,
    }
    .print(true);
    ExitCode::from(EXIT_USAGE)
}
