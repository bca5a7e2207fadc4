//! `rota-updater daemon` working on fleet assignments served by a loopback fleet API: rollback
//! assignments (downgrade allowed, and a switch to the inactive slot when it still holds the
//! release) and update windows in the robot's local time (`ROTA_TEST_NOW`).

mod common;

use common::fleet::{assignment, Daemon, Fleet};
use common::http::Server;
use common::*;
use rota_protocol::robot::{RobotEvent, Slot, UpdateWindow};

/// Installs `bundle` by hand, boots it and commits it; returns the slot it runs from.
fn install_by_hand(robot: &Robot, bundle: &std::path::Path) -> String {
    ok(
        robot.updater().arg("install").arg(bundle).output().unwrap(),
        "install",
    );
    let slot = robot.boot();
    assert_committed(robot);
    slot
}

fn assert_committed(robot: &Robot) {
    let said = ok(robot.run(&["commit"]), "commit");
    assert!(said.starts_with("committed"), "{said}");
}

fn running_version(robot: &Robot) -> String {
    let status = robot.status_json();
    let booted = status["booted"].clone();
    let slot = status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|slot| slot["slot"] == booted)
        .unwrap()
        .clone();
    slot["version"].as_str().unwrap().to_owned()
}

/// A robot that ran 1.0.0 from B and now runs `2.0.0` from A, committed: B still holds 1.0.0.
/// Returns the robot and the 1.0.0 bundle.
fn robot_after_an_update(backend: Backend, security_of_2: u32) -> (Robot, std::path::PathBuf) {
    let robot = Robot::new(backend);
    let v1 = robot.bundle(
        "v1.rota",
        &BundleSpec::new("1.0.0", image_bytes(1 << 20, 10)),
    );
    let mut spec_2 = BundleSpec::new("2.0.0", image_bytes(1 << 20, 20));
    spec_2.security_version = security_of_2;
    let v2 = robot.bundle("v2.rota", &spec_2);
    assert_eq!(install_by_hand(&robot, &v1), "B");
    assert_eq!(install_by_hand(&robot, &v2), "A");
    assert_eq!(running_version(&robot), "2.0.0");
    (robot, v1)
}

fn failure(fleet: &Fleet) -> String {
    fleet
        .events()
        .into_iter()
        .find_map(|event| match event {
            RobotEvent::Failed { error } => Some(error),
            _ => None,
        })
        .expect("a failed event")
}

#[test]
fn a_rollback_to_the_release_the_other_slot_holds_switches_to_it_without_downloading() {
    for backend in both_backends() {
        let (robot, v1) = robot_after_an_update(backend, 1);
        let slot_b_before = robot.slot("B");
        let cdn = Server::start(read(&v1), Vec::new());
        let fleet = Fleet::start();
        robot.join_fleet(&fleet, "now");
        let mut rollback = assignment(&robot, "dep_rollback", &v1, &cdn.url);
        rollback.allow_downgrade = true;
        fleet.assign(rollback);

        let daemon = Daemon::start(&robot, None);
        robot.wait_for("the reboot request", || robot.reboots() == 1);
        robot.wait_for("the rebooting report", || {
            fleet.event_names().contains(&"rebooting")
        });
        drop(daemon);
        assert_eq!(
            fleet.events(),
            [
                RobotEvent::Switched { slot: Slot::B },
                RobotEvent::Rebooting
            ],
            "{backend:?}"
        );
        assert_eq!(robot.state_name(), "reboot-pending");

        // The power cycle: the bootloader tries B once, and commit runs its health checks.
        assert_eq!(
            robot.boot(),
            "B",
            "{backend:?}: the trial slot is the other one"
        );
        assert_committed(&robot);
        assert_eq!(running_version(&robot), "1.0.0");
        let _daemon = Daemon::start(&robot, None);
        robot.wait_for("the committed report", || {
            fleet.event_names().contains(&"committed")
        });
        assert_eq!(
            fleet.event_names(),
            ["switched", "rebooting", "trial", "committed"],
            "{backend:?}"
        );
        assert_eq!(
            cdn.requests(),
            [],
            "{backend:?}: the bundle was never fetched"
        );
        assert!(robot.slot("B") == slot_b_before, "slot B was not written");
        assert_eq!(robot.reboots(), 1);
    }
}

#[test]
fn a_switch_needs_allow_downgrade_and_never_goes_below_the_security_floor() {
    // (security version of 2.0.0, allow_downgrade, the refusal)
    let cases = [
        // Same security version: only the downgrade stands in the way.
        (1, false, "older than the running 2.0.0"),
        // 2.0.0 raised the floor to 2: 1.0.0 is refused even as a rollback.
        (2, true, "below this robot's floor 2"),
    ];
    for (security_of_2, allow_downgrade, refusal) in cases {
        let (robot, v1) = robot_after_an_update(Backend::Grub, security_of_2);
        let cdn = Server::start(read(&v1), Vec::new());
        let fleet = Fleet::start();
        robot.join_fleet(&fleet, "now");
        let mut rollback = assignment(&robot, "dep_rollback", &v1, &cdn.url);
        rollback.allow_downgrade = allow_downgrade;
        fleet.assign(rollback);
        let daemon = Daemon::start(&robot, None);
        robot.wait_for("the failed report", || {
            fleet.event_names().contains(&"failed")
        });
        drop(daemon);
        assert_eq!(fleet.event_names(), ["failed"]);
        assert!(failure(&fleet).contains(refusal), "{}", failure(&fleet));
        // Everything as it was.
        assert_eq!(robot.reboots(), 0);
        assert_eq!(robot.next_boot(), "A", "the boot env was not touched");
        assert_eq!(robot.state_name(), "committed");
        assert_eq!(running_version(&robot), "2.0.0");
        assert_eq!(cdn.requests(), []);
    }
}

