//! `xtask assets` against the real tools that read its output: bash parses every completion
//! script, groff renders every man page without a warning, and `man -l` shows each binary's
//! subcommands on its top-level page.

use std::path::Path;
use std::process::{Command, Output};

use xtask::binaries;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    out
}

fn generate(out: &Path) {
    run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["assets", "--out"])
        .arg(out));
}

#[test]
fn every_binary_gets_a_man_page_per_subcommand_and_three_completions() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    for command in binaries() {
        let name = command.get_name();
        for file in [
            format!("man/{name}/{name}.1"),
            format!("completions/bash/{name}"),
            format!("completions/zsh/_{name}"),
            format!("completions/fish/{name}.fish"),
        ] {
            let path = dir.path().join(&file);
            assert!(
                path.metadata().is_ok_and(|m| m.len() > 0),
                "{file} missing or empty"
            );
        }
        for sub in command.get_subcommands() {
            let page = dir
                .path()
                .join(format!("man/{name}/{name}-{}.1", sub.get_name()));
            assert!(page.is_file(), "{} missing", page.display());
        }
    }
}

#[test]
fn bash_parses_the_completions() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    for command in binaries() {
        let script = dir.path().join("completions/bash").join(command.get_name());
        run(Command::new("bash").arg("-n").arg(&script));
        // Sourcing registers the completion function for the binary's name.
        let registered = run(Command::new("bash").arg("-c").arg(format!(
            "source {} && complete -p {}",
            script.display(),
            command.get_name()
        )));
        assert!(
            String::from_utf8_lossy(&registered.stdout).contains(command.get_name()),
            "{registered:?}"
        );
    }
}

#[test]
fn man_pages_render_and_name_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let pages = std::fs::read_dir(dir.path().join("man"))
        .unwrap()
        .flat_map(|bin| std::fs::read_dir(bin.unwrap().path()).unwrap());
    for page in pages {
        let page = page.unwrap().path();
        // -ww: every warning; -z: no output, only the diagnostics.
        let out = run(Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&page));
        assert!(
            out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for command in binaries() {
        let name = command.get_name();
        let out = run(Command::new("man")
            .args(["-P", "cat", "-l"])
            .arg(dir.path().join(format!("man/{name}/{name}.1")))
            .env("MANWIDTH", "120"));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("SYNOPSIS"), "{name}: {text}");
        for sub in command.get_subcommands() {
            let reference = format!("{name}-{}(1)", sub.get_name());
            assert!(
                text.contains(&reference),
                "{name}.1 lacks {reference}:\n{text}"
            );
        }
    }
}
