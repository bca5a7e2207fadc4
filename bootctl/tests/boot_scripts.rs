//! The boot scripts we ship: compiled and syntax-checked by the real tools, and checked for
//! the conventions the rest of Rota relies on. Booting them is the QEMU tests' job.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn boot_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("boot")
        .join(rel)
}

/// Script lines without comments.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn uboot_script_compiles_with_mkimage() {
    let tmp = tempfile::tempdir().unwrap();
    let scr = tmp.path().join("boot.scr");
    ok(Command::new("mkimage")
        .args(["-A", "arm64", "-T", "script", "-C", "none", "-n", "rota"])
        .arg("-d")
        .arg(boot_file("uboot/boot.cmd"))
        .arg(&scr));
    let listed = ok(Command::new("mkimage").arg("-l").arg(&scr));
    assert!(listed.contains("Script"), "{listed}");
}

#[test]
fn uboot_script_follows_the_conventions() {
    let text = std::fs::read_to_string(boot_file("uboot/boot.cmd")).unwrap();
    let code = code_lines(&text);
    assert!(
        !code.iter().any(|l| l.contains("setexpr")),
        "boot.cmd must not need setexpr"
    );
    // Balanced blocks (hush reports these only at boot time).
    let opens = |kw: &str| code.iter().filter(|l| l.starts_with(kw)).count();
    let ifs = opens("if ");
    let fis = code
        .iter()
        .filter(|l| **l == "fi" || l.ends_with("; fi"))
        .count();
    assert_eq!(ifs, fis, "if/fi balance");
    assert_eq!(
        opens("for "),
        code.iter().filter(|l| **l == "done").count(),
        "for/done balance"
    );
    for needle in [
        "BOOT_ORDER",
        "BOOT_A_LEFT",
        "BOOT_B_LEFT",
        "rota.slot=${rota_slot}",
        "root=PARTLABEL=${rota_label}",
        "rootfs-a",
        "rootfs-b",
        "/boot/vmlinuz",
        "/boot/initrd.img",
        "env import -c",
        "env export -c",
        "fatwrite",
        "saveenv",
        "reset",
    ] {
        assert!(text.contains(needle), "boot.cmd lacks {needle:?}");
    }
    // Every counter value rota-bootctl can write (1..=f) has a decrement step.
    for slot in ["A", "B"] {
        for n in 1..=15u32 {
            let step = format!(
                "test \"${{BOOT_{slot}_LEFT}}\" = \"{n:x}\"; then setenv BOOT_{slot}_LEFT {:x}",
                n - 1
            );
            assert!(text.contains(&step), "missing decrement {step}");
        }
    }
}

#[test]
fn grub_cfg_passes_grub_script_check() {
    let cfg = boot_file("grub/grub.cfg");
    let out = run(Command::new("grub-script-check").arg("-v").arg(&cfg));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The check can fail: a copy with an unterminated block is rejected.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("grub.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&broken, text.replacen("fi\n", "\n", 1)).unwrap();
    let out = run(Command::new("grub-script-check").arg(&broken));
    assert!(
        !out.status.success(),
        "grub-script-check accepted a broken script"
    );
}

#[test]
fn grub_cfg_follows_the_conventions() {
    let text = std::fs::read_to_string(boot_file("grub/grub.cfg")).unwrap();
    for needle in [
        "load_env",
        "save_env",
        "ORDER",
        "A_OK",
        "A_TRY",
        "B_OK",
        "B_TRY",
        "rota.slot=A",
        "rota.slot=B",
        "root=PARTLABEL=rootfs-a",
        "root=PARTLABEL=rootfs-b",
        "/boot/vmlinuz",
        "/boot/initrd.img",
    ] {
        assert!(text.contains(needle), "grub.cfg lacks {needle:?}");
    }
}
