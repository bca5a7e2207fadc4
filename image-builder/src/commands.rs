//! One function per subcommand: turns parsed arguments into a library call, prints the result
//! (stdout) and messages (stderr), and picks the exit code.

use crate::cli::{FlashArgs, GoldenArgs, RootfsArgs};
use crate::flash::{self, FlashError, FlashOptions, TargetKind};
use crate::golden::{self, GoldenOptions};
use crate::progress::Progress;
use crate::rootfs::{self, RootfsOptions};
use crate::size::human;
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

/// `SOURCE_DATE_EPOCH` from the environment, if set; an unparsable value is an error rather
/// than a silently irreproducible build.
pub fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")),
        Err(_) => Ok(None),
    }
}

fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `rota-image rootfs`
pub fn rootfs(args: RootfsArgs) -> Result<ExitCode> {
    let options = RootfsOptions {
        source: args.source,
        output: args.output,
        fs: args.fs,
        size: args.size,
        label: args.label,
        all_root: args.all_root,
        source_date_epoch: source_date_epoch()?,
    };
    let report = rootfs::build(&options).with_context(|| {
        format!(
            "cannot build {} from {}",
            options.output.display(),
            options.source.display()
        )
    })?;
    eprintln!(
        "rootfs: {} {:?} image, {} ({} entries, {} of files), uuid {}, time {}",
        human(report.size),
        report.fs,
        report.output.display(),
        report.entries,
        human(report.content_bytes),
        report.uuid,
        report.source_date_epoch
    );
    if args.json {
        print_json(&report)?;
    } else {
        println!("{}", report.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `rota-image golden`
pub fn golden(args: GoldenArgs) -> Result<ExitCode> {
    let options = GoldenOptions {
        layout: args.layout,
        output: args.output,
        format: args.format,
        source_date_epoch: source_date_epoch()?,
    };
    let report = golden::build(&options, &mut |step| eprintln!("golden: {step}"))
        .with_context(|| format!("cannot build the golden image {}", options.output.display()))?;
    for part in &report.partitions {
        eprintln!(
            "golden: {:<9} at {:>10} size {:>10}",
            part.name,
            human(part.offset),
            human(part.size)
        );
    }
    if args.json {
        print_json(&report)?;
    } else {
        println!("{}", report.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `rota-image flash`
pub fn flash(args: FlashArgs) -> Result<ExitCode> {
    let checked = flash::check_target(&args.image, &args.target)?;
    if checked.kind == TargetKind::BlockDevice && !args.yes {
        confirm(&format!(
            "Write {} to {}? Everything on it will be lost.",
            args.image.display(),
            checked.description
        ))?;
    }
    let options = FlashOptions {
        image: args.image,
        target: args.target,
        verify: args.verify,
    };
    let size = std::fs::metadata(&options.image)
        .with_context(|| format!("cannot read the image {}", options.image.display()))?
        .len();
    let mut progress = Progress::new("flash", size);
    let report = flash::flash(&options, checked.kind, &mut progress)?;
    eprintln!(
        "flash: wrote {} of {} ({} mapped) to {} in {:.1} s{}",
        human(report.written_bytes),
        human(report.image_size),
        human(report.mapped_bytes),
        report.target.display(),
        report.seconds,
        if report.verified { ", verified" } else { "" }
    );
    if args.json {
        print_json(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal; without one, refuses (the caller must pass --yes).
fn confirm(question: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!("{question}\nstdin is not a terminal: pass --yes to confirm");
    }
    eprint!("{question} Type yes to continue: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        return Err(FlashError::NotConfirmed {
            target: question.into(),
        }
        .into());
    }
    Ok(())
}
