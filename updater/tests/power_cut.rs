//! Power cuts, not SIGKILLs: a SIGKILL keeps the page cache, a power cut loses every write the
//! disk had not flushed. Each operation runs once on disks recorded at the block level (a FUSE
//! recorder behind loop devices: `common/recorder.rs`); then crash states are replayed from the
//! log of writes and flushes and checked.
//!
//! - A crash point is a position k in the log. For each disk, every write before its last flush
//!   before k is durable; its later writes before k are in flight.
//! - Checked: every prefix ending at a flush (in-flight writes all applied), and random points
//!   whose in-flight writes are dropped at random and applied in random order (seeded).
//!   Identical states (same bytes on every disk) are checked once.
//! - Each state's disks become image files; boot (ext2: this kernel has no vfat) and data (ext4,
//!   whose journal the kernel replays) are mounted through loop devices. Invariants: the boot
//!   env parses (upstream tools and rota-bootctl); `status --json` works and is truthful (every
//!   slot the state says holds bundle X holds exactly X's image); A, the committed slot, is
//!   untouched and bootable; the bootloader's rules boot A or a slot holding the bundle the
//!   state names for it (one exception, see the second-install test); `commit` ends in a
//!   defined state, after which all that holds again; and a retry of the operation succeeds
//!   and commits (every flush point, and every `RETRY_EVERY`-th other unique state).
//!
//! `ROTA_CRASH_POINTS=N` sets the points per operation and backend (default `POINTS`).
//! Needs root, /dev/fuse and loop devices.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Instant;

use common::blockdev::{run, Loop, Mount};
use common::both_backends;
use common::power_cut::{check_caught, crash_states, materialise, points, record, Deduper, Op};
use common::recorder::{Disks, Event};

/// Crash points per operation and backend; under qemu-user (aarch64 CI) every
/// process costs ~10x, so fewer.
const POINTS: usize = if cfg!(target_arch = "x86_64") {
    1000
} else {
    100
};
/// A retry for every flush point, and for every n-th other unique state.
const RETRY_EVERY: usize = 4;

fn power_cuts(op: Op) {
    power_cuts_with(op, true);
}

/// `strict_boot`: see `Recording::strict_boot`.
fn power_cuts_with(op: Op, strict_boot: bool) {
    let total = points(POINTS);
    let mut violations = Vec::new();
    let mut summary = Vec::new();
    for backend in both_backends() {
        let started = Instant::now();
        let mut recording = record(backend, op);
        recording.strict_boot = strict_boot;
        let flushes = recording
            .log
            .iter()
            .filter(|event| matches!(event, Event::Flush { .. }))
            .count();
        let states = crash_states(&recording.log, total, 0x5eed ^ op as u64);
        let mut deduper = Deduper::new(&recording);
        let mut seen = HashSet::new();
        let mut unique = Vec::new();
        for state in &states {
            if seen.insert(deduper.hash(&recording, state)) {
                unique.push(state);
            }
        }
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let mut retries = 0;
        for (index, state) in unique.iter().enumerate() {
            let retry = state.at_flush || index % RETRY_EVERY == 0;
            retries += usize::from(retry);
            let disks = materialise(&recording, state);
            let outcome = check_caught(|| recording.check(&disks, retry));
            if let Err(error) = outcome {
                violations.push(format!("{backend:?} {op:?} {}: {error}", state.label));
            }
        }
        std::panic::set_hook(hook);
        let line = format!(
            "{backend:?} {op:?}: {} crash points checked, {} unique states ({} retried); \
             log of {} events ({flushes} flushes); {:.1} s",
            states.len(),
            unique.len(),
            retries,
            recording.log.len(),
            started.elapsed().as_secs_f64()
        );
        eprintln!("{line}");
        summary.push(line);
    }
    assert!(
        violations.is_empty(),
        "{} violations:\n{}\n{}",
        violations.len(),
        violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        summary.join("\n")
    );
}

#[test]
fn power_cut_during_raw_install() {
    power_cuts(Op::InstallRaw);
}

#[test]
fn power_cut_during_zstd_install() {
    power_cuts(Op::InstallZstd);
}

/// A second install over a first one still armed for trial. A cut after the second install saved
/// `installing` (its record claims nothing about B) and before the boot env marked B bad leaves
/// the first trial armed: the bootloader boots B, which holds exactly the first bundle's image,
/// verified by the first install, while the state names no bundle for B. That boot is allowed,
/// and only that one: `commit` must refuse it (mark B bad, reboot, exit 2), never record either
/// bundle for it (the fault at c503221 recorded the second bundle for B holding the first's
/// bytes: this test fails there at "prefix of 9/95"). The other order (mark bad first) would
/// leave "reboot pending" beside a disarmed slot, which `commit` cannot tell from a trial whose
/// attempts ran out (updater/STATE.md).
#[test]
fn power_cut_during_a_second_install_over_an_armed_trial() {
    power_cuts_with(Op::SecondInstall, false);
}

#[test]
fn power_cut_during_a_healthy_commit() {
    power_cuts(Op::CommitHealthy);
}

#[test]
fn power_cut_during_a_failing_commit() {
    power_cuts(Op::CommitFailing);
}

#[test]
fn power_cut_during_mark_bad() {
    power_cuts(Op::MarkBad);
}

#[test]
fn power_cut_during_mark_good() {
    power_cuts(Op::MarkGood);
}

#[test]
fn power_cut_during_the_daemons_switch_to_the_inactive_slot() {
    power_cuts(Op::Switch);
}

#[test]
fn an_fsync_on_ext4_over_loop_reaches_the_recorder_as_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let disks = Disks::new(vec![("data".into(), vec![0; 8 << 20])]);
    let fuse_dir = dir.path().join("disks");
    fs::create_dir(&fuse_dir).unwrap();
    let session = disks.mount(&fuse_dir);
    {
        let device = Loop::attach(&fuse_dir.join("data"));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024"])
            .arg(device.path()));
        let mount = Mount::new(device.path(), &dir.path().join("data"), "ext4", "rw");
        let mut file = fs::File::create(dir.path().join("data/state")).unwrap();
        file.write_all(b"hello").unwrap();
        let before = disks.log_len();
        file.sync_all().unwrap();
        let log = disks.log();
        // The file's block, the journal's blocks, and the flushes that order them.
        assert!(
            log[before..].iter().any(
                |event| matches!(event, Event::Write { data, .. } if data.starts_with(b"hello"))
            ),
            "the fsynced data did not reach the recorder"
        );
        assert!(
            matches!(log.last(), Some(Event::Flush { dev: 0 })),
            "no flush after the fsync: {:?}",
            &log[before..]
        );
        drop(file);
        mount.unmount();
    }
    session.umount_and_join().unwrap();
}
