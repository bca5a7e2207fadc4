//! Power cut part-way through a write: every prefix of the planned write is applied to the
//! on-disk state and read back.
//! - Redundant U-Boot env: the reader always gets the complete old or the complete new env
//!   (every byte boundary, plus every sector missing for out-of-order writes); fw_printenv
//!   agrees at every sector boundary.
//! - Single U-Boot env and grubenv: a torn state is detected and reported, never read as a mix.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use rota_bootctl::env::fw_config;
use rota_bootctl::env::grub_store::GrubEnvStore;
use rota_bootctl::env::uboot_store::UbootEnvStore;
use rota_bootctl::env::{EnvVars, PlannedWrite};
use rota_bootctl::uboot_backend;
use rota_bootctl::{Error, Operation};

const ENV_SIZE: u64 = 0x2000;
const SECTOR: usize = 512;

/// Simulates a power cut after every byte of `plan`: for each prefix length from 0 (nothing
/// written) to the whole write, extends the on-disk prefix by one byte and calls `check(cut)`.
fn for_each_cut(plan: &PlannedWrite, mut check: impl FnMut(usize)) {
    let file = OpenOptions::new().write(true).open(&plan.path).unwrap();
    for cut in 0..=plan.bytes.len() {
        if cut > 0 {
            let at = cut - 1;
            file.write_all_at(&plan.bytes[at..cut], plan.offset + at as u64)
                .unwrap();
        }
        check(cut);
    }
}

/// Applies `plan.bytes[range]` at its place.
fn apply_part(plan: &PlannedWrite, range: std::ops::Range<usize>) {
    let file = OpenOptions::new().write(true).open(&plan.path).unwrap();
    file.write_all_at(&plan.bytes[range.clone()], plan.offset + range.start as u64)
        .unwrap();
}

/// A redundant env in one file (copies at 0 and ENV_SIZE) where copy 0 has flag 255 and older
/// content and copy 1 has flag 0 and is current (the flag wrapped): the write under test goes
/// to copy 0 with flag 1.
fn redundant_setup(dir: &Path) -> (std::path::PathBuf, UbootEnvStore) {
    let old = mkenvimage(
        dir,
        "old",
        "BOOT_ORDER=A B\nBOOT_A_LEFT=1\nBOOT_B_LEFT=1\n",
        ENV_SIZE,
        true,
    );
    let cur = mkenvimage(
        dir,
        "cur",
        "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\nbootcmd=run rota\nserial#=0042\n",
        ENV_SIZE,
        true,
    );
    let mut disk = std::fs::read(old).unwrap();
    disk[4] = 255;
    let mut second = std::fs::read(cur).unwrap();
    second[4] = 0;
    disk.extend_from_slice(&second);
    let path = dir.join("env.bin");
    std::fs::write(&path, disk).unwrap();
    let config = write_fw_config(dir, &[(&path, 0, ENV_SIZE), (&path, ENV_SIZE, ENV_SIZE)]);
    (config.clone(), UbootEnvStore::open(&config).unwrap())
}

#[test]
fn redundant_env_is_old_or_new_after_a_cut_at_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, store) = redundant_setup(tmp.path());
    let loaded = store.load().unwrap();
    assert_eq!(loaded.current, 1, "flag 0 follows flag 255");
    let old_printed = fw_printenv(&config);
    assert!(
        old_printed.contains("BOOT_A_LEFT=3"),
        "fw_printenv agrees on the wrap:\n{old_printed}"
    );

    let mut new_vars = loaded.vars.clone();
    uboot_backend::apply_to_vars(
        &mut new_vars,
        Operation::BeginTrial {
            slot: rota_bootctl::Slot::B,
            attempts: 1,
        },
        3,
    )
    .unwrap();
    let plan = store.plan_store(&loaded, &new_vars).unwrap();
    assert_eq!(plan.offset, 0, "the write goes to the obsolete copy 0");
    assert_eq!(plan.bytes[4], 1, "with flag 255 + 1 = 1");

    let mut old_seen = 0;
    let mut new_seen = 0;
    let mut fw_checks = 0;
    for_each_cut(&plan, |cut| {
        let got = store
            .load()
            .unwrap_or_else(|e| panic!("cut at byte {cut}: {e}"));
        if got.vars == loaded.vars {
            old_seen += 1;
        } else if got.vars == new_vars {
            new_seen += 1;
        } else {
            panic!("cut at byte {cut}: neither old nor new: {:?}", got.vars);
        }
        if cut % SECTOR == 0 {
            let printed = fw_printenv(&config);
            let expected = if got.vars == new_vars {
                "BOOT_ORDER=B A"
            } else {
                "BOOT_ORDER=A B"
            };
            assert!(
                printed.contains(expected),
                "fw_printenv at cut {cut}:\n{printed}"
            );
            fw_checks += 1;
        }
    });
    assert_eq!(new_seen, 1, "only the complete write shows the new env");
    assert_eq!(old_seen, plan.bytes.len());
    assert_eq!(fw_checks, plan.bytes.len() / SECTOR + 1);
}

