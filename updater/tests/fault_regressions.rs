//! Regression tests for the faults an outside campaign found at c503221, each named after what
//! broke. Every one failed there.

mod common;

use std::io::Write as _;
use std::process::Stdio;

use common::*;
use rota_bundle::SigningKey;

const HEALTHY: &str = "[[health.checks]]\nname = \"ok\"\ncommand = [\"true\"]\n";
const FAILPOINT_EXIT: i32 = 97;
const EXIT_BAD_BUNDLE: i32 = 3;
const EXIT_BUSY: i32 = 5;

/// What `status --json` says slot `slot` holds (its recorded version), if anything.
fn recorded_version(robot: &Robot, slot: &str) -> Option<String> {
    let status = robot.status_json();
    status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["slot"] == slot)
        .and_then(|entry| entry["version"].as_str().map(str::to_owned))
}

/// Installs `bundle`, boots it and commits it: the robot then runs it from slot B.
fn install_and_commit(robot: &Robot, bundle: &std::path::Path, slot: &str) {
    ok(robot.run(&["install", bundle.to_str().unwrap()]), "install");
    assert_eq!(robot.boot(), slot);
    ok(robot.run(&["commit"]), "commit");
    assert_eq!(robot.state_name(), "committed");
}

/// Bug 1: a second install of a slot still armed for the first was cut after it saved
/// "installing" but before the env marked the slot bad; the board booted the first image on
/// trial, and `commit` recorded the second bundle's version for it.
#[test]
fn power_cut_before_the_slot_is_marked_bad_never_commits_the_new_version_over_the_old_image() {
    for backend in both_backends() {
        let context = format!("{backend:?}");
        let robot = Robot::with_checks(backend, HEALTHY);
        let first = image_bytes(1 << 20, 61);
        let second = image_bytes(1 << 20, 62);
        let v2 = robot.bundle("v2.rota", &BundleSpec::new("2.0.0", first.clone()));
        let v3 = robot.bundle("v3.rota", &BundleSpec::new("3.0.0", second.clone()));
        ok(robot.run(&["install", v2.to_str().unwrap()]), &context);
        assert_eq!(robot.state_name(), "reboot-pending", "{context}");

        // The first save of the second install is its "installing" record.
        let output = robot
            .updater()
            .args(["install", v3.to_str().unwrap()])
            .env("ROTA_FAILPOINT", "after-rename@1")
            .output()
            .unwrap();
        assert_eq!(exit_code(&output), FAILPOINT_EXIT, "{}", stderr(&output));
        assert_eq!(
            &robot.slot("B")[..first.len()],
            first,
            "{context}: untouched"
        );

        // Power returns: the bootloader still finds B armed and boots the 2.0.0 image.
        assert_eq!(robot.boot(), "B", "{context}");
        let output = robot.run(&["commit"]);
        assert_eq!(exit_code(&output), 2, "{context}: {}", stderr(&output));
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("never finished"),
            "{context}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert_ne!(
            recorded_version(&robot, "B").as_deref(),
            Some("3.0.0"),
            "{context}: 3.0.0 recorded for a slot holding 2.0.0"
        );
        assert_ne!(robot.state_name(), "committed", "{context}");

        // The reboot commit asked for lands on A, which nothing changed.
        assert_eq!(robot.boot(), "A", "{context}");
        ok(robot.run(&["commit"]), &context);
        assert_eq!(robot.state_name(), "installing", "{context}");
        assert_eq!(recorded_version(&robot, "B"), None, "{context}");

        // The interrupted install resumes, and only then does 3.0.0 boot and commit.
        ok(robot.run(&["resume"]), &context);
        assert_eq!(&robot.slot("B")[..second.len()], second, "{context}");
        assert_eq!(robot.boot(), "B", "{context}");
        ok(robot.run(&["commit"]), &context);
        assert_eq!(robot.state_name(), "committed", "{context}");
        assert_eq!(
            recorded_version(&robot, "B").as_deref(),
            Some("3.0.0"),
            "{context}"
        );
    }
}

