//! Helpers shared by the integration tests: run the real `rota-image` binary and build small
//! fixture trees.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// The fixed epoch the reproducibility tests build with.
pub const EPOCH: &str = "1700000000";

/// `rota-image ARGS` with SOURCE_DATE_EPOCH set, in `dir`.
pub fn rota_image(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rota-image"))
        .args(args)
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .expect("rota-image runs")
}

/// Runs and asserts success; returns stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = rota_image(dir, args);
    assert!(
        out.status.success(),
        "rota-image {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs and asserts the exit code; returns stdout + stderr.
pub fn fails_with(dir: &Path, code: i32, args: &[&str]) -> String {
    let out = rota_image(dir, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(code), "rota-image {args:?}: {text}");
    text
}

/// Runs any tool and asserts success; returns stdout.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small root file system tree: directories, text files, a 300 KiB binary-ish file, a setuid
/// file, a symlink, a hard link, a file with a space in its name, a file owned by uid 1000.
pub fn make_tree(root: &Path) {
    for dir in ["etc", "usr/bin", "var/lib/app", "boot"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("etc/hostname"), "robot-7\n").unwrap();
    fs::write(root.join("etc/os-release"), "ID=rota\nVERSION_ID=1.2.0\n").unwrap();
    let blob: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 % 64)
        .collect();
    fs::write(root.join("usr/bin/robotd"), &blob).unwrap();
    fs::set_permissions(
        root.join("usr/bin/robotd"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::os::unix::fs::symlink("robotd", root.join("usr/bin/robot")).unwrap();
    fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname.link")).unwrap();
    fs::write(root.join("var/lib/app/state file"), "x").unwrap();
    fs::write(root.join("var/lib/app/owned"), "owned by 1000").unwrap();
    std::os::unix::fs::lchown(root.join("var/lib/app/owned"), Some(1000), Some(1000)).unwrap();
}