#[test]
fn redundant_env_is_old_when_any_one_sector_is_missing() {
    // Disks may reorder sector writes: whatever single sector did not make it, the env is old.
    let tmp = tempfile::tempdir().unwrap();
    let (_config, store) = redundant_setup(tmp.path());
    let pristine = std::fs::read(tmp.path().join("env.bin")).unwrap();
    let loaded = store.load().unwrap();
    let mut new_vars = loaded.vars.clone();
    new_vars.set("BOOT_ORDER", "B A");
    let plan = store.plan_store(&loaded, &new_vars).unwrap();
    for missing in 0..plan.bytes.len() / SECTOR {
        std::fs::write(&plan.path, &pristine).unwrap();
        for sector in (0..plan.bytes.len() / SECTOR).filter(|&s| s != missing) {
            apply_part(&plan, sector * SECTOR..(sector + 1) * SECTOR);
        }
        let got = store.load().unwrap();
        assert_eq!(got.vars, loaded.vars, "sector {missing} missing");
    }
}

#[test]
fn single_env_torn_write_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = mkenvimage(
        dir,
        "env.bin",
        "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
        ENV_SIZE,
        false,
    );
    let config = write_fw_config(dir, &[(&env, 0, ENV_SIZE)]);
    let store = UbootEnvStore::open(&config).unwrap();
    let loaded = store.load().unwrap();
    let mut new_vars = loaded.vars.clone();
    new_vars.set("BOOT_ORDER", "B A");
    new_vars.set("BOOT_B_LEFT", "1");
    let plan = store.plan_store(&loaded, &new_vars).unwrap();

    let (mut old, mut new, mut detected) = (0, 0, 0);
    for_each_cut(&plan, |cut| match store.load() {
        Ok(got) if got.vars == loaded.vars => old += 1,
        Ok(got) if got.vars == new_vars => new += 1,
        Ok(got) => panic!("cut at byte {cut}: a mix was read: {:?}", got.vars),
        Err(Error::UbootEnv { source, .. }) => {
            assert!(source.to_string().contains("CRC mismatch"), "{source}");
            detected += 1;
        }
        Err(e) => panic!("cut at byte {cut}: unexpected error {e}"),
    });
    eprintln!(
        "single env, {} cuts: old {old}, new {new}, detected torn {detected}",
        plan.bytes.len() + 1
    );
    assert_eq!(old, 1, "only the empty prefix leaves the old env");
    assert!(new >= 1);
    assert!(
        detected > plan.bytes.len() / 2,
        "most cuts must be detected"
    );

    // Through the CLI: a torn single env is reported with its own exit code, nothing written.
    std::fs::write(&plan.path, &plan.bytes[..SECTOR]).unwrap();
    let mut torn = std::fs::read(&env).unwrap();
    torn.resize(ENV_SIZE as usize, 0);
    let original = mkenvimage(
        dir,
        "orig.bin",
        "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
        ENV_SIZE,
        false,
    );
    let orig = std::fs::read(original).unwrap();
    torn[SECTOR..].copy_from_slice(&orig[SECTOR..]);
    std::fs::write(&env, &torn).unwrap();
    write_bootctl_config(
        dir,
        &format!("uboot_config = \"{}\"\n", config.display()),
        "A",
    );
    let out = run(bootctl(dir).arg("status"));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("CRC mismatch"));
    let out = run(bootctl(dir).args(["mark-good", "A"]));
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        std::fs::read(&env).unwrap(),
        torn,
        "nothing written over a torn env"
    );
}

