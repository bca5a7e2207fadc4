//! The exit codes `rota-updater --help` and updater/README.md document, one case each, and the
//! sources that used to give the wrong one (stdin, a directory, a missing path).

mod common;

use std::fs;
use std::io::Write;
use std::process::{Output, Stdio};

use common::http::{Action, Server};
use common::*;

const FAILING_CHECK: &str =
    "[[health.checks]]\nname = \"always-fails\"\ncommand = [\"false\"]\ntimeout_secs = 5\n";

fn flip(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
    bytes[at] ^= 0x40;
    bytes
}

/// `install -` with `input` on stdin (written from a thread: the updater may stop reading).
fn install_from_stdin(robot: &Robot, input: Vec<u8>) -> Output {
    let mut child = robot
        .updater()
        .args(["install", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

fn bundle_bytes(robot: &Robot, seed: u64) -> Vec<u8> {
    fs::read(robot.bundle(
        "v2.rota",
        &BundleSpec::new("2.0.0", image_bytes(1 << 20, seed)),
    ))
    .unwrap()
}

/// The codes and what they mean, as `--help` prints them.
fn documented_codes(help: &str) -> Vec<u8> {
    let table = help
        .split("Exit codes:\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    table
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn every_documented_exit_code_is_what_the_updater_returns() {
    let help = ok(
        std::process::Command::new(BIN)
            .arg("--help")
            .output()
            .unwrap(),
        "--help",
    );
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut checked = Vec::new();
    let mut check = |code: u8, case: &str, output: Output, needle: &str| {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            stderr(&output)
        );
        assert_eq!(exit_code(&output), i32::from(code), "{case}: {text}");
        assert!(text.contains(needle), "{case}: {text:?} lacks {needle:?}");
        checked.push(code);
    };

    // 0: success, --help and --version.
    let robot = Robot::new(Backend::Uboot);
    let bundle = robot.bundle(
        "v2.rota",
        &BundleSpec::new("2.0.0", image_bytes(1 << 20, 30)),
    );
    check(
        0,
        "install",
        robot.run(&["install", bundle.to_str().unwrap()]),
        "installed 2.0.0",
    );
    check(0, "--help", robot.run(&["--help"]), "Exit codes:");
    check(0, "--version", robot.run(&["--version"]), "rota-updater");

    // 1: any other error (here: the config file is missing).
    let output = std::process::Command::new(BIN)
        .args(["--config", "/nonexistent/updater.toml", "status"])
        .output()
        .unwrap();
    check(1, "missing config", output, "config");

    // 2: commit: a health check failed, reboot requested.
    let robot = Robot::with_checks(Backend::Uboot, FAILING_CHECK);
    let bundle = robot.bundle(
        "v2.rota",
        &BundleSpec::new("2.0.0", image_bytes(1 << 20, 31)),
    );
    ok(robot.run(&["install", bundle.to_str().unwrap()]), "install");
    assert_eq!(robot.boot(), "B");
    check(2, "failed trial", robot.run(&["commit"]), "failed check");

    // 3: the bundle is bad or refused.
    let robot = Robot::new(Backend::Uboot);
    let good = bundle_bytes(&robot, 32);
    let path = robot.path("bad.rota");
    fs::write(&path, flip(good.clone(), 40)).unwrap();
    check(
        3,
        "altered manifest",
        robot.run(&["install", path.to_str().unwrap()]),
        "does not verify",
    );

    // 4: transport: unreachable (404), stdin ended early.
    let server = Server::start(good.clone(), vec![Action::Status(404)]);
    check(4, "404", robot.run(&["install", &server.url]), "404");
    check(
        4,
        "stdin cut",
        install_from_stdin(&robot, good[..good.len() / 2].to_vec()),
        "input ended early",
    );

    // 5: busy: another rota-updater holds the state lock.
    let store = rota_updater::store::Store::new(robot.path("data/rota/state"));
    let lock = store.lock().unwrap();
    check(
        5,
        "locked",
        robot.run(&["install", path.to_str().unwrap()]),
        "another install is running",
    );
    drop(lock);

    // 64: usage: clap's errors (which exit 2 by default, commit's code), bad bundle paths.
    check(
        64,
        "unknown command",
        robot.run(&["frobnicate"]),
        "frobnicate",
    );
    check(64, "no source", robot.run(&["install"]), "<SOURCE>");
    check(
        64,
        "bad number",
        robot.run(&["install", "--checkpoint-bytes", "many", "x.rota"]),
        "many",
    );
    check(
        64,
        "directory",
        robot.run(&["install", robot.path("keys").to_str().unwrap()]),
        "is a directory",
    );
    check(
        64,
        "missing path",
        robot.run(&["install", "/nonexistent/v2.rota"]),
        "No such file",
    );

    checked.sort_unstable();
    checked.dedup();
    assert_eq!(
        documented_codes(&help),
        checked,
        "--help lists exactly these"
    );
    for code in &checked {
        assert!(
            readme.contains(&format!("| {code} |")),
            "updater/README.md does not document exit code {code}"
        );
    }
}

/// Regression (fault campaign at c503221): bytes after the bundle were refused from a file but
/// accepted from stdin. Now they are found after the image and refused before the trial is
/// armed.
#[test]
fn stdin_with_bytes_after_the_bundle_is_refused_before_the_trial_is_armed() {
    let robot = Robot::new(Backend::Uboot);
    let bundle = bundle_bytes(&robot, 33);
    let output = install_from_stdin(&robot, [&bundle[..], b"trailing"].concat());
    let stderr = stderr(&output);
    assert_eq!(exit_code(&output), 3, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "goes on after the bundle's end (its signed length is {} bytes)",
            bundle.len()
        )),
        "{stderr}"
    );
    assert_ne!(robot.state_name(), "reboot-pending");
    assert_eq!(robot.next_boot(), "A", "no trial of B");

    // The bundle alone installs.
    ok(install_from_stdin(&robot, bundle), "install from stdin");
    assert_eq!(robot.state_name(), "reboot-pending");
}

/// Regression (fault campaign at c503221): a cut stdin was "bundle rejected: bundle truncated
/// in the payload", exit 1; it is the input ending early (transport), wherever it ends.
#[test]
fn a_cut_stdin_says_the_input_ended_early_with_the_transport_exit_code() {
    let robot = Robot::new(Backend::Uboot);
    let bundle = bundle_bytes(&robot, 34);
    for (name, cut) in [
        ("header", 20),
        ("payload", bundle.len() / 2),
        ("last byte", bundle.len() - 1),
    ] {
        let output = install_from_stdin(&robot, bundle[..cut].to_vec());
        let stderr = stderr(&output);
        assert_eq!(exit_code(&output), 4, "{name}: {stderr}");
        assert!(stderr.contains("the input ended early"), "{name}: {stderr}");
        assert!(!stderr.contains("rejected"), "{name}: {stderr}");
        assert_ne!(robot.state_name(), "reboot-pending", "{name}");
    }
}

/// Regression (fault campaign at c503221): a directory as the source gave "I/O error reading
/// the bundle's header" with the bad-bundle exit code; a missing path printed the OS error twice.
#[test]
fn a_directory_or_missing_path_is_named_once_with_the_usage_exit_code() {
    let robot = Robot::new(Backend::Uboot);
    let dir = robot.path("keys");
    let output = robot.run(&["install", dir.to_str().unwrap()]);
    let stderr_text = stderr(&output);
    assert_eq!(exit_code(&output), 64, "{stderr_text}");
    assert!(
        stderr_text.contains(&format!("{} is a directory", dir.display())),
        "{stderr_text}"
    );

    let output = robot.run(&["install", "/nonexistent/v2.rota"]);
    let stderr_text = stderr(&output);
    assert_eq!(exit_code(&output), 64, "{stderr_text}");
    assert_eq!(
        stderr_text.matches("No such file or directory").count(),
        1,
        "{stderr_text}"
    );
}
