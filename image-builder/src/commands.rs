//! One function per subcommand: turns parsed arguments into a library call, prints the result
//! (stdout) and messages (stderr), and picks the exit code.

use crate::app_cmd::{self, AppOptions};
use crate::bundle_cmd::{self, BundleOptions};
use crate::cli::{
    AppArgs, BundleArgs, DeltaArgs, FlashArgs, GoldenArgs, InspectArgs, KeygenArgs, ReleaseArgs,
    RootfsArgs, VerifyArgs,
};
use crate::delta_cmd::{self, DeltaOptions};
use crate::flash::{self, FlashError, FlashOptions, TargetKind};
use crate::golden::{self, GoldenOptions};
use crate::inspect::{self, SignatureStatus};
use crate::keys;
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

/// The build time: `SOURCE_DATE_EPOCH`, else now.
fn build_time() -> Result<u64> {
    Ok(match source_date_epoch()? {
        Some(epoch) => u64::try_from(epoch).context("SOURCE_DATE_EPOCH is before 1970")?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    })
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
        confirm(
            &args.target,
            &format!(
                "Write {} to {}? Everything on it will be lost.",
                args.image.display(),
                checked.description
            ),
        )?;
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
fn confirm(target: &std::path::Path, question: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!(
            "{question}\nstdin is not a terminal: pass --yes to write {}",
            target.display()
        );
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

/// `rota-image keygen`
pub fn keygen(args: KeygenArgs) -> Result<ExitCode> {
    let key = keys::generate(&args.out).context("cannot make a new key")?;
    eprintln!(
        "keygen: secret key {} (keep it private), public key {}",
        key.secret_path.display(),
        key.public_path.display()
    );
    if args.json {
        print_json(&key)?;
    } else {
        println!("{}", key.key_id);
    }
    Ok(ExitCode::SUCCESS)
}

/// The bundle options a release's arguments give; images and compression are the caller's.
fn bundle_options(
    release: ReleaseArgs,
    zstd_window: u32,
    chunk_size: u64,
) -> Result<BundleOptions> {
    Ok(BundleOptions {
        compatible: release.compatible,
        version: release.version,
        keys: release.keys,
        images: Vec::new(),
        zstd_level: None,
        zstd_window,
        chunk_size,
        security_version: release.security_version,
        git_commit: release.git_commit,
        git_branch: release.git_branch,
        description: release.description,
        build_time: build_time()?,
        output: release.output,
        app: None,
    })
}

/// `rota-image bundle`
pub fn bundle(args: BundleArgs) -> Result<ExitCode> {
    let json = args.release.json;
    let mut options = bundle_options(args.release, args.zstd_window, args.chunk_size)?;
    options.images = args.images;
    options.zstd_level = args.zstd.then_some(args.zstd_level);
    let summary = bundle_cmd::build(&options)
        .with_context(|| format!("cannot build the bundle {}", options.output.display()))?;
    let signed_by: Vec<String> = summary.signed_by.iter().map(|id| id.to_string()).collect();
    eprintln!(
        "bundle: {} {} for {}, {} in {} image(s), signed by {}",
        options.output.display(),
        summary.manifest.version,
        summary.manifest.compatible,
        human(summary.bundle_length),
        summary.manifest.images.len(),
        signed_by.join(", ")
    );
    if json {
        print_json(&serde_json::json!({
            "bundle": options.output,
            "bundle_length": summary.bundle_length,
            "signed_by": signed_by,
            "manifest": inspect::ManifestView::from(&summary.manifest),
        }))?;
    } else {
        println!("{}", options.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `rota-image app`
pub fn app(args: AppArgs) -> Result<ExitCode> {
    let json = args.release.json;
    let mut bundle = bundle_options(args.release, args.zstd_window, args.chunk_size)?;
    bundle.zstd_level = Some(args.zstd_level);
    let options = AppOptions {
        dir: args.dir,
        spec: args.spec,
        bundle,
    };
    let built = app_cmd::build(&options).with_context(|| {
        format!(
            "cannot build the app release {} from {}",
            options.bundle.output.display(),
            options.dir.display()
        )
    })?;
    let summary = &built.summary;
    let signed_by: Vec<String> = summary.signed_by.iter().map(|id| id.to_string()).collect();
    eprintln!(
        "app: {} {} {} for {}: {} entries, {} of files, bundle {}, signed by {}",
        options.bundle.output.display(),
        built.name,
        summary.manifest.version,
        summary.manifest.compatible,
        built.pack.entries,
        human(built.pack.file_bytes),
        human(summary.bundle_length),
        signed_by.join(", ")
    );
    if json {
        print_json(&serde_json::json!({
            "bundle": options.bundle.output,
            "app": built.name,
            "entries": built.pack.entries,
            "file_bytes": built.pack.file_bytes,
            "bundle_length": summary.bundle_length,
            "signed_by": signed_by,
            "manifest": inspect::ManifestView::from(&summary.manifest),
        }))?;
    } else {
        println!("{}", options.bundle.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `rota-image inspect`
pub fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let keyring = args
        .keyring
        .as_deref()
        .map(inspect::load_keyring)
        .transpose()?;
    let found = inspect::inspect(&args.bundle, keyring.as_ref())?;
    if args.json {
        print_json(&found)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "bundle:     {} ({})",
        found.bundle.display(),
        human(found.file_size)
    );
    let status = match found.signature {
        SignatureStatus::Verified => "verified",
        SignatureStatus::Invalid => "INVALID",
        SignatureStatus::NotChecked => "not checked (no --keyring)",
    };
    println!(
        "signature:  {status}, key ids: {}",
        found.signed_by.join(", ")
    );
    if let Some(reason) = &found.reason {
        println!("note:       {reason}");
    }
    if let Some(manifest) = &found.manifest {
        println!("compatible: {}", manifest.compatible);
        println!(
            "version:    {} (security version {})",
            manifest.version, manifest.security_version
        );
        println!("built:      {}", built_at(manifest.build_time));
        if let Some(commit) = &manifest.git_commit {
            println!(
                "source:     {commit} {}",
                manifest.git_branch.as_deref().unwrap_or("")
            );
        }
        if !manifest.description.is_empty() {
            println!("about:      {}", manifest.description);
        }
        for image in &manifest.images {
            println!(
                "image:      {} ({:?}) {} stored as {} ({}), {} chunks, sha256 {}",
                image.name,
                image.slot_class,
                human(image.size),
                human(image.stored_size),
                match (image.compression, image.prefix_window) {
                    ("zstd", 0) => "zstd".to_owned(),
                    ("zstd", window) => format!("zstd, {} KiB prefixes", window >> 10),
                    _ => "uncompressed".to_owned(),
                },
                image.chunks,
                image.sha256
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit code of `verify` when the bundle is valid / invalid / could not be checked.
pub const VERIFY_VALID: u8 = 0;
pub const VERIFY_INVALID: u8 = 1;
pub const VERIFY_ERROR: u8 = 2;

/// `rota-image verify`: its own exit codes, so scripts can tell a bad bundle from a bad call.
pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let checked = inspect::load_keyring(&args.keyring)
        .and_then(|keyring| inspect::verify(&args.bundle, &keyring, args.full_image_hash));
    let verdict = match checked {
        Ok(verdict) => verdict,
        Err(error) => {
            eprintln!("error: {}", inspect::error_chain(&error));
            return Ok(ExitCode::from(VERIFY_ERROR));
        }
    };
    if args.json {
        print_json(&verdict)?;
    } else if verdict.valid {
        let images: Vec<String> = verdict
            .images
            .iter()
            .map(|i| format!("{} ({}, {} chunks)", i.name, human(i.size), i.chunks))
            .collect();
        println!(
            "VALID: {} signed by {}; {}",
            verdict.bundle.display(),
            verdict.signed_by.join(", "),
            images.join(", ")
        );
    } else {
        println!(
            "INVALID: {}: {}",
            verdict.bundle.display(),
            verdict.reason.as_deref().unwrap_or("unknown")
        );
    }
    Ok(ExitCode::from(if verdict.valid {
        VERIFY_VALID
    } else {
        VERIFY_INVALID
    }))
}

/// `rota-image delta`
pub fn delta(args: DeltaArgs) -> Result<ExitCode> {
    let options = DeltaOptions {
        from: args.from,
        to: args.to,
        keys: args.keys,
        keyring: args.keyring,
        image: args.image,
        level: args.level,
        output: args.output,
    };
    let summary = delta_cmd::make(&options)
        .with_context(|| format!("cannot make the delta {}", options.output.display()))?;
    eprintln!(
        "delta: {} ({}): {} of {} missing chunks patched, {} instead of {} of chunks",
        options.output.display(),
        human(summary.delta_length),
        summary.patches,
        summary.missing_chunks,
        human(summary.patch_bytes),
        human(summary.missing_stored_bytes)
    );
    if args.json {
        print_json(&serde_json::json!({
            "delta": options.output,
            "summary": summary,
        }))?;
    } else {
        println!("{}", options.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A bundle's build time for people: UTC to the second (the manifest keeps Unix seconds).
fn built_at(unix_seconds: u64) -> String {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|seconds| jiff::Timestamp::from_second(seconds).ok())
        .map_or_else(
            || format!("{unix_seconds} (Unix seconds)"),
            |at| at.to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::built_at;

    #[test]
    fn build_time_reads_as_a_utc_date_not_unix_seconds() {
        assert_eq!(built_at(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(built_at(u64::MAX), format!("{} (Unix seconds)", u64::MAX));
    }
}
