//! `rota-updater daemon` on a robot without a fleet: it finishes an install by hand that a
//! power cut interrupted (what rota-updater.service used to run `resume` for) and exits 0, so
//! systemd does not restart it. And its inventory reports to a loopback fleet API: once at
//! start-up, not with every poll, and not in the way of polling when the server is older than
//! the inventory. The fleet side is in fleet/server/tests/daemons.rs, against a real
//! rota-server.

mod common;

use std::fs;

use common::fleet::{Daemon, Fleet};
use common::{image_bytes, ok, Backend, BundleSpec, Robot, SLOT_SIZE};

#[test]
fn without_a_server_the_daemon_finishes_an_interrupted_install_and_exits_0() {
    let robot = Robot::new(Backend::Grub);
    let image = image_bytes(2 << 20, 40);
    let bundle = robot.bundle("v2.rota", &BundleSpec::new("2.0.0", image.clone()));
    let interrupted = robot
        .updater()
        .arg("install")
        .arg(&bundle)
        .args(["--checkpoint-bytes", "1"])
        .env("ROTA_FAILPOINT", "after-progress-saved@2")
        .output()
        .unwrap();
    assert_eq!(
        interrupted.status.code(),
        Some(97),
        "the failpoint stopped it"
    );
    assert_eq!(robot.state_name(), "installing");

    let daemon = robot.run(&["daemon"]);
    let stderr = String::from_utf8_lossy(&daemon.stderr).into_owned();
    ok(daemon, "daemon");
    assert!(stderr.contains("no [server]"), "{stderr}");
    assert_eq!(robot.state_name(), "reboot-pending");
    assert_eq!(&robot.slot("B")[..image.len()], image);
    assert_eq!(robot.boot(), "B");
    ok(robot.run(&["commit"]), "commit");
    assert_eq!(robot.state_name(), "committed");

    // Nothing in flight: it exits at once.
    ok(robot.run(&["daemon"]), "idle daemon");
    assert_eq!(robot.state_name(), "committed");
}

/// Adds robot tags to the `[server]` section `join_fleet` wrote last.
fn tag_robot(robot: &Robot) {
    let path = robot.path("updater.toml");
    let mut config = fs::read_to_string(&path).unwrap();
    config.push_str("tags = { site = \"lab\", arm = \"so-100\" }\n");
    fs::write(&path, config).unwrap();
}

#[test]
fn the_inventory_goes_out_at_start_up_and_not_with_every_poll() {
    let robot = Robot::new(Backend::Grub);
    let fleet = Fleet::start();
    robot.join_fleet(&fleet, "now");
    tag_robot(&robot);
    let daemon = Daemon::start(&robot, None);
    robot.wait_for("a dozen polls", || fleet.polls() >= 12);
    let sent = fleet.inventories();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    let inventory = &sent[0];
    let tags: Vec<String> = inventory
        .tags
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    assert_eq!(tags, ["arm=so-100", "site=lab"]);
    let disk = inventory.disk.clone().unwrap();
    assert_eq!(disk.slot_a_bytes, Some(SLOT_SIZE));
    assert_eq!(disk.slot_b_bytes, Some(SLOT_SIZE));
    assert!(disk.data_bytes.unwrap() >= disk.data_free_bytes.unwrap());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(inventory.kernel.as_deref(), Some(kernel.trim()));
    assert!(inventory.board.as_deref().is_some_and(|b| !b.is_empty()));
    for address in &inventory.addresses {
        assert!(
            !address.starts_with("127.") && address != "::1" && !address.starts_with("fe80"),
            "{address}"
        );
    }

    // A restart sends it again: the server may have lost it meanwhile.
    drop(daemon);
    let polls = fleet.polls();
    let _daemon = Daemon::start(&robot, None);
    robot.wait_for("polls after the restart", || fleet.polls() >= polls + 5);
    assert_eq!(fleet.inventories().len(), 2);
}

#[test]
fn a_server_older_than_the_inventory_route_does_not_stop_the_polling() {
    let robot = Robot::new(Backend::Grub);
    let fleet = Fleet::start_without_inventory();
    robot.join_fleet(&fleet, "now");
    let _daemon = Daemon::start(&robot, None);
    robot.wait_for("a dozen polls", || fleet.polls() >= 12);
    let log = fs::read_to_string(robot.path("daemon.log")).unwrap();
    assert_eq!(
        log.matches("did not take the inventory").count(),
        1,
        "asked once, not per poll:\n{log}"
    );
}
