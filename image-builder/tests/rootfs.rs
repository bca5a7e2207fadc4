//! `rota-image rootfs` against the real mkfs tools: reproducible output, a clean file system,
//! readable content, and clear errors when the source does not fit.

mod common;

use common::{fails_with, make_tree, ok, tool};
use std::fs;
use std::path::Path;

/// Two builds from two copies of the tree made at different times must be byte-identical.
fn assert_reproducible(fs_kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("tree1"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    make_tree(&dir.path().join("tree2"));
    ok(
        dir.path(),
        &["rootfs", "tree1", "-o", "one.img", "--fs", fs_kind],
    );
    ok(
        dir.path(),
        &["rootfs", "tree2", "-o", "two.img", "--fs", fs_kind],
    );
    let one = fs::read(dir.path().join("one.img")).unwrap();
    let two = fs::read(dir.path().join("two.img")).unwrap();
    assert!(one == two, "{fs_kind}: two builds differ");
    // A different epoch must change the image (the times really are taken from it).
    let other = std::process::Command::new(env!("CARGO_BIN_EXE_rota-image"))
        .args(["rootfs", "tree1", "-o", "three.img", "--fs", fs_kind])
        .current_dir(dir.path())
        .env("SOURCE_DATE_EPOCH", "1600000000")
        .status()
        .unwrap();
    assert!(other.success());
    assert_ne!(
        one,
        fs::read(dir.path().join("three.img")).unwrap(),
        "{fs_kind}: epoch ignored"
    );
}

#[test]
fn ext4_is_reproducible() {
    assert_reproducible("ext4");
}

#[test]
fn erofs_is_reproducible() {
    assert_reproducible("erofs");
}

#[test]
fn squashfs_is_reproducible() {
    assert_reproducible("squashfs");
}

fn debugfs(image: &Path, request: &str) -> String {
    tool("debugfs", &["-R", request, image.to_str().unwrap()])
}

#[test]
fn ext4_is_clean_and_holds_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("tree"));
    let json = ok(
        dir.path(),
        &["rootfs", "tree", "-o", "root.img", "--fs", "ext4", "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["fs"], "ext4");
    assert_eq!(report["source_date_epoch"], 1_700_000_000);
    let image = dir.path().join("root.img");
    tool("e2fsck", &["-fn", image.to_str().unwrap()]);
    assert_eq!(debugfs(&image, "cat /etc/hostname"), "robot-7\n");
    assert_eq!(
        debugfs(&image, "cat /usr/bin/robotd").len(),
        fs::metadata(dir.path().join("tree/usr/bin/robotd"))
            .unwrap()
            .len() as usize
    );
    let robotd = debugfs(&image, "stat /usr/bin/robotd");
    assert!(robotd.contains("Mode:  04755"), "{robotd}");
    assert!(robotd.contains("mtime: 0x6553f100"), "{robotd}");
    assert!(debugfs(&image, "stat \"/var/lib/app/state file\"").contains("Size: 1"));
    assert!(debugfs(&image, "stat /var/lib/app/owned").contains("User:  1000   Group:  1000"));
    assert!(debugfs(&image, "stat /etc/hostname").contains("Links: 2"));
    let uuid = tool("dumpe2fs", &["-h", image.to_str().unwrap()]);
    assert!(
        uuid.contains(report["uuid"].as_str().unwrap()),
        "the reported UUID is the file system's"
    );
}

#[test]
fn tarball_sources_keep_modes_and_owners() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("tree"));
    tool(
        "tar",
        &[
            "-C",
            dir.path().join("tree").to_str().unwrap(),
            "--numeric-owner",
            "-czf",
            dir.path().join("tree.tar.gz").to_str().unwrap(),
            ".",
        ],
    );
    tool(
        "sh",
        &[
            "-c",
            &format!(
                "tar -C {0}/tree --numeric-owner -cf - . | zstd -q -o {0}/tree.tar.zst",
                dir.path().display()
            ),
        ],
    );
    ok(
        dir.path(),
        &["rootfs", "tree", "-o", "from-dir.img", "--fs", "squashfs"],
    );
    for tarball in ["tree.tar.gz", "tree.tar.zst"] {
        ok(
            dir.path(),
            &["rootfs", tarball, "-o", "from-tar.img", "--fs", "ext4"],
        );
        let image = dir.path().join("from-tar.img");
        tool("e2fsck", &["-fn", image.to_str().unwrap()]);
        assert!(
            debugfs(&image, "stat /var/lib/app/owned").contains("User:  1000   Group:  1000"),
            "{tarball}"
        );
        assert!(
            debugfs(&image, "stat /usr/bin/robotd").contains("Mode:  04755"),
            "{tarball}"
        );
        // Same tree, same image, whichever way it came in.
        ok(
            dir.path(),
            &["rootfs", tarball, "-o", "from-tar.sqfs", "--fs", "squashfs"],
        );
        assert_eq!(
            fs::read(dir.path().join("from-tar.sqfs")).unwrap(),
            fs::read(dir.path().join("from-dir.img")).unwrap(),
            "{tarball}"
        );
    }
}

#[test]
fn all_root_makes_root_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("tree"));
    ok(
        dir.path(),
        &[
            "rootfs",
            "tree",
            "-o",
            "root.img",
            "--fs",
            "ext4",
            "--all-root",
        ],
    );
    let stat = debugfs(&dir.path().join("root.img"), "stat /var/lib/app/owned");
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");
}

#[test]
fn a_tree_that_does_not_fit_names_the_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    // 6 MiB of poorly compressible content.
    let mut state = 0x9e3779b97f4a7c15u64;
    let noise: Vec<u8> = (0..6 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    fs::write(tree.join("usr/bin/big"), noise).unwrap();
    for (fs_kind, size) in [
        ("ext4", "4MiB"),
        ("ext4", "6500KiB"),
        ("erofs", "2MiB"),
        ("squashfs", "1MiB"),
    ] {
        let text = fails_with(
            dir.path(),
            1,
            &[
                "rootfs",
                "tree",
                "-o",
                "small.img",
                "--fs",
                fs_kind,
                "--size",
                size,
            ],
        );
        assert!(
            text.contains("does not fit in --size") && text.contains("needs at least"),
            "{fs_kind} {size}: {text}"
        );
        assert!(
            !dir.path().join("small.img").exists(),
            "{fs_kind}: no partial image is left"
        );
    }
    let text = fails_with(
        dir.path(),
        2,
        &[
            "rootfs",
            "tree",
            "-o",
            "x.img",
            "--fs",
            "ext4",
            "--size",
            "12 parsecs",
        ],
    );
    assert!(text.contains("unknown unit"), "{text}");
    let text = fails_with(
        dir.path(),
        1,
        &["rootfs", "missing", "-o", "x.img", "--fs", "ext4"],
    );
    assert!(text.contains("does not exist"), "{text}");
}
