//! `rota-bootctl`: inspect and change which slot boots. The logic lives in the library; this
//! file parses arguments and maps errors to exit codes.

mod cli;

fn main() {
    std::process::exit(cli::run());
}
