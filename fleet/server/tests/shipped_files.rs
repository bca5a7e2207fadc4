//! The files the Debian package ships beside the binary: the example config is one the server
//! accepts, and the unit passes `systemd-analyze verify` and runs the server with that config.

use std::fs;
use std::path::Path;
use std::process::Command;

use rota_server::config::{Args, FileConfig, Settings};

const BIN: &str = env!("CARGO_BIN_EXE_rota-server");

fn shipped(path: &str) -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn shipped_config_parses_and_keeps_state_where_the_unit_allows_writes() {
    let file = FileConfig::parse(&shipped("server.toml"), "server.toml").unwrap();
    let settings = Settings::resolve(Args::default(), file).unwrap();
    assert_eq!(settings.data_dir, Path::new("/var/lib/rota-server"));
    assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        settings.database_url,
        "sqlite:///var/lib/rota-server/rota.db?mode=rwc"
    );
    let unit = shipped("systemd/rota-server.service");
    assert!(unit.lines().any(|l| l == "StateDirectory=rota-server"));
    assert!(unit
        .lines()
        .any(|l| l == "ExecStart=/usr/bin/rota-server --config /etc/rota/server.toml"));
}

#[test]
fn shipped_unit_verifies_with_systemd_analyze() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rota-server.service");
    // verify checks that ExecStart exists: point it at the binary under test.
    fs::write(
        &path,
        shipped("systemd/rota-server.service").replace("/usr/bin/rota-server", BIN),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        // The man: links name pages the packages install (xtask's tests render them), not
        // this host.
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (from the systemd package) is installed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );
}
