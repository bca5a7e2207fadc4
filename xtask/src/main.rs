//! `xtask`: tasks of the packaging, not of any robot or server. It renders man pages and shell
//! completions from the binaries' own clap definitions, so `--help`, `man` and tab completion
//! cannot disagree, while the robot binaries carry no man-page or completion generator.
//!
//! `cargo run -p xtask -- assets --out DIR` writes:
//!   DIR/man/NAME/NAME.1 and DIR/man/NAME/NAME-SUBCOMMAND.1 (roff, a page per subcommand)
//!   DIR/completions/bash/NAME, DIR/completions/zsh/_NAME, DIR/completions/fish/NAME.fish
//! with the names Debian's bash-completion, zsh and fish look for.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use clap_complete::Shell;
use xtask::{binaries, page_names};

#[derive(Parser)]
#[command(name = "xtask", about = "Packaging tasks of the Rota workspace")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Write man pages and bash, zsh and fish completions of the Rota binaries.
    Assets {
        /// Directory to write man/ and completions/ into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Only this binary (repeatable). Default: every Rota binary.
        #[arg(long = "bin", value_name = "NAME")]
        bins: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Assets { out, bins } => {
            let all = binaries();
            let unknown: Vec<&String> = bins
                .iter()
                .filter(|b| !all.iter().any(|c| c.get_name() == b.as_str()))
                .collect();
            if !unknown.is_empty() {
                bail!("unknown binaries {unknown:?}");
            }
            let mut pages = BTreeSet::new();
            for command in &all {
                for page in page_names(command, None) {
                    if !pages.insert(page.clone()) {
                        bail!("two binaries would write the man page {page}.1");
                    }
                }
            }
            for command in all {
                if bins.is_empty() || bins.iter().any(|b| b == command.get_name()) {
                    write_assets(command, &out)?;
                }
            }
            Ok(())
        }
    }
}

fn write_assets(command: clap::Command, out: &Path) -> Result<()> {
    let name = command.get_name().to_string();
    // One directory per binary: `rota-*.1` would also match rota-bootctl's pages.
    let man = out.join("man").join(&name);
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    clap_mangen::generate_to(command.clone(), &man)
        .with_context(|| format!("writing the man pages of {name} into {}", man.display()))?;
    for (shell, file) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let dir = out.join("completions").join(shell.to_string());
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), &name, &mut script);
        let path = dir.join(file);
        fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("xtask: man pages and completions of {name}");
    Ok(())
}
