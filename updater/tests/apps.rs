//! App releases on a robot in a temp dir: install, activate, restart, check, switch back,
//! roll back without a download, share files between releases, prune, refuse bad bundles
//! without a change, and end every crash with one complete release current.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use common::apps::{tree_snapshot, AppRelease, APP, UNIT};
use common::power_cut::Random;
use common::{exit_code, ok, stderr, Backend, BundleSpec, Robot};
use rota_bundle::SigningKey;

fn robot() -> Robot {
    Robot::new(Backend::Uboot)
}

fn install_json(robot: &Robot, bundle: &std::path::Path) -> (i32, serde_json::Value) {
    let output = robot
        .updater()
        .args(["app", "install", "--json"])
        .arg(bundle)
        .output()
        .unwrap();
    let code = exit_code(&output);
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("no JSON from app install: {}", stderr(&output)));
    (code, json)
}

fn install_ok(robot: &Robot, release: &AppRelease) -> serde_json::Value {
    let bundle = robot.app_bundle(
        &format!("{}-{}.rota", release.name, release.version),
        release,
    );
    let (code, json) = install_json(robot, &bundle);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["result"], "activated", "{json}");
    json
}

#[test]
fn an_app_release_installs_activates_and_restarts_only_its_units() {
    let robot = robot();
    let mut release = AppRelease::new(&robot, "1.0.0");
    release.units = vec![UNIT.into(), "demo-worker.service".into()];
    let report = install_ok(&robot, &release);

    assert_eq!(robot.current_app_version().as_deref(), Some("1.0.0"));
    let id = report["release"].as_str().unwrap();
    assert!(id.starts_with("1.0.0-"), "{id}");
    let link = fs::read_link(robot.app_dir().join("current")).unwrap();
    assert_eq!(link, std::path::Path::new("releases").join(id));
    let serve = robot.app_dir().join("current/bin/serve");
    assert_eq!(fs::metadata(&serve).unwrap().mode() & 0o777, 0o755);
    assert_eq!(
        robot.systemctl_calls(),
        ["restart demo.service demo-worker.service"]
    );

    let status = robot.app_status();
    assert_eq!(status["current"]["version"], "1.0.0");
    assert_eq!(status["current"]["git_commit"], "c0ffee100");
    assert_eq!(status["last"]["result"], "activated");
    assert!(status["pending"].is_null());
}

#[test]
fn a_failing_check_switches_back_and_restarts_the_release_before() {
    let robot = robot();
    install_ok(&robot, &AppRelease::new(&robot, "1.0.0"));
    let broken = AppRelease::new(&robot, "2.0.0").broken();
    let bundle = robot.app_bundle("broken.rota", &broken);
    let (code, report) = install_json(&robot, &bundle);

    assert_eq!(code, 2, "{report}");
    assert_eq!(report["result"], "rolled_back");
    assert_eq!(report["failed_check"], "reports healthy");
    // Asked again until the deadline, not given up on at the first wrong answer.
    assert!(
        report["check_output"]
            .as_str()
            .unwrap()
            .starts_with("still failing at the deadline"),
        "{report}"
    );
    assert_eq!(robot.current_app_version().as_deref(), Some("1.0.0"));
    // The release current again, not the one before it.
    assert!(
        report["current"].as_str().unwrap().starts_with("1.0.0-"),
        "{report}"
    );
    // Restarted for 2.0.0, then again for 1.0.0.
    assert_eq!(robot.systemctl_calls().len(), 3);
    let status = robot.app_status();
    assert_eq!(status["last"]["result"], "rolled_back");
    assert_eq!(status["last"]["check"], "reports healthy");
    assert!(status["current"]["id"]
        .as_str()
        .unwrap()
        .starts_with("1.0.0-"));
}

