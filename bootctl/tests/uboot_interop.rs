//! U-Boot env interop with the upstream tools: what rota-bootctl writes, fw_printenv reads;
//! what mkenvimage and fw_setenv write, rota-bootctl reads. Single and redundant envs, as plain
//! files and at an offset inside a larger disk image.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const ENV_SIZE: u64 = 0x4000;

/// Where the env copies live for one scenario.
struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    /// (file, offset) of each copy.
    copies: Vec<(PathBuf, u64)>,
}

const INITIAL: &str =
    "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nbootdelay=0\nrobot_id=lekiwi-0042\n";

/// Builds the env with mkenvimage and places it as the scenario requires.
fn setup(redundant: bool, in_disk_image: bool) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let image = mkenvimage(&dir, "env.img", INITIAL, ENV_SIZE, redundant);
    let bytes = std::fs::read(&image).unwrap();
    let copies: Vec<(PathBuf, u64)> = if in_disk_image {
        // A 4 MiB "disk" full of a recognisable pattern, env at 1 MiB (and 1 MiB + 16 KiB).
        let disk = dir.join("disk.img");
        let pattern: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&disk, pattern).unwrap();
        let offsets: &[u64] = if redundant {
            &[0x100000, 0x104000]
        } else {
            &[0x100000]
        };
        for &offset in offsets {
            splice(&disk, offset, &bytes);
        }
        offsets.iter().map(|&o| (disk.clone(), o)).collect()
    } else if redundant {
        let second = dir.join("env2.img");
        std::fs::copy(&image, &second).unwrap();
        vec![(image, 0), (second, 0)]
    } else {
        vec![(image, 0)]
    };
    let fw: Vec<(&Path, u64, u64)> = copies
        .iter()
        .map(|(p, o)| (p.as_path(), *o, ENV_SIZE))
        .collect();
    let config = write_fw_config(&dir, &fw);
    write_bootctl_config(
        &dir,
        &format!(
            "backend = \"uboot\"\nuboot_config = \"{}\"\n",
            config.display()
        ),
        "A",
    );
    Setup {
        _dir: tmp,
        dir,
        config,
        copies,
    }
}

fn status(setup: &Setup) -> Value {
    let out = ok(bootctl(&setup.dir).args(["status", "--json"]));
    serde_json::from_str(&out).unwrap()
}

fn state(status: &Value, slot: usize) -> String {
    let s = &status["slots"][slot];
    match s["state"].as_str().unwrap() {
        "trial" => format!("trial:{}", s["attempts_left"]),
        other => other.to_owned(),
    }
}

fn check_round_trips(redundant: bool, in_disk_image: bool) {
    let s = setup(redundant, in_disk_image);
    let label = format!("redundant={redundant} disk={in_disk_image}");

    // mkenvimage -> rota-bootctl
    let st = status(&s);
    assert_eq!(st["booted"], "A", "{label}");
    assert_eq!(st["next"], "A", "{label}");
    assert_eq!(
        (state(&st, 0), state(&st, 1)),
        ("good".into(), "good".into()),
        "{label}"
    );

    // rota-bootctl -> fw_printenv
    ok(bootctl(&s.dir).args(["trial", "B"]));
    let printed = fw_printenv(&s.config);
    eprintln!("[{label}] fw_printenv after `rota-bootctl trial B`:\n{printed}");
    for line in [
        "BOOT_ORDER=B A",
        "BOOT_B_LEFT=1",
        "BOOT_A_LEFT=3",
        "bootdelay=0",
        "robot_id=lekiwi-0042",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "{label}: {line:?} missing in\n{printed}"
        );
    }

    // fw_setenv -> rota-bootctl (the boot script's decrement, as U-Boot would save it)
    fw_setenv(&s.config, "BOOT_B_LEFT", "0");
    let st = status(&s);
    assert_eq!(state(&st, 1), "trial:0", "{label}");
    assert_eq!(st["next"], "A", "{label}: B has no attempts left");

    // ...and on, alternating writers, so each writer sees the other's newest copy.
    ok(bootctl(&s.dir).args(["mark-good", "B"]));
    fw_setenv(&s.config, "robot_id", "lekiwi-0043");
    ok(bootctl(&s.dir).args(["mark-bad", "A"]));
    let printed = fw_printenv(&s.config);
    eprintln!("[{label}] fw_printenv after mark-good B, fw_setenv, mark-bad A:\n{printed}");
    for line in [
        "BOOT_ORDER=B",
        "BOOT_A_LEFT=0",
        "BOOT_B_LEFT=3",
        "robot_id=lekiwi-0043",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "{label}: {line:?} missing in\n{printed}"
        );
    }
    let st = status(&s);
    assert_eq!(
        (state(&st, 0), state(&st, 1)),
        ("bad".into(), "good".into()),
        "{label}"
    );
    assert_eq!(st["next"], "B", "{label}");
}

