//! `rota-updater daemon` on a robot without a fleet: it finishes an install by hand that a
//! power cut interrupted (what rota-updater.service used to run `resume` for) and exits 0, so
//! systemd does not restart it. The fleet side is in fleet/server/tests/daemons.rs, against a
//! real rota-server.

mod common;

use common::{image_bytes, ok, Backend, BundleSpec, Robot};

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