#[test]
fn a_unit_that_fails_to_restart_switches_back() {
    let robot = robot();
    install_ok(&robot, &AppRelease::new(&robot, "1.0.0"));
    fs::write(robot.path("systemctl.fail"), "").unwrap();
    let bundle = robot.app_bundle("two.rota", &AppRelease::new(&robot, "2.0.0"));
    let (code, report) = install_json(&robot, &bundle);
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["failed_check"], "restart");
    assert!(report["check_output"]
        .as_str()
        .unwrap()
        .contains("Job for unit failed"));
    assert_eq!(robot.current_app_version().as_deref(), Some("1.0.0"));
}

#[test]
fn the_first_release_failing_its_checks_leaves_no_release_current() {
    let robot = robot();
    let bundle = robot.app_bundle("broken.rota", &AppRelease::new(&robot, "1.0.0").broken());
    let (code, report) = install_json(&robot, &bundle);
    assert_eq!(code, 2, "{report}");
    assert!(!robot.app_dir().join("current").exists());
    assert!(robot.app_status()["current"].is_null());
}

#[test]
fn rollback_to_a_kept_release_needs_no_bundle_and_no_reboot() {
    let robot = robot();
    let mut releases = Vec::new();
    for version in ["1.0.0", "1.1.0", "2.0.0"] {
        let release = AppRelease::new(&robot, version);
        install_ok(&robot, &release);
        releases.push(release);
    }
    for entry in fs::read_dir(robot.path("")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "rota") {
            fs::remove_file(path).unwrap();
        }
    }

    // Default: the previous release.
    ok(robot.run(&["app", "rollback", APP]), "rollback");
    assert_eq!(robot.current_app_version().as_deref(), Some("1.1.0"));
    ok(
        robot.run(&["app", "rollback", APP, "--to", "1.0.0"]),
        "rollback by version",
    );
    assert_eq!(robot.current_app_version().as_deref(), Some("1.0.0"));
    let commit = format!("commit:{}", &releases[2].commit[..8]);
    let output = robot.run(&["app", "rollback", APP, "--to", &commit, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&ok(output, "rollback by commit")).unwrap();
    assert_eq!(json["result"], "activated");
    assert_eq!(robot.current_app_version().as_deref(), Some("2.0.0"));
    assert_eq!(
        robot.app_status()["previous"].as_str().unwrap()[..6],
        *"1.0.0-"
    );
    assert_eq!(robot.reboots(), 0);

    let unknown = robot.run(&["app", "rollback", APP, "--to", "9.9.9"]);
    assert_eq!(exit_code(&unknown), 1);
    assert!(
        stderr(&unknown).contains("no kept release \"9.9.9\""),
        "{}",
        stderr(&unknown)
    );
    let current = robot.run(&["app", "rollback", APP, "--to", "2.0.0"]);
    assert!(
        stderr(&current).contains("already current"),
        "{}",
        stderr(&current)
    );
}

#[test]
fn installing_a_kept_release_again_downloads_nothing() {
    let robot = robot();
    let one = AppRelease::new(&robot, "1.0.0");
    install_ok(&robot, &one);
    install_ok(&robot, &AppRelease::new(&robot, "2.0.0"));
    let bundle = robot.app_bundle("one-again.rota", &one);
    let output = robot
        .updater()
        .args(["app", "install", "--allow-downgrade", "--json"])
        .arg(&bundle)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&ok(output, "install again")).unwrap();
    assert_eq!(report["reused_release"], true);
    assert!(report["stats"].is_null());
    assert_eq!(robot.current_app_version().as_deref(), Some("1.0.0"));
}

#[test]
fn unchanged_files_are_stored_once_across_releases() {
    let robot = robot();
    let big = common::image_bytes(2 << 20, 7);
    let mut one = AppRelease::new(&robot, "1.0.0");
    one.file("lib/model.bin", &big);
    let first = install_ok(&robot, &one);
    assert!(first["stats"]["new_object_bytes"].as_u64().unwrap() > 2 << 20);

    let mut two = AppRelease::new(&robot, "1.0.1");
    two.file("lib/model.bin", &big)
        .file("config.toml", b"speed = 2\n");
    let second = install_ok(&robot, &two);
    let new_bytes = second["stats"]["new_object_bytes"].as_u64().unwrap();
    assert!(
        new_bytes < 64,
        "only VERSION and config.toml are new: {second}"
    );

    let releases = robot.app_dir().join("releases");
    let inode = |id: &serde_json::Value| {
        fs::metadata(releases.join(id.as_str().unwrap()).join("lib/model.bin"))
            .unwrap()
            .ino()
    };
    assert_eq!(inode(&first["release"]), inode(&second["release"]));
}

