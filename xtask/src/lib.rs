//! What `xtask` and its tests share: the binaries the packages ship, by their clap definitions.

use clap::CommandFactory;

/// Every binary the packages ship, with the clap definition it parses with.
pub fn binaries() -> Vec<clap::Command> {
    vec![
        rota_updater::cli::Cli::command(),
        rota_bootctl::args::Cli::command(),
        rota_server::config::Args::command(),
        rota_cli::cli::Cli::command(),
        rota_image::cli::Cli::command(),
    ]
}

/// The pages clap_mangen writes for `command`: NAME, then NAME-SUB for each visible
/// subcommand, recursively. `rota` subcommands and other binaries share one namespace
/// (`rota-server` the binary, `rota server` a subcommand), so a clash must be caught.
pub fn page_names(command: &clap::Command, parent: Option<&str>) -> Vec<String> {
    let name = match parent {
        Some(parent) => format!("{parent}-{}", command.get_name()),
        None => command.get_name().to_string(),
    };
    let mut names = vec![name.clone()];
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        names.extend(page_names(sub, Some(&name)));
    }
    names
}