#[test]
fn single_env_file() {
    check_round_trips(false, false);
}

#[test]
fn redundant_env_files() {
    check_round_trips(true, false);
}

#[test]
fn single_env_inside_disk_image() {
    check_round_trips(false, true);
}

#[test]
fn redundant_env_inside_disk_image() {
    check_round_trips(true, true);
}

#[test]
fn disk_image_bytes_outside_the_env_are_untouched() {
    let s = setup(true, true);
    let disk = &s.copies[0].0;
    let before = std::fs::read(disk).unwrap();
    ok(bootctl(&s.dir).args(["trial", "B", "--attempts", "2"]));
    ok(bootctl(&s.dir).args(["mark-good", "B"]));
    let after = std::fs::read(disk).unwrap();
    assert_eq!(
        before.len(),
        after.len(),
        "the disk image must not grow or shrink"
    );
    let env_ranges = [0x100000..0x104000usize, 0x104000..0x108000];
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        if !env_ranges.iter().any(|r| r.contains(&i)) {
            assert_eq!(a, b, "byte {i:#x} outside the env changed");
        }
    }
}

#[test]
fn redundant_writes_alternate_copies_with_incrementing_flags() {
    let s = setup(true, false);
    let flag = |i: usize| std::fs::read(&s.copies[i].0).unwrap()[4];
    // mkenvimage -r writes flag 1 in each copy: equal flags, copy 0 is current.
    assert_eq!((flag(0), flag(1)), (1, 1));
    ok(bootctl(&s.dir).args(["trial", "B"]));
    assert_eq!(
        (flag(0), flag(1)),
        (1, 2),
        "first write goes to the obsolete copy 1"
    );
    ok(bootctl(&s.dir).args(["mark-good", "B"]));
    assert_eq!((flag(0), flag(1)), (3, 2), "then back to copy 0");
    fw_setenv(&s.config, "x", "1");
    assert_eq!(
        (flag(0), flag(1)),
        (3, 4),
        "fw_setenv agrees on which copy is obsolete"
    );
    ok(bootctl(&s.dir).args(["mark-good", "A"]));
    assert_eq!((flag(0), flag(1)), (5, 4));
}

#[test]
fn a_good_slot_counted_down_by_its_boot_does_not_read_as_a_trial() {
    // The boot script took one attempt of the booted, committed slot A (3 → 2); status said
    // `trial (2 attempt(s) left)` until rota-commit.service confirmed it.
    let s = setup(false, false);
    fw_setenv(&s.config, "BOOT_A_LEFT", "2");
    ok(bootctl(&s.dir).args(["trial", "B"]));
    let text = ok(bootctl(&s.dir).args(["status"]));
    assert!(
        text.contains("slot A:  booted, not confirmed yet (2 attempts left)"),
        "{text}"
    );
    assert!(text.contains("slot B:  trial (1 attempt left)"), "{text}");
}