/// Cuts a grubenv write at every byte and with either 512-byte sector missing; each state must
/// read as the old vars, the new vars, or a reported error.
fn check_grubenv_cuts(old_vars: &EnvVars, new_vars: &EnvVars) -> (usize, usize, usize) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("grubenv");
    grub_editenv(&path, &["create"]);
    let store = GrubEnvStore::new(&path);
    // Two Rota writes so the old block carries generation markers.
    let first = store.load().unwrap();
    store.store(&first, old_vars).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(&loaded.vars, old_vars);
    let pristine = std::fs::read(&path).unwrap();
    let plan = store.plan_store(&loaded, new_vars).unwrap();

    let (mut old, mut new, mut detected) = (0, 0, 0);
    let mut classify = |what: String| match store.load() {
        Ok(got) if &got.vars == old_vars => old += 1,
        Ok(got) if &got.vars == new_vars => new += 1,
        Ok(got) => panic!("{what}: a mix was read: {:?}", got.vars),
        Err(Error::GrubEnv { .. }) => detected += 1,
        Err(e) => panic!("{what}: unexpected error {e}"),
    };
    for_each_cut(&plan, |cut| classify(format!("cut at byte {cut}")));
    for written in [0..SECTOR, SECTOR..2 * SECTOR] {
        std::fs::write(&path, &pristine).unwrap();
        apply_part(&plan, written.clone());
        classify(format!("only bytes {written:?} written"));
    }
    (old, new, detected)
}

fn vars(pairs: &[(&str, &str)]) -> EnvVars {
    pairs.iter().copied().collect()
}

#[test]
fn grubenv_torn_write_is_detected_for_a_trial() {
    let old = vars(&[
        ("ORDER", "A B"),
        ("A_OK", "1"),
        ("A_TRY", "0"),
        ("B_OK", "0"),
        ("B_TRY", "0"),
    ]);
    let new = vars(&[
        ("ORDER", "B A"),
        ("A_OK", "1"),
        ("A_TRY", "0"),
        ("B_OK", "1"),
        ("B_TRY", "0"),
    ]);
    let (o, n, d) = check_grubenv_cuts(&old, &new);
    eprintln!("grubenv trial: old {o}, new {n}, detected torn {d}");
    assert!(d > 0 && o > 0 && n > 0);
}

#[test]
fn grubenv_torn_write_is_detected_when_content_shrinks_across_sectors() {
    // The old block's content crosses into the second sector and the new one is shorter: a
    // cut just after the new content must not expose the old block's trailing lines.
    let long = "x".repeat(600);
    let old = vars(&[
        ("ORDER", "A B"),
        ("A_OK", "1"),
        ("note", &long),
        ("B_OK", "1"),
    ]);
    let new = vars(&[("ORDER", "B A"), ("A_OK", "1"), ("B_OK", "1")]);
    let (o, n, d) = check_grubenv_cuts(&old, &new);
    eprintln!("grubenv shrink: old {o}, new {n}, detected torn {d}");
    assert!(d > 0 && n > 0);
}

#[test]
fn grubenv_torn_write_is_reported_by_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let grubenv = dir.join("grubenv");
    grub_editenv(&grubenv, &["create"]);
    write_bootctl_config(
        dir,
        &format!("backend = \"grub\"\ngrubenv = \"{}\"\n", grubenv.display()),
        "A",
    );
    ok(bootctl(dir).args(["mark-good", "A"]));
    let before = std::fs::read(&grubenv).unwrap();
    let store = GrubEnvStore::new(&grubenv);
    let loaded = store.load().unwrap();
    let mut new_vars = loaded.vars.clone();
    new_vars.set("ORDER", "B A");
    let plan = store.plan_store(&loaded, &new_vars).unwrap();
    // Cut after the new ROTA_GEN line (signature, 18 bytes of marker), before the rest.
    apply_part(&plan, 0..45);
    let torn = std::fs::read(&grubenv).unwrap();
    assert_ne!(torn, before);
    let out = run(bootctl(dir).arg("status"));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("torn write"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(bootctl(dir).args(["trial", "B"]));
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        std::fs::read(&grubenv).unwrap(),
        torn,
        "nothing written over a torn block"
    );
    // Sanity: the fw_config parser is reachable from here (used by the fuzz targets too).
    assert!(fw_config::parse("/x 0 0x2000\n").is_ok());
}
