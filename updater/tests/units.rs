//! The shipped systemd units pass `systemd-analyze verify` and keep the ordering the commit
//! logic relies on.

use std::fs;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_rota-updater");

fn unit(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("systemd")
            .join(name),
    )
    .unwrap()
}

#[test]
fn units_verify_with_systemd_analyze() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in ["rota-commit.service", "rota-updater.service"] {
        let path = dir.path().join(name);
        // verify checks that ExecStart exists: point it at the binary under test.
        fs::write(&path, unit(name).replace("/usr/bin/rota-updater", BIN)).unwrap();
        paths.push(path);
    }
    let output = Command::new("systemd-analyze")
        // The man: links name pages the packages install (xtask's tests render them), not
        // this host.
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("systemd-analyze (from the systemd package) is installed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );
}

#[test]
fn commit_unit_is_a_watched_notify_service_before_boot_complete() {
    let text = unit("rota-commit.service");
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "Before=boot-complete.target",
        "RequiredBy=boot-complete.target",
        "FailureAction=reboot",
        "ExecStart=/usr/bin/rota-updater commit",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "rota-commit.service lacks {line:?}"
        );
    }
    let daemon = unit("rota-updater.service");
    assert!(daemon
        .lines()
        .any(|l| l == "After=rota-commit.service network-online.target"));
    // A daemon that stays down drops the robot off its fleet: no exit code may keep it down.
    assert!(daemon.lines().any(|l| l == "Restart=on-failure"));
    assert!(!daemon.contains("RestartPreventExitStatus"));
}