#[test]
fn pruning_keeps_the_newest_and_never_the_current_or_previous_release() {
    let robot = Robot::with_checks(Backend::Uboot, "keep = 3\n");
    for (index, version) in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"].iter().enumerate() {
        let mut release = AppRelease::new(&robot, version);
        release.file("data.bin", &common::image_bytes(4096, index as u64));
        install_ok(&robot, &release);
    }
    let kept = |robot: &Robot| -> Vec<String> {
        robot.app_status()["kept"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().split('-').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kept(&robot), ["1.1.0", "1.2.0", "1.3.0"]);
    // 1.0.0's own files left the object store with it.
    let objects = robot.path("data/rota/apps/objects");
    let object_count = fs::read_dir(&objects)
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().file_type().unwrap().is_file())
        .count();
    // Per release: VERSION and data.bin differ; health and bin/serve are shared.
    assert_eq!(object_count, 3 * 2 + 2);

    // Back to the oldest kept release: it is current, 1.3.0 previous; the next install
    // prunes 1.2.0, the oldest that is neither.
    ok(
        robot.run(&["app", "rollback", APP, "--to", "1.1.0"]),
        "rollback",
    );
    install_ok(&robot, &AppRelease::new(&robot, "1.4.0"));
    assert_eq!(kept(&robot), ["1.1.0", "1.3.0", "1.4.0"]);
}

#[test]
fn refused_app_bundles_change_nothing() {
    let robot = robot();
    install_ok(&robot, &AppRelease::new(&robot, "2.0.0"));
    let before = tree_snapshot(&robot.path("data/rota/apps"));
    let calls_before = robot.systemctl_calls().len();

    let good = robot.app_bundle("good.rota", &AppRelease::new(&robot, "2.1.0"));
    let mut tampered = fs::read(&good).unwrap();
    let last = tampered.len() - 100;
    tampered[last] ^= 0x55;
    fs::write(robot.path("tampered.rota"), &tampered).unwrap();

    let foreign = {
        let stranger = Robot {
            dir: tempfile::tempdir().unwrap(),
            backend: Backend::Uboot,
            key: SigningKey::from_seed([7; 32]),
        };
        let bundle = stranger.app_bundle("foreign.rota", &AppRelease::new(&robot, "2.1.0"));
        let path = robot.path("foreign.rota");
        fs::copy(bundle, &path).unwrap();
        path
    };
    let mut wrong_board = AppRelease::new(&robot, "2.1.0");
    wrong_board.compatible = "other-board".into();
    let mut wrong_os = AppRelease::new(&robot, "2.1.0");
    wrong_os.os_versions = Some(">=9".into());
    let os_bundle = robot.bundle("os.rota", &BundleSpec::new("9.0.0", vec![1; 4096]));

    let cases = [
        ("tampered", robot.path("tampered.rota"), "chunk"),
        ("foreign-signed", foreign, "trusted"),
        (
            "wrong compatible",
            robot.app_bundle("board.rota", &wrong_board),
            "other-board",
        ),
        (
            "downgrade",
            robot.app_bundle("old.rota", &AppRelease::new(&robot, "1.0.0")),
            "older than the current 2.0.0",
        ),
        (
            "unsupported OS",
            robot.app_bundle("os-range.rota", &wrong_os),
            "needs OS >=9",
        ),
        ("an OS bundle", os_bundle, "not an app release"),
    ];
    for (what, bundle, needle) in cases {
        let output = robot.app_install(&bundle);
        assert_eq!(exit_code(&output), 3, "{what}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(needle),
            "{what}: {}",
            stderr(&output)
        );
        assert_eq!(
            tree_snapshot(&robot.path("data/rota/apps")),
            before,
            "{what}"
        );
        assert_eq!(robot.systemctl_calls().len(), calls_before, "{what}");
    }

    // And the OS route refuses an app release by name.
    let output = robot.run(&["install", good.to_str().unwrap()]);
    assert_eq!(exit_code(&output), 3, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("app install"),
        "{}",
        stderr(&output)
    );
}