/// Bug 2: two installs at once interleaved their writes into one slot and shared one
/// `state.tmp`. The second now stops at once, naming the first, and changes nothing.
#[test]
fn a_second_install_while_one_runs_is_refused_as_busy_and_changes_nothing() {
    for backend in both_backends() {
        let context = format!("{backend:?}");
        let robot = Robot::with_checks(backend, HEALTHY);
        let first = image_bytes(1 << 20, 63);
        let other = image_bytes(1 << 20, 64);
        let v2 = robot.bundle("v2.rota", &BundleSpec::new("2.0.0", first.clone()));
        let v3 = robot.bundle("v3.rota", &BundleSpec::new("3.0.0", other));

        // The first install reads its bundle from stdin and waits there, holding the lock.
        let mut running = robot
            .updater()
            .args(["install", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lock = robot.path("data/rota/state.lock");
        let pid = running.id().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::fs::read_to_string(&lock).unwrap_or_default() != pid {
            assert!(std::time::Instant::now() < deadline, "{context}: no lock");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let before = (robot.slot("B"), robot.env(), robot.status_json());

        for args in [
            vec!["install", v3.to_str().unwrap()],
            vec!["resume"],
            vec!["commit"],
        ] {
            let output = robot.run(&args);
            assert_eq!(exit_code(&output), EXIT_BUSY, "{context} {args:?}");
            let message = stderr(&output);
            assert!(
                message.contains(&format!("another install is running (pid {pid})")),
                "{context} {args:?}: {message}"
            );
        }
        assert!(
            before == (robot.slot("B"), robot.env(), robot.status_json()),
            "{context}: a refused install changed something"
        );

        running
            .stdin
            .take()
            .unwrap()
            .write_all(&std::fs::read(&v2).unwrap())
            .unwrap();
        let output = running.wait_with_output().unwrap();
        assert!(output.status.success(), "{context}: {}", stderr(&output));
        assert_eq!(&robot.slot("B")[..first.len()], first, "{context}");
        assert_eq!(robot.state_name(), "reboot-pending", "{context}");
    }
}

/// Bug 3: `resume` and the daemon's start-up resume dropped `--allow-downgrade`, so an
/// interrupted downgrade (a fleet rollback) was refused with exit 3, and the daemon, which
/// systemd does not restart after a 3, stayed down.
#[test]
fn resume_keeps_the_downgrade_permission_and_the_daemon_starts_anyway() {
    for backend in both_backends() {
        let context = format!("{backend:?}");
        let robot = Robot::with_checks(backend, HEALTHY);
        let v2 = robot.bundle(
            "v2.rota",
            &BundleSpec::new("2.0.0", image_bytes(1 << 20, 65)),
        );
        install_and_commit(&robot, &v2, "B");
        let old = image_bytes(2 << 20, 66);
        let v1 = robot.bundle("v1.rota", &BundleSpec::new("1.0.0", old.clone()));

        let refused = robot.run(&["install", v1.to_str().unwrap()]);
        assert_eq!(exit_code(&refused), EXIT_BAD_BUNDLE, "{context}");

        for resume in [["resume"], ["daemon"]] {
            let cut = robot
                .updater()
                .args([
                    "install",
                    "--allow-downgrade",
                    "--checkpoint-bytes",
                    "262144",
                    v1.to_str().unwrap(),
                ])
                .env("ROTA_FAILPOINT", "after-progress-saved@2")
                .output()
                .unwrap();
            assert_eq!(
                exit_code(&cut),
                FAILPOINT_EXIT,
                "{context}: {}",
                stderr(&cut)
            );
            assert_eq!(robot.state_name(), "installing", "{context}");

            // No [server] in this config: the daemon resumes the install by hand, then exits 0.
            let output = robot.run(&resume);
            assert!(
                output.status.success(),
                "{context} {resume:?}: {}",
                stderr(&output)
            );
            assert_eq!(robot.state_name(), "reboot-pending", "{context} {resume:?}");
            assert_eq!(&robot.slot("A")[..old.len()], old, "{context} {resume:?}");
        }
    }
}

/// A daemon whose start-up resume finds the bundle refused (signed by a key no longer
/// trusted) gives the install up and keeps running, instead of exiting with the bad-bundle
/// code systemd does not restart.
#[test]
fn a_refused_resume_does_not_keep_the_daemon_down() {
    let robot = Robot::with_checks(Backend::Uboot, HEALTHY);
    let v2 = robot.bundle(
        "v2.rota",
        &BundleSpec::new("2.0.0", image_bytes(2 << 20, 67)),
    );
    let cut = robot
        .updater()
        .args([
            "install",
            "--checkpoint-bytes",
            "262144",
            v2.to_str().unwrap(),
        ])
        .env("ROTA_FAILPOINT", "after-progress-saved@1")
        .output()
        .unwrap();
    assert_eq!(exit_code(&cut), FAILPOINT_EXIT, "{}", stderr(&cut));
    std::fs::remove_file(robot.path("keys/release.pub")).unwrap();
    SigningKey::from_seed([7; 32])
        .public_key()
        .write_new(&robot.path("keys/other.pub"))
        .unwrap();

    let output = robot.run(&["daemon"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    assert!(stderr(&output).contains("abandoned"), "{}", stderr(&output));
    assert_eq!(robot.state_name(), "idle");
    assert_eq!(robot.boot(), "A", "the half-written slot is never booted");
}