#[test]
fn a_rollback_assignment_installs_a_lower_version_and_without_allow_downgrade_it_is_refused() {
    let robot = Robot::new(Backend::Uboot);
    let v2 = robot.bundle(
        "v2.rota",
        &BundleSpec::new("2.0.0", image_bytes(1 << 20, 20)),
    );
    let image = image_bytes(1 << 20, 15);
    let v1_5 = robot.bundle("v1.5.rota", &BundleSpec::new("1.5.0", image.clone()));
    assert_eq!(install_by_hand(&robot, &v2), "B");
    let cdn = Server::start(read(&v1_5), Vec::new());
    let fleet = Fleet::start();
    robot.join_fleet(&fleet, "now");

    fleet.assign(assignment(&robot, "dep_plain", &v1_5, &cdn.url));
    let daemon = Daemon::start(&robot, None);
    robot.wait_for("the failed report", || {
        fleet.event_names().contains(&"failed")
    });
    assert!(
        failure(&fleet).contains("version 1.5.0 is older than the running 2.0.0"),
        "{}",
        failure(&fleet)
    );
    assert_eq!(robot.reboots(), 0);
    assert_eq!(robot.state_name(), "committed");

    let mut rollback = assignment(&robot, "dep_rollback", &v1_5, &cdn.url);
    rollback.allow_downgrade = true;
    fleet.assign(rollback);
    robot.wait_for("the reboot request", || robot.reboots() == 1);
    robot.wait_for("the rebooting report", || {
        fleet.event_names().contains(&"rebooting")
    });
    drop(daemon);
    assert_eq!(
        fleet.event_names(),
        [
            "failed",
            "downloading",
            "installing",
            "installed",
            "rebooting"
        ]
    );
    assert_eq!(&robot.slot("A")[..image.len()], image);
    assert_eq!(robot.boot(), "A");
    assert_committed(&robot);
    assert_eq!(running_version(&robot), "1.5.0");
}

/// A robot on A, offered 2.0.0 with the update window 02:00-04:00, with reboot policy
/// `reboot`.
fn nightly_deployment(reboot: &str) -> (Robot, Server, Fleet) {
    let robot = Robot::new(Backend::Grub);
    let v2 = robot.bundle(
        "v2.rota",
        &BundleSpec::new("2.0.0", image_bytes(1 << 20, 20)),
    );
    let cdn = Server::start(read(&v2), Vec::new());
    let fleet = Fleet::start();
    robot.join_fleet(&fleet, reboot);
    let mut nightly = assignment(&robot, "dep_nightly", &v2, &cdn.url);
    nightly.update_window = Some(UpdateWindow::parse("02:00-04:00").unwrap());
    fleet.assign(nightly);
    (robot, cdn, fleet)
}

#[test]
fn outside_its_update_window_an_assignment_waits_reported_once_and_installs_when_it_opens() {
    let (robot, cdn, fleet) = nightly_deployment("now");

    // Tuesday 23:30: the window opens on Wednesday at 02:00.
    let daemon = Daemon::start(&robot, Some("2026-11-24T23:30"));
    robot.wait_for("the waiting report", || !fleet.events().is_empty());
    let polls_then = fleet.polls();
    robot.wait_for("five more polls", || fleet.polls() >= polls_then + 5);
    drop(daemon);
    assert_eq!(
        fleet.events(),
        [RobotEvent::WaitingForWindow {
            opens_at: "2026-11-25 02:00".into()
        }],
        "reported once, however many polls"
    );
    assert_eq!(cdn.requests(), [], "nothing downloaded");
    assert_eq!(robot.state_name(), "idle", "nothing installed");
    assert_eq!(robot.next_boot(), "A");

    // Wednesday 02:10: inside.
    let _daemon = Daemon::start(&robot, Some("2026-11-25T02:10"));
    robot.wait_for("the reboot request", || robot.reboots() == 1);
    robot.wait_for("the rebooting report", || {
        fleet.event_names().contains(&"rebooting")
    });
    assert_eq!(
        fleet.event_names(),
        [
            "waiting_for_window",
            "downloading",
            "installing",
            "installed",
            "rebooting"
        ]
    );
    assert_eq!(robot.next_boot(), "B");
}

#[test]
fn an_installed_update_reboots_only_inside_its_window_even_after_a_daemon_restart() {
    // Installed inside the window but not rebooted (reboot = manual stands in for an install
    // that finished as the window closed).
    let (robot, _cdn, fleet) = nightly_deployment("manual");
    let daemon = Daemon::start(&robot, Some("2026-11-25T03:50"));
    robot.wait_for("the installed report", || {
        fleet.event_names().contains(&"installed")
    });
    drop(daemon);
    assert_eq!(robot.state_name(), "reboot-pending");

    // A restarted daemon, now allowed to reboot, at 04:30: the window is closed, no reboot.
    // The window is in the state file: the server is out of reach (nobody listens on the
    // discard port) and does not need to say it again.
    robot.join_fleet_at("http://127.0.0.1:9", "now");
    let daemon = Daemon::start(&robot, Some("2026-11-25T04:30"));
    robot.wait_for("the wait to be logged", || {
        std::fs::read_to_string(robot.path("daemon.log"))
            .unwrap()
            .contains("rebooting when the update window opens at 2026-11-26 02:00")
    });
    drop(daemon);
    assert_eq!(robot.reboots(), 0);

    let _daemon = Daemon::start(&robot, Some("2026-11-26T02:00"));
    robot.wait_for("the reboot request", || robot.reboots() == 1);
    assert_eq!(robot.state_name(), "reboot-pending");
}
