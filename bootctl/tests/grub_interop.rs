//! grubenv interop with grub-editenv, both ways.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let grubenv = dir.join("grubenv");
    grub_editenv(&grubenv, &["create"]);
    write_bootctl_config(
        &dir,
        &format!("backend = \"grub\"\ngrubenv = \"{}\"\n", grubenv.display()),
        "A",
    );
    (tmp, dir, grubenv)
}

fn status(dir: &std::path::Path) -> Value {
    serde_json::from_str(&ok(bootctl(dir).args(["status", "--json"]))).unwrap()
}

#[test]
fn grub_editenv_to_rota_and_back() {
    let (_tmp, dir, grubenv) = setup();
    // grub-editenv -> rota-bootctl, with a value that needs GRUB's escaping.
    grub_editenv(
        &grubenv,
        &[
            "set",
            "ORDER=A B",
            "A_OK=1",
            "A_TRY=0",
            "B_OK=0",
            "B_TRY=0",
            "note=back\\slash\nnewline",
        ],
    );
    let st = status(&dir);
    assert_eq!(st["next"], "A");
    assert_eq!(st["slots"][0]["state"], "good");
    assert_eq!(st["slots"][1]["state"], "bad");

    // rota-bootctl -> grub-editenv
    ok(bootctl(&dir).args(["trial", "B"]));
    let listed = grub_editenv(&grubenv, &["list"]);
    eprintln!("grub-editenv list after `rota-bootctl trial B`:\n{listed}");
    for line in ["ORDER=B A", "A_OK=1", "A_TRY=0", "B_OK=1", "B_TRY=0"] {
        assert!(
            listed.lines().any(|l| l == line),
            "{line:?} missing in\n{listed}"
        );
    }
    assert!(
        listed.contains("note=back\\slash\nnewline"),
        "escaped value survived:\n{listed}"
    );
    assert_eq!(std::fs::metadata(&grubenv).unwrap().len(), 1024);

    // GRUB's boot-time save_env (as grub-editenv) on a Rota-written block: B_TRY=1.
    grub_editenv(&grubenv, &["set", "B_TRY=1"]);
    let st = status(&dir);
    assert_eq!(st["slots"][1]["state"], "trial");
    assert_eq!(st["slots"][1]["attempts_left"], 0);
    assert_eq!(
        st["next"], "A",
        "B was tried and not confirmed: A boots next"
    );

    // A foreign tool appending a new variable keeps the block readable for Rota.
    grub_editenv(&grubenv, &["set", "extra=1"]);
    ok(bootctl(&dir).args(["mark-good", "B"]));
    let listed = grub_editenv(&grubenv, &["list"]);
    eprintln!("grub-editenv list after grub-editenv set B_TRY=1, extra=1 and `rota-bootctl mark-good B`:\n{listed}");
    for line in ["ORDER=B A", "B_OK=1", "B_TRY=0", "extra=1"] {
        assert!(
            listed.lines().any(|l| l == line),
            "{line:?} missing in\n{listed}"
        );
    }
    let st = status(&dir);
    assert_eq!(st["next"], "B");
    assert_eq!(st["slots"][1]["state"], "good");
}

#[test]
fn mark_bad_puts_the_other_slot_first() {
    let (_tmp, dir, grubenv) = setup();
    ok(bootctl(&dir).args(["set-primary", "B"]));
    ok(bootctl(&dir).args(["mark-good", "A"]));
    ok(bootctl(&dir).args(["mark-bad", "B"]));
    let listed = grub_editenv(&grubenv, &["list"]);
    for line in ["ORDER=A B", "B_OK=0", "B_TRY=0", "A_OK=1"] {
        assert!(
            listed.lines().any(|l| l == line),
            "{line:?} missing in\n{listed}"
        );
    }
}

#[test]
fn grub_refuses_more_than_one_attempt() {
    let (_tmp, dir, grubenv) = setup();
    let before = std::fs::read(&grubenv).unwrap();
    let out = run(bootctl(&dir).args(["trial", "B", "--attempts", "3"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly one"));
    assert_eq!(std::fs::read(&grubenv).unwrap(), before, "nothing written");
}