/// Kills at every app failpoint leave the release before current and complete; the next
/// command settles the interrupted activation and a retry succeeds.
#[test]
fn a_crash_at_any_app_step_leaves_one_complete_release_current() {
    for failpoint in [
        "app-extracted",
        "app-pending-recorded",
        "app-switched",
        "app-restarted",
    ] {
        let robot = robot();
        install_ok(&robot, &AppRelease::new(&robot, "1.0.0"));
        let bundle = robot.app_bundle("two.rota", &AppRelease::new(&robot, "2.0.0"));
        let output = robot
            .app_install_command(&bundle)
            .env("ROTA_FAILPOINT", failpoint)
            .output()
            .unwrap();
        assert_eq!(exit_code(&output), 97, "{failpoint}: {}", stderr(&output));

        let status = robot.app_status();
        assert_eq!(
            status["current"]["version"], "1.0.0",
            "{failpoint}: {status}"
        );
        assert_eq!(robot.current_app_version().as_deref(), Some("1.0.0"));
        if failpoint != "app-extracted" {
            assert_eq!(status["last"]["result"], "interrupted", "{failpoint}");
        }
        install_ok(&robot, &AppRelease::new(&robot, "2.0.0"));
        assert_eq!(robot.current_app_version().as_deref(), Some("2.0.0"));
    }
}

