//! Bad input: each case fails with a specific error and exit code, and writes nothing.

mod common;

use std::path::Path;

use common::*;

const ENV_SIZE: u64 = 0x2000;

/// Snapshot of every file in `dir`, to prove nothing was written.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

/// Runs rota-bootctl and checks exit code, a stderr fragment and that no file changed.
fn expect_failure(dir: &Path, args: &[&str], code: i32, needle: &str) {
    let before = snapshot(dir);
    let out = run(bootctl(dir).args(args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {needle:?} not in {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{args:?}: nothing on stdout on failure"
    );
    assert_eq!(snapshot(dir), before, "{args:?} wrote something");
}

fn uboot_dir(vars: &str, redundant: bool) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = mkenvimage(dir, "env0", vars, ENV_SIZE, redundant);
    let config = if redundant {
        let b = dir.join("env1");
        std::fs::copy(&a, &b).unwrap();
        write_fw_config(dir, &[(&a, 0, ENV_SIZE), (&b, 0, ENV_SIZE)])
    } else {
        write_fw_config(dir, &[(&a, 0, ENV_SIZE)])
    };
    write_bootctl_config(
        dir,
        &format!("uboot_config = \"{}\"\n", config.display()),
        "A",
    );
    tmp
}

#[test]
fn both_redundant_copies_corrupt() {
    let tmp = uboot_dir("BOOT_ORDER=A B\n", true);
    for name in ["env0", "env1"] {
        let path = tmp.path().join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    expect_failure(
        tmp.path(),
        &["status"],
        3,
        "both copies of the redundant U-Boot env are unusable",
    );
    expect_failure(tmp.path(), &["trial", "B"], 3, "CRC mismatch");
}

#[test]
fn env_written_with_a_larger_size_than_configured() {
    // mkenvimage made a 16 KiB env, fw_env.config says 8 KiB: the CRC cannot match.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = mkenvimage(dir, "env0", "BOOT_ORDER=A B\n", 2 * ENV_SIZE, false);
    let config = write_fw_config(dir, &[(&env, 0, ENV_SIZE)]);
    write_bootctl_config(
        dir,
        &format!("uboot_config = \"{}\"\n", config.display()),
        "A",
    );
    expect_failure(dir, &["mark-good", "A"], 3, "CRC mismatch");
}

#[test]
fn env_that_would_outgrow_its_size() {
    // An env already nearly full: adding BOOT_B_LEFT and a longer BOOT_ORDER does not fit.
    let filler = format!(
        "BOOT_ORDER=A\nbig={}\n",
        "x".repeat(ENV_SIZE as usize - 4 - 14 - 6 - 4)
    );
    let tmp = uboot_dir(&filler, false);
    expect_failure(tmp.path(), &["trial", "B"], 3, "but a copy holds only");
}

#[test]
fn malformed_fw_env_config_reports_the_line() {
    let tmp = uboot_dir("BOOT_ORDER=A B\n", false);
    let config = tmp.path().join("fw_env.config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}{} 0x2000 0x2000x\n",
            tmp.path().join("env0").display()
        ),
    )
    .unwrap();
    expect_failure(
        tmp.path(),
        &["status"],
        1,
        "line 3: env size \"0x2000x\" is not a hex number",
    );
    std::fs::write(&config, "# nothing\n\n").unwrap();
    expect_failure(tmp.path(), &["status"], 1, "no environment entry");
}

#[test]
fn unknown_slot() {
    let tmp = uboot_dir("BOOT_ORDER=A B\n", false);
    expect_failure(tmp.path(), &["trial", "C"], 2, "unknown slot \"C\"");
    expect_failure(
        tmp.path(),
        &["mark-bad", "rescue"],
        2,
        "unknown slot \"rescue\"",
    );
    std::fs::write(tmp.path().join("cmdline"), "root=/dev/sda1 rauc.slot=R\n").unwrap();
    expect_failure(tmp.path(), &["mark-good"], 2, "unknown slot \"R\"");
}

#[test]
fn missing_cmdline_marker() {
    let tmp = uboot_dir("BOOT_ORDER=A B\n", false);
    std::fs::write(tmp.path().join("cmdline"), "root=/dev/sda2 quiet\n").unwrap();
    expect_failure(tmp.path(), &["mark-good"], 4, "no rota.slot= or rauc.slot=");
    expect_failure(
        tmp.path(),
        &["mark-bad", "other"],
        4,
        "no rota.slot= or rauc.slot=",
    );
    // status still works and says so.
    let out = ok(bootctl(tmp.path()).args(["status", "--json"]));
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(status["booted"].is_null());
}

#[test]
fn invalid_attempts() {
    let tmp = uboot_dir("BOOT_ORDER=A B\n", false);
    expect_failure(
        tmp.path(),
        &["trial", "B", "--attempts", "0"],
        2,
        "must be 1..=15",
    );
    expect_failure(
        tmp.path(),
        &["trial", "B", "--attempts", "16"],
        2,
        "must be 1..=15",
    );
}

#[test]
fn grubenv_of_the_wrong_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let grubenv = dir.join("grubenv");
    grub_editenv(&grubenv, &["create"]);
    let mut bytes = std::fs::read(&grubenv).unwrap();
    bytes.truncate(512);
    std::fs::write(&grubenv, bytes).unwrap();
    write_bootctl_config(
        dir,
        &format!("backend = \"grub\"\ngrubenv = \"{}\"\n", grubenv.display()),
        "A",
    );
    expect_failure(
        dir,
        &["status"],
        3,
        "is 512 bytes; a grubenv block must be exactly 1024 bytes",
    );
    expect_failure(dir, &["mark-good", "A"], 3, "exactly 1024 bytes");
}

#[test]
fn grubenv_without_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let grubenv = dir.join("grubenv");
    std::fs::write(&grubenv, vec![b'#'; 1024]).unwrap();
    write_bootctl_config(
        dir,
        &format!("backend = \"grub\"\ngrubenv = \"{}\"\n", grubenv.display()),
        "A",
    );
    expect_failure(dir, &["set-primary", "A"], 3, "signature");
}

#[test]
fn bad_bootctl_toml_names_the_key() {
    let tmp = uboot_dir("BOOT_ORDER=A B\n", false);
    std::fs::write(tmp.path().join("bootctl.toml"), "backend = \"lilo\"\n").unwrap();
    expect_failure(tmp.path(), &["status"], 1, "lilo");
}
