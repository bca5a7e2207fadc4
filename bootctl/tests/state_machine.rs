//! The slot state machine, table-driven, on both backends: the same operation sequences run
//! through `BootCtl` on real env files, with boots simulated by applying the boot script's rule
//! through the upstream tools (fw_setenv / grub-editenv write what U-Boot / GRUB would save).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rota_bootctl::config::BootConfig;
use rota_bootctl::{BackendKind, BootCtl, Slot, SlotState};

#[derive(Clone, Copy, Debug)]
enum Step {
    Trial(Slot, u32),
    MarkGood(Slot),
    MarkBad(Slot),
    SetPrimary(Slot),
    /// The bootloader runs its script once (and the slot it picks boots).
    Boot,
}

use Slot::{A, B};
use SlotState::{Bad, Good};
use Step::*;

const fn trial(attempts_left: u32) -> SlotState {
    SlotState::Trial { attempts_left }
}

/// (name, steps, U-Boot expectation, GRUB expectation); an expectation is (A, B, next), or
/// `None` when the backend must refuse a step (GRUB allows exactly one trial attempt).
type Expect = (SlotState, SlotState, Option<Slot>);
type Case = (
    &'static str,
    &'static [Step],
    Option<Expect>,
    Option<Expect>,
);
const CASES: &[Case] = &[
    (
        "fresh",
        &[],
        Some((Good, Good, Some(A))),
        Some((Good, Good, Some(A))),
    ),
    (
        "boot from A",
        &[Boot],
        Some((trial(2), Good, Some(A))),
        Some((trial(0), Good, Some(B))),
    ),
    (
        "boot from A, confirmed",
        &[Boot, MarkGood(A)],
        Some((Good, Good, Some(A))),
        Some((Good, Good, Some(A))),
    ),
    (
        "install into B",
        &[MarkBad(B), Trial(B, 1)],
        Some((Good, trial(1), Some(B))),
        Some((Good, Good, Some(B))),
    ),
    (
        "install, trial boot",
        &[MarkBad(B), Trial(B, 1), Boot],
        Some((Good, trial(0), Some(A))),
        Some((Good, trial(0), Some(A))),
    ),
    (
        "install, trial boot, commit",
        &[MarkBad(B), Trial(B, 1), Boot, MarkGood(B)],
        Some((Good, Good, Some(B))),
        Some((Good, Good, Some(B))),
    ),
    (
        "install, trial boot, health failed",
        &[MarkBad(B), Trial(B, 1), Boot, MarkBad(B)],
        Some((Good, Bad, Some(A))),
        Some((Good, Bad, Some(A))),
    ),
    (
        "install, trial boot hangs, fallback boot",
        &[MarkBad(B), Trial(B, 1), Boot, Boot],
        Some((trial(2), trial(0), Some(A))),
        Some((trial(0), trial(0), None)),
    ),
    (
        "three attempts used up",
        &[MarkBad(B), Trial(B, 3), Boot, Boot, Boot],
        Some((Good, trial(0), Some(A))),
        None,
    ),
    (
        "operator makes B primary",
        &[SetPrimary(B)],
        Some((Good, Good, Some(B))),
        Some((Good, Good, Some(B))),
    ),
    (
        "mark bad then good again",
        &[MarkBad(A), MarkGood(A)],
        Some((Good, Good, Some(B))),
        Some((Good, Good, Some(B))),
    ),
    (
        "both marked bad",
        &[MarkBad(A), MarkBad(B)],
        Some((trial(0), trial(0), None)),
        Some((Bad, Bad, None)),
    ),
];

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: BootConfig,
    /// fw_env.config (U-Boot) or grubenv (GRUB).
    env: PathBuf,
}

fn fixture(backend: BackendKind) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let mut config = BootConfig {
        backend,
        cmdline: dir.join("cmdline"),
        ..BootConfig::default()
    };
    std::fs::write(&config.cmdline, "rota.slot=A\n").unwrap();
    let env = match backend {
        BackendKind::Uboot => {
            let image = mkenvimage(
                &dir,
                "env",
                "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
                0x2000,
                true,
            );
            let copy = dir.join("env.copy");
            std::fs::copy(&image, &copy).unwrap();
            config.uboot_config = write_fw_config(&dir, &[(&image, 0, 0x2000), (&copy, 0, 0x2000)]);
            config.uboot_config.clone()
        }
        BackendKind::Grub => {
            config.grubenv = dir.join("grubenv");
            grub_editenv(&config.grubenv, &["create"]);
            grub_editenv(
                &config.grubenv,
                &["set", "ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=1", "B_TRY=0"],
            );
            config.grubenv.clone()
        }
    };
    Fixture {
        _tmp: tmp,
        dir,
        config,
        env,
    }
}

