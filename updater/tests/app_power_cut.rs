//! Power cuts during an app install, not SIGKILLs: the data partition (ext4) is recorded at
//! the block level while `app install` of 2.0.0 runs over 1.0.0 (extract, store objects,
//! rename the tree, record the pending activation, switch `current`, restart, check, record
//! the outcome). Crash states replay every prefix ending at a flush and random points whose
//! unflushed writes are dropped, reordered or torn (`common::power_cut`). In each state, after
//! ext4 replays its journal:
//!
//! - `current`, if there, names a complete release: every file as 1.0.0 or 2.0.0 shipped it;
//! - `app status` settles the state and tells the truth: current is 1.0.0 or 2.0.0, nothing is
//!   pending, and a recorded activation names the release `current` points at;
//! - a retry of the install succeeds and makes 2.0.0 current (every flush point and every
//!   `RETRY_EVERY`-th other state).
//!
//! `ROTA_CRASH_POINTS=N` sets the points. Needs root, /dev/fuse and loop devices.

mod common;

use std::collections::HashSet;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::path::Path;
use std::process::Command;

use common::apps::{AppRelease, APP};
use common::blockdev::{run, Loop, Mount};
use common::power_cut::{check_caught, crash_states, points, CrashState};
use common::recorder::{Disks, Event};
use common::{exit_code, ok, stderr, Backend, Robot};

const POINTS: usize = if cfg!(target_arch = "x86_64") {
    300
} else {
    60
};
const RETRY_EVERY: usize = 4;
const DATA_BYTES: usize = 16 << 20;

fn releases(robot: &Robot) -> [AppRelease; 2] {
    ["1.0.0", "2.0.0"].map(|version| {
        let mut release = AppRelease::new(robot, version);
        release.file("lib/model.bin", &common::image_bytes(300_000, 9));
        release.file("lib/version.txt", format!("{version}\n").as_bytes());
        release
    })
}

/// The version whose files `tree` holds, every one of them; an error names what is wrong.
fn complete_release(tree: &Path, releases: &[AppRelease]) -> Result<String, String> {
    let version = fs::read_to_string(tree.join("VERSION"))
        .map_err(|error| format!("{}: no VERSION: {error}", tree.display()))?;
    let release = releases
        .iter()
        .find(|release| release.version == version)
        .ok_or_else(|| format!("VERSION says {version:?}"))?;
    for (path, content, _) in &release.files {
        let found = fs::read(tree.join(path)).map_err(|error| format!("{path}: {error}"))?;
        if &found != content {
            return Err(format!("{path} of {version} differs from what it shipped"));
        }
    }
    Ok(version)
}

fn check(robot: &Robot, releases: &[AppRelease], retry: bool) -> Result<(), String> {
    let current = robot.app_dir().join("current");
    if fs::symlink_metadata(&current).is_ok() {
        complete_release(&current, releases)
            .map_err(|error| format!("before settling: {error}"))?;
    }
    let output = robot.run(&["app", "status", APP, "--json"]);
    if !output.status.success() {
        return Err(format!("app status failed: {}", stderr(&output)));
    }
    let status: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).map_err(|error| error.to_string())?;
    let status = &status[0];
    let version =
        complete_release(&current, releases).map_err(|error| format!("settled: {error}"))?;
    if status["current"]["version"] != version.as_str() || !status["pending"].is_null() {
        return Err(format!(
            "status does not match the tree ({version}): {status}"
        ));
    }
    if status["last"]["result"] == "activated"
        && status["last"]["release"] != status["current"]["id"]
    {
        return Err(format!(
            "the last activation is not the current release: {status}"
        ));
    }
    if retry {
        let bundle = robot.path("v2.rota");
        let output = robot.app_install(&bundle);
        if !output.status.success() {
            return Err(format!(
                "retry exited {}: {}",
                exit_code(&output),
                stderr(&output)
            ));
        }
        let version = complete_release(&current, releases).map_err(|e| format!("retried: {e}"))?;
        if version != "2.0.0" {
            return Err(format!("the retry left {version} current"));
        }
    }
    Ok(())
}

#[test]
fn power_cut_during_an_app_install_leaves_one_complete_release_current() {
    let robot = Robot::new(Backend::Uboot);
    let releases = releases(&robot);
    let v1 = robot.app_bundle("v1.rota", &releases[0]);
    robot.app_bundle("v2.rota", &releases[1]);

    // Record: the data partition on the recorder, 1.0.0 installed, then 2.0.0 over it.
    let disks = Disks::new(vec![("data".into(), vec![0; DATA_BYTES])]);
    fs::create_dir(robot.path("disks")).unwrap();
    let session = disks.mount(&robot.path("disks"));
    let device = Loop::attach(&robot.path("disks/data"));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024", "-E", "nodiscard"])
        .arg(device.path()));
    let data = Mount::new(device.path(), &robot.path("data"), "ext4", "rw");
    ok(robot.app_install(&v1), "install 1.0.0");
    run(&mut Command::new("sync"));
    let mark = disks.log_len();
    let base = disks.contents().remove(0);
    ok(
        robot.app_install(&robot.path("v2.rota")),
        "the install under test",
    );
    run(&mut Command::new("sync"));
    data.unmount();
    drop(device);
    session.umount_and_join().unwrap();
    let log = disks.log().split_off(mark);
    let flushes = log
        .iter()
        .filter(|event| matches!(event, Event::Flush { .. }))
        .count();

    let states = crash_states(&log, points(POINTS), 0xa995);
    let materialise = |state: &CrashState| {
        let mut disk = base.clone();
        for &(index, length) in &state.writes {
            if let Event::Write { offset, data, .. } = &log[index] {
                let offset = *offset as usize;
                disk[offset..offset + length].copy_from_slice(&data[..length]);
            }
        }
        disk
    };
    let mut seen = HashSet::new();
    let mut violations = Vec::new();
    let mut checked = 0;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for (index, state) in states.iter().enumerate() {
        let disk = materialise(state);
        let mut hasher = DefaultHasher::new();
        hasher.write(&disk);
        if !seen.insert(hasher.finish()) {
            continue;
        }
        checked += 1;
        let image = robot.path("crash.img");
        fs::write(&image, &disk).unwrap();
        let retry = state.at_flush || index % RETRY_EVERY == 0;
        let outcome = check_caught(|| {
            let device = Loop::attach(&image);
            let data = Mount::new(device.path(), &robot.path("data"), "ext4", "rw");
            let result = check(&robot, &releases, retry);
            data.unmount();
            result
        });
        if let Err(error) = outcome {
            violations.push(format!("{}: {error}", state.label));
        }
    }
    std::panic::set_hook(hook);
    eprintln!(
        "app install: {} crash points, {checked} unique states; log of {} events ({flushes} flushes)",
        states.len(),
        log.len()
    );
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
