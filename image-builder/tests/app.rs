//! `rota-image app` through the real binary: a directory and its rota-app.toml become a signed
//! app release, byte-identical when built twice, whose tree and spec `inspect` shows.

mod common;

use common::{fails_with, ok};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

const SPEC: &str = r#"name = "nav"
units = ["nav.service"]
os_versions = ">=1.4, <2"
check_deadline_secs = 20

[[checks]]
name = "answers"
http = "http://127.0.0.1:8080/health"
body_contains = '{"status":"healthy"}'

[[checks]]
name = "running"
unit = "nav.service"
"#;

fn app_tree(dir: &Path) {
    let app = dir.join("nav");
    fs::create_dir_all(app.join("bin")).unwrap();
    fs::write(app.join("rota-app.toml"), SPEC).unwrap();
    fs::write(
        app.join("bin/nav"),
        "#!/bin/sh\nexec python3 -m http.server\n",
    )
    .unwrap();
    fs::set_permissions(app.join("bin/nav"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(app.join("model.bin"), vec![7u8; 100_000]).unwrap();
    symlink("bin/nav", app.join("start")).unwrap();
}

fn build(dir: &Path, out: &str) -> serde_json::Value {
    let stdout = ok(
        dir,
        &[
            "app",
            "nav",
            "--compatible",
            "lekiwi-rpi5",
            "--version",
            "1.5.0",
            "--key",
            "keys/release.key",
            "--git-commit",
            "abc123",
            "-o",
            out,
            "--json",
        ],
    );
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn an_app_directory_becomes_a_reproducible_signed_app_release() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    fs::create_dir(dir.join("keys")).unwrap();
    ok(dir, &["keygen", "--out", "keys/release"]);
    app_tree(dir);

    let first = build(dir, "nav-1.rota");
    // Another mtime on the tree must not change the release: every mtime is the build time.
    fs::write(dir.join("nav/model.bin"), vec![7u8; 100_000]).unwrap();
    build(dir, "nav-2.rota");
    assert_eq!(
        fs::read(dir.join("nav-1.rota")).unwrap(),
        fs::read(dir.join("nav-2.rota")).unwrap()
    );
    assert_eq!(first["app"], "nav");
    // rota-app.toml, bin, bin/nav, model.bin, start.
    assert_eq!(first["entries"], 5);

    let inspected: serde_json::Value = serde_json::from_str(&ok(
        dir,
        &["inspect", "nav-1.rota", "--keyring", "keys", "--json"],
    ))
    .unwrap();
    let manifest = &inspected["manifest"];
    assert_eq!(manifest["images"][0]["slot_class"], "app");
    assert_eq!(manifest["images"][0]["name"], "nav");
    assert_eq!(manifest["app"]["units"][0], "nav.service");
    assert_eq!(manifest["app"]["check_deadline_secs"], 20);
    assert_eq!(
        manifest["app"]["checks"][0]["probe"]["http"]["body_contains"],
        "{\"status\":\"healthy\"}"
    );
    assert_eq!(manifest["app"]["os_versions"], ">=1.4, <2");
    assert!(!dir.join("nav-1.rota.tar").exists());
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".rota-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_bad_spec_or_tree_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    fs::create_dir(dir.join("keys")).unwrap();
    ok(dir, &["keygen", "--out", "keys/release"]);
    app_tree(dir);
    let args = [
        "app",
        "nav",
        "--compatible",
        "b",
        "--version",
        "1.0.0",
        "--key",
        "keys/release.key",
        "-o",
        "out.rota",
    ];

    fs::write(dir.join("nav/rota-app.toml"), "name = \"Nav\"\n").unwrap();
    assert_fails(dir, &args, "app name");
    fs::write(
        dir.join("nav/rota-app.toml"),
        "name = \"nav\"\n[[checks]]\nname = \"x\"\nunit = \"a\"\nhttp = \"http://h/\"\n",
    )
    .unwrap();
    assert_fails(dir, &args, "exactly one of unit, http, command");
    fs::remove_file(dir.join("nav/rota-app.toml")).unwrap();
    assert_fails(dir, &args, "rota-app.toml");

    fs::write(dir.join("nav/rota-app.toml"), "name = \"nav\"\n").unwrap();
    nix_mkfifo(&dir.join("nav/pipe"));
    assert_fails(dir, &args, "only regular files, directories and symlinks");
    assert!(!dir.join("out.rota").exists());
}

fn assert_fails(dir: &Path, args: &[&str], reason: &str) {
    let text = fails_with(dir, 1, args);
    assert!(text.contains(reason), "{reason:?} not in: {text}");
}

fn nix_mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}
