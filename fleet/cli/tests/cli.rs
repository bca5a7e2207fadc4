//! The CLI without a server: help, usage errors, exit codes, where credentials go. The
//! commands against a live server are tested in rota-server's integration tests.

use std::process::{Command, Output};

fn rota(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("ROTA_SERVER")
        .env_remove("ROTA_API_KEY")
        .output()
        .unwrap()
}

#[test]
fn help_teaches_exit_codes_and_targets() {
    let home = tempfile::tempdir().unwrap();
    let help = rota(home.path(), &["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(
        text.contains("Exit codes") && text.contains("3 `--wait` ended with robots rolled back"),
        "{text}"
    );
    let deploy = String::from_utf8(rota(home.path(), &["deploy", "--help"]).stdout).unwrap();
    assert!(
        deploy.contains("group:NAME") && deploy.contains("[default: 1800]"),
        "{deploy}"
    );
}

#[test]
fn usage_errors_exit_2_and_missing_login_exits_1() {
    let home = tempfile::tempdir().unwrap();
    let bad_target = rota(home.path(), &["deploy", "2.0.0", "--to", "everyone"]);
    assert_eq!(bad_target.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad_target.stderr).contains("all, group:NAME, env:NAME, robot:ID")
    );
    let no_login = rota(home.path(), &["robots"]);
    assert_eq!(no_login.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_login.stderr).contains("rota login"));
    assert!(no_login.stdout.is_empty());
}

#[test]
fn unreachable_server_is_an_error_naming_it() {
    let home = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let out = Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["--server", "http://127.0.0.1:9", "status"])
        .env("HOME", home.path())
        .env("ROTA_API_KEY", "rota_op_x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach http://127.0.0.1:9"));
}