/// The U-Boot script's rule (boot.cmd): first slot in BOOT_ORDER with attempts left is
/// decremented; none left: counters back to 3.
fn uboot_boot(fw_config: &Path, ctl: &BootCtl) -> Option<Slot> {
    let status = ctl.status().unwrap();
    let Some(slot) = status.next else {
        fw_setenv(fw_config, "BOOT_A_LEFT", "3");
        fw_setenv(fw_config, "BOOT_B_LEFT", "3");
        return None;
    };
    let var = format!("BOOT_{slot}_LEFT");
    let left = u32::from_str_radix(status.env.get(&var).map_or("3", String::as_str), 16).unwrap();
    fw_setenv(fw_config, &var, &format!("{:x}", left - 1));
    Some(slot)
}

/// grub.cfg's rule: first slot in ORDER with OK=1 and TRY=0 gets TRY=1; none: clear TRY of the
/// good slots and choose again.
fn grub_boot(grubenv: &Path, ctl: &BootCtl) -> Option<Slot> {
    let pick = |ctl: &BootCtl| ctl.status().unwrap().next;
    let slot = pick(ctl).or_else(|| {
        let status = ctl.status().unwrap();
        for slot in Slot::ALL {
            if status.env.get(&format!("{slot}_OK")).map(String::as_str) == Some("1") {
                grub_editenv(grubenv, &["set", &format!("{slot}_TRY=0")]);
            }
        }
        pick(ctl)
    })?;
    grub_editenv(grubenv, &["set", &format!("{slot}_TRY=1")]);
    Some(slot)
}

fn run_case(backend: BackendKind, name: &str, steps: &[Step], expect: Option<Expect>) {
    let f = fixture(backend);
    let ctl = BootCtl::from_config(&f.config).unwrap();
    for step in steps {
        match *step {
            Trial(slot, n) => match (ctl.begin_trial(slot, n), expect) {
                (Ok(()), _) => {}
                (Err(rota_bootctl::Error::InvalidAttempts { .. }), None) => return,
                (Err(e), _) => panic!("{backend} / {name}: {e}"),
            },
            MarkGood(slot) => ctl.mark_good(slot).unwrap(),
            MarkBad(slot) => ctl.mark_bad(slot).unwrap(),
            SetPrimary(slot) => ctl.set_primary(slot).unwrap(),
            Boot => {
                let booted = match backend {
                    BackendKind::Uboot => uboot_boot(&f.env, &ctl),
                    BackendKind::Grub => grub_boot(&f.env, &ctl),
                };
                if let Some(slot) = booted {
                    std::fs::write(f.dir.join("cmdline"), format!("rota.slot={slot}\n")).unwrap();
                }
            }
        }
    }
    let Some(expect) = expect else {
        panic!("{backend} / {name}: a step should have been refused");
    };
    let status = ctl.status().unwrap();
    let got = (status.state(A), status.state(B), status.next);
    assert_eq!(got, expect, "{backend} / {name}: env {:?}", status.env);
}

#[test]
fn uboot_state_machine() {
    for (name, steps, uboot, _) in CASES {
        run_case(BackendKind::Uboot, name, steps, *uboot);
    }
}

#[test]
fn grub_state_machine() {
    for (name, steps, _, grub) in CASES {
        run_case(BackendKind::Grub, name, steps, *grub);
    }
}

#[test]
fn operations_only_touch_their_own_variables() {
    let f = fixture(BackendKind::Uboot);
    fw_setenv(&f.env, "bootcmd", "run distro_bootcmd; reset");
    fw_setenv(&f.env, "ethaddr", "52:54:00:12:34:56");
    let ctl = BootCtl::from_config(&f.config).unwrap();
    for op in [Trial(B, 1), MarkGood(B), MarkBad(A), SetPrimary(A)] {
        match op {
            Trial(s, n) => ctl.begin_trial(s, n).unwrap(),
            MarkGood(s) => ctl.mark_good(s).unwrap(),
            MarkBad(s) => ctl.mark_bad(s).unwrap(),
            SetPrimary(s) => ctl.set_primary(s).unwrap(),
            Boot => unreachable!(),
        }
    }
    let printed = fw_printenv(&f.env);
    assert!(
        printed.contains("bootcmd=run distro_bootcmd; reset\n"),
        "{printed}"
    );
    assert!(printed.contains("ethaddr=52:54:00:12:34:56\n"), "{printed}");
}