/// SIGKILL at random moments of install and activation: afterwards `current` names a
/// complete release (every file as its version shipped it), the next command settles on one of
/// the two versions, and a retry makes the new one current.
#[test]
fn sigkill_at_random_moments_of_an_app_install_leaves_one_complete_release_current() {
    let robot = robot();
    let mut random = Random(0xa995);
    let big = common::image_bytes(1 << 20, 3);
    let release = |version: &str| {
        let mut release = AppRelease::new(&robot, version);
        release.file("lib/model.bin", &big);
        release.file("lib/version.txt", version.as_bytes());
        release
    };
    // Kill moments are drawn over one whole install as this machine runs it.
    let started = std::time::Instant::now();
    install_ok(&robot, &release("1.0.0"));
    let install_micros = started.elapsed().as_micros() as usize;
    let (mut killed_rounds, mut settled_old, mut killed_after_switch) = (0, 0, 0);
    let mut round = 0;
    // Until 50 kills landed inside an install (a draw past its end kills nothing).
    while killed_rounds < 50 {
        assert!(
            round < 200,
            "only {killed_rounds} kills landed in 200 rounds"
        );
        let old = format!("1.{round}.0");
        let new = format!("1.{}.0", round + 1);
        let bundle = robot.app_bundle("next.rota", &release(&new));
        let mut child = robot
            .app_install_command(&bundle)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_micros(random.below(install_micros) as u64));
        let _ = child.kill();
        let killed = child.wait().unwrap().code().is_none();
        killed_rounds += usize::from(killed);

        let current = robot.current_app_version();
        if let Some(version) = &current {
            let tree = robot.app_dir().join("current");
            assert_eq!(
                fs::read(tree.join("lib/version.txt")).unwrap(),
                version.as_bytes()
            );
            assert_eq!(fs::read(tree.join("lib/model.bin")).unwrap(), big);
        }
        let settled = status_once_unlocked(&robot)["current"]["version"]
            .as_str()
            .map(str::to_owned);
        assert!(
            settled.as_deref() == Some(old.as_str()) || settled.as_deref() == Some(new.as_str()),
            "round {round} (killed: {killed}): {settled:?}"
        );
        settled_old += usize::from(settled.as_deref() == Some(old.as_str()));
        killed_after_switch += usize::from(killed && settled.as_deref() == Some(new.as_str()));
        // A kill between a child's fork and its exec leaves that child holding the lock's
        // descriptor until the exec closes it (close-on-exec): the retry can meet it, briefly.
        let mut output = robot.app_install(&bundle);
        for _ in 0..50 {
            if !stderr(&output).contains("another install is running") {
                break;
            }
            thread::sleep(Duration::from_millis(100));
            output = robot.app_install(&bundle);
        }
        assert!(
            output.status.success() || stderr(&output).contains("already"),
            "round {round}: {}",
            stderr(&output)
        );
        assert_eq!(
            robot.current_app_version().as_deref(),
            Some(new.as_str()),
            "round {round}"
        );
        round += 1;
    }
    // The kills landed inside installs, not only after them.
    eprintln!(
        "{killed_rounds} killed, {settled_old} settled on the old release, {killed_after_switch} killed after its checks"
    );
    assert!(
        settled_old >= 10,
        "only {settled_old} kills came before the checks passed"
    );
    // Half-extracted trees and temp objects were cleaned up along the way.
    let leftovers: Vec<_> = fs::read_dir(robot.app_dir().join("releases"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_os_release_that_the_current_app_release_does_not_support_is_refused() {
    let robot = robot();
    let os = robot.bundle(
        "os-1.rota",
        &BundleSpec::new("1.0.0", common::image_bytes(1 << 20, 5)),
    );
    ok(robot.run(&["install", os.to_str().unwrap()]), "OS 1.0.0");
    assert_eq!(robot.boot(), "B");
    ok(robot.run(&["commit"]), "commit OS 1.0.0");

    let mut release = AppRelease::new(&robot, "1.0.0");
    release.os_versions = Some(">=1, <2".into());
    install_ok(&robot, &release);

    let os_two = robot.bundle(
        "os-2.rota",
        &BundleSpec::new("2.0.0", common::image_bytes(1 << 20, 6)),
    );
    let slot_a = robot.slot("A");
    let output = robot.run(&["install", os_two.to_str().unwrap()]);
    assert_eq!(exit_code(&output), 3, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("app demo (1.0.0-")
            && stderr(&output).contains("needs OS >=1, <2"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        robot.slot("A"),
        slot_a,
        "the refused OS install wrote to the slot"
    );

    let os_one_five = robot.bundle(
        "os-15.rota",
        &BundleSpec::new("1.5.0", common::image_bytes(1 << 20, 7)),
    );
    ok(
        robot.run(&["install", os_one_five.to_str().unwrap()]),
        "OS 1.5.0",
    );
}

/// The daemon's start (as the robot boots after a power cut) switches back an activation whose
/// checks never decided, before anything else runs the app's new code.
#[test]
fn the_daemon_start_switches_back_an_interrupted_activation() {
    let robot = robot();
    install_ok(&robot, &AppRelease::new(&robot, "1.0.0"));
    let bundle = robot.app_bundle("two.rota", &AppRelease::new(&robot, "2.0.0"));
    let output = robot
        .app_install_command(&bundle)
        .env("ROTA_FAILPOINT", "app-switched")
        .output()
        .unwrap();
    assert_eq!(exit_code(&output), 97, "{}", stderr(&output));
    assert_eq!(robot.current_app_version().as_deref(), Some("2.0.0"));

    // No [server]: the daemon settles what is pending and exits.
    ok(robot.run(&["daemon"]), "daemon");
    assert_eq!(robot.current_app_version().as_deref(), Some("1.0.0"));
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(robot.app_dir().join("state.json")).unwrap()).unwrap();
    assert!(state["pending"].is_null(), "{state}");
    assert_eq!(state["last"]["result"], "interrupted");
}

/// Exit codes say whose fault a failed app install is, as for OS installs: 64 for a path that
/// is no bundle file, 4 for a host that does not answer, 3 for a truncated bundle.
#[test]
fn app_install_exit_codes_say_whose_fault_it_was() {
    let robot = robot();
    let missing = robot.run(&["app", "install", "/nonexistent/app.rota"]);
    assert_eq!(exit_code(&missing), 64, "{}", stderr(&missing));
    let unreachable = robot.run(&["app", "install", "http://127.0.0.1:9/app.rota"]);
    assert_eq!(exit_code(&unreachable), 4, "{}", stderr(&unreachable));
    let bundle = robot.app_bundle("one.rota", &AppRelease::new(&robot, "1.0.0"));
    let bytes = fs::read(&bundle).unwrap();
    fs::write(&bundle, &bytes[..bytes.len() / 2]).unwrap();
    let truncated = robot.app_install(&bundle);
    assert_eq!(exit_code(&truncated), 3, "{}", stderr(&truncated));
    assert!(!robot.app_dir().join("current").exists());
}

/// `app status` once the lock is free: a child the killed updater had forked (for systemctl
/// or a check) holds the lock's descriptor until it execs, a moment after the kill.
fn status_once_unlocked(robot: &Robot) -> serde_json::Value {
    for _ in 0..100 {
        let output = robot.run(&["app", "status", APP, "--json"]);
        if exit_code(&output) != 5 {
            let mut all: Vec<serde_json::Value> =
                serde_json::from_str(&ok(output, "app status")).unwrap();
            return all.remove(0);
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("the state lock stayed taken for 2 s after the kill");
}

/// App releases from the fleet: the daemon installs one beside the OS with no reboot and
/// reports `committed`; a release failing its checks is switched back and reported
/// `rolled_back` with the check; a release it keeps is switched to without a request.
#[test]
fn fleet_app_assignments_install_without_a_reboot_and_switch_back_on_a_failed_check() {
    use common::fleet::{assignment, Daemon, Fleet};
    use common::http::Server;
    use rota_protocol::robot::RobotEvent;

    let robot = robot();
    let os_state = robot.state_name();
    let fleet = Fleet::start();
    robot.join_fleet(&fleet, "now");
    let daemon = Daemon::start(&robot, None);
    let serve = |file: &str, release: &AppRelease, deployment: &str, downgrade: bool| {
        let bundle = robot.app_bundle(file, release);
        let cdn = Server::start(fs::read(&bundle).unwrap(), Vec::new());
        let mut assigned = assignment(&robot, deployment, &bundle, &cdn.url);
        assigned.app = Some(APP.into());
        assigned.allow_downgrade = downgrade;
        // The fleet's environment for the app, one value per release.
        assigned.env = [("RELEASE".to_string(), release.version.clone())].into();
        fleet.assign(assigned);
        cdn
    };
    let reported = |count: usize| {
        robot.wait_for("the outcome report", || {
            let names = fleet.event_names();
            names
                .iter()
                .filter(|name| ["committed", "rolled_back", "failed"].contains(name))
                .count()
                >= count
        });
    };

    let one = AppRelease::new(&robot, "1.0.0");
    let _cdn_one = serve("one.rota", &one, "dep_1", false);
    reported(1);
    assert_eq!(
        fleet.event_names(),
        ["installing", "installed", "committed"]
    );
    assert_eq!(robot.current_app_version().as_deref(), Some("1.0.0"));

    let _cdn_two = serve(
        "two.rota",
        &AppRelease::new(&robot, "2.0.0").broken(),
        "dep_2",
        false,
    );
    reported(2);
    let reason = fleet
        .events()
        .into_iter()
        .find_map(|event| match event {
            RobotEvent::RolledBack { reason } => Some(reason),
            _ => None,
        })
        .expect("a rolled_back report");
    assert!(reason.contains("\"reports healthy\" failed"), "{reason}");
    assert_eq!(robot.current_app_version().as_deref(), Some("1.0.0"));
    // Switched back with the environment it ran with.
    let environment = robot.app_dir().join("environment");
    assert!(
        fs::read_to_string(&environment)
            .unwrap()
            .contains("RELEASE=\"1.0.0\"\n"),
        "{}",
        fs::read_to_string(&environment).unwrap()
    );
    assert_eq!(fs::metadata(&environment).unwrap().mode() & 0o777, 0o600);

    let _cdn_three = serve(
        "three.rota",
        &AppRelease::new(&robot, "3.0.0"),
        "dep_3",
        false,
    );
    reported(3);
    assert_eq!(robot.current_app_version().as_deref(), Some("3.0.0"));

    // Back to 1.0.0, which the robot keeps: nothing is fetched.
    let cdn_back = serve("one-again.rota", &one, "dep_back", true);
    reported(4);
    assert_eq!(robot.current_app_version().as_deref(), Some("1.0.0"));
    assert!(cdn_back.requests().is_empty(), "{:?}", cdn_back.requests());
    assert_eq!(fleet.event_names().last(), Some(&"committed"));
    drop(daemon);
    // The OS lifecycle never moved.
    assert_eq!(robot.reboots(), 0);
    assert_eq!(robot.state_name(), os_state);
}

/// The message after a failed check named the previous release (1.0.0) as the one switched
/// back to, where 1.1.0 was current again.
#[test]
fn a_failed_install_names_the_release_current_again_not_the_one_before_it() {
    let robot = robot();
    install_ok(&robot, &AppRelease::new(&robot, "1.0.0"));
    install_ok(&robot, &AppRelease::new(&robot, "1.1.0"));
    let bundle = robot.app_bundle("broken.rota", &AppRelease::new(&robot, "1.2.0").broken());
    let output = robot.app_install(&bundle);
    assert_eq!(exit_code(&output), 2);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("switched back to 1.1.0-"), "{said}");
    assert_eq!(robot.current_app_version().as_deref(), Some("1.1.0"));
}

/// `app status --json | head` panicked with "failed printing to stdout: Broken pipe": a reader
/// that leaves early is no error of the command.
#[test]
fn app_output_into_a_closed_pipe_does_not_panic() {
    let robot = robot();
    install_ok(&robot, &AppRelease::new(&robot, "1.0.0"));
    for command in ["status --json", "list", "list --json", "status"] {
        let script = format!(
            "{} --config {} app {command} 2>{} | {{ exec 0<&-; sleep 0.3; }}",
            common::BIN,
            robot.path("updater.toml").display(),
            robot.path("stderr").display()
        );
        let status = std::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(status.success());
        let stderr = fs::read_to_string(robot.path("stderr")).unwrap();
        assert!(!stderr.contains("panicked"), "app {command}: {stderr}");
    }
}

/// `app status` and `app list` answer while an install holds the updater's lock (showing what
/// is pending instead of settling it); `app install` and `app rollback` wait their turn (5).
#[test]
fn app_status_answers_while_another_updater_holds_the_lock() {
    let robot = robot();
    install_ok(&robot, &AppRelease::new(&robot, "1.0.0"));
    let lock = robot.path("data/rota/state.lock");
    // --no-fork: the process killed below is the one holding the lock (a forked `sleep`
    // would keep it, and outlive the test).
    let mut holder = std::process::Command::new("flock")
        .arg("--no-fork")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    // flock has the lock once a second flock on it fails at once.
    robot.wait_for("flock to hold the lock", || {
        !std::process::Command::new("flock")
            .args(["-n"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    });
    let status = robot.run(&["app", "status", APP, "--json"]);
    let listed = robot.run(&["app", "list"]);
    let rollback = robot.run(&["app", "rollback", APP, "--to", "1.0.0"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let status: serde_json::Value = serde_json::from_str(&ok(status, "app status")).unwrap();
    assert_eq!(status[0]["current"]["version"], "1.0.0");
    assert!(ok(listed, "app list").contains("1.0.0-"));
    assert_eq!(exit_code(&rollback), 5, "{}", stderr(&rollback));
}
