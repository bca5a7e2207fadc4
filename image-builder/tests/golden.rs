//! `rota-image golden` checked with sgdisk, mtools, e2fsck and qemu-img; `rota-image flash`
//! of the result into files, and its refusal of devices in use.

mod common;

use common::{fails_with, make_tree, ok, tool};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

const LAYOUT: &str = r#"
[disk]
size = "256MiB"
arch = "arm64"

[boot]
size = "32MiB"
dir = "bootfiles"

[rootfs-a]
image = "rootfs.img"
size = "64MiB"

[rootfs-b]
contents = "copy-of-a"

[data]
size = "rest"
dir = "datafiles"
"#;

/// A layout directory: boot files, a data tree and an ext4 rootfs image.
fn fixture(dir: &Path) {
    fs::create_dir_all(dir.join("bootfiles/overlays")).unwrap();
    fs::write(
        dir.join("bootfiles/boot.scr"),
        "echo booting slot ${BOOT_ORDER}\n",
    )
    .unwrap();
    fs::write(
        dir.join("bootfiles/overlays/robot.dtbo"),
        vec![0xd0u8; 5000],
    )
    .unwrap();
    fs::create_dir_all(dir.join("datafiles/rota")).unwrap();
    fs::write(dir.join("datafiles/rota/README"), "state lives here\n").unwrap();
    make_tree(&dir.join("tree"));
    ok(dir, &["rootfs", "tree", "-o", "rootfs.img", "--fs", "ext4"]);
    fs::write(dir.join("layout.toml"), LAYOUT).unwrap();
}

fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

#[test]
fn golden_image_has_a_valid_gpt_and_the_contents() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let json = ok(
        dir.path(),
        &[
            "golden",
            "--layout",
            "layout.toml",
            "-o",
            "disk.img",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let disk = dir.path().join("disk.img");
    let disk_arg = disk.to_str().unwrap();

    let verify = tool("sgdisk", &["-v", disk_arg]);
    assert!(verify.contains("No problems found"), "{verify}");
    let table = tool("sgdisk", &["-p", disk_arg]);
    for line in [
        "1            2048           67583   32.0 MiB    EF00  boot",
        "2           67584          198655   64.0 MiB    8305  rootfs-a",
        "3          198656          329727   64.0 MiB    8305  rootfs-b",
        "4          329728          522239   94.0 MiB    8300  data",
    ] {
        assert!(table.contains(line), "missing {line:?} in\n{table}");
    }

    // Boot files, read back with mtools from inside the disk image.
    let boot = format!("{disk_arg}@@1M");
    assert_eq!(
        tool("mtype", &["-i", &boot, "::/boot.scr"]),
        "echo booting slot ${BOOT_ORDER}\n"
    );
    let dtbo = dir.path().join("robot.dtbo");
    tool(
        "mcopy",
        &[
            "-i",
            &boot,
            "::/overlays/robot.dtbo",
            dtbo.to_str().unwrap(),
        ],
    );
    assert_eq!(fs::read(&dtbo).unwrap(), vec![0xd0u8; 5000]);

    // Both slots hold the rootfs image byte for byte, then zeros.
    let rootfs = fs::read(dir.path().join("rootfs.img")).unwrap();
    let parts = report["partitions"].as_array().unwrap();
    for slot in &parts[1..3] {
        let (offset, size) = (
            slot["offset"].as_u64().unwrap(),
            slot["size"].as_u64().unwrap(),
        );
        let content = read_at(&disk, offset, size);
        assert!(
            content[..rootfs.len()] == rootfs[..],
            "{} differs from the rootfs image",
            slot["name"]
        );
        assert!(content[rootfs.len()..].iter().all(|&b| b == 0));
    }

    // The data partition is a clean ext4 holding the data tree.
    let data = &parts[3];
    let data_img = dir.path().join("data.img");
    fs::write(
        &data_img,
        read_at(
            &disk,
            data["offset"].as_u64().unwrap(),
            data["size"].as_u64().unwrap(),
        ),
    )
    .unwrap();
    tool("e2fsck", &["-fn", data_img.to_str().unwrap()]);
    assert_eq!(
        tool(
            "debugfs",
            &["-R", "cat /rota/README", data_img.to_str().unwrap()]
        ),
        "state lives here\n"
    );

    // Sparse: a 256 MiB disk whose content is a few MiB occupies a few MiB.
    let allocated = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&disk).unwrap()) * 512;
    assert!(
        allocated < 16 << 20,
        "disk image allocates {allocated} bytes"
    );

    // Same inputs and epoch, same disk.
    ok(
        dir.path(),
        &["golden", "--layout", "layout.toml", "-o", "disk2.img"],
    );
    assert!(
        fs::read(&disk).unwrap() == fs::read(dir.path().join("disk2.img")).unwrap(),
        "golden is not reproducible"
    );
}

#[test]
fn qcow2_holds_the_same_disk() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    ok(
        dir.path(),
        &["golden", "--layout", "layout.toml", "-o", "disk.img"],
    );
    ok(
        dir.path(),
        &[
            "golden",
            "--layout",
            "layout.toml",
            "-o",
            "disk.qcow2",
            "--format",
            "qcow2",
        ],
    );
    let info = tool(
        "qemu-img",
        &[
            "info",
            "--output=json",
            dir.path().join("disk.qcow2").to_str().unwrap(),
        ],
    );
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    tool(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            dir.path().join("disk.img").to_str().unwrap(),
            dir.path().join("disk.qcow2").to_str().unwrap(),
        ],
    );
    assert_eq!(
        fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".rota"))
            .count(),
        0,
        "no scratch files left"
    );
}

/// Each broken layout must fail with exit 1 and a message naming the key at fault.
#[test]
fn malformed_layouts_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let cases = [
        (
            LAYOUT.replace("arch = \"arm64\"", "arch = \"mips\""),
            "disk.arch",
        ),
        (
            LAYOUT.replace("size = \"256MiB\"", "size = \"96MiB\""),
            "disk.size",
        ),
        (
            LAYOUT.replace("size = \"32MiB\"", "size = \"big\""),
            "boot.size",
        ),
        (
            LAYOUT.replace("size = \"64MiB\"", "size = \"8MiB\""),
            "rootfs-a.size",
        ),
        (
            LAYOUT.replace("\"copy-of-a\"", "\"same\""),
            "rootfs-b.contents",
        ),
        (
            LAYOUT.replace("dir = \"bootfiles\"", "dir = \"no-such-dir\""),
            "boot.dir",
        ),
        (
            LAYOUT.replace("image = \"rootfs.img\"", "image = \"missing.img\""),
            "rootfs-a.image",
        ),
        (LAYOUT.replace("[rootfs-b]", "[rootfs-c]"), "rootfs-c"),
        (
            LAYOUT.replace("arch = \"arm64\"", "arch = \"arm64\"\nsector = 4096"),
            "sector",
        ),
        (
            LAYOUT.replace("[data]\nsize = \"rest\"\ndir = \"datafiles\"", ""),
            "[data]",
        ),
        (LAYOUT.replace("size = \"32MiB\"", "size = [32]"), "[boot]"),
        ("[disk\nsize = 1".to_string(), "line 1"),
    ];
    for (text, key) in cases {
        fs::write(dir.path().join("bad.toml"), &text).unwrap();
        let message = fails_with(
            dir.path(),
            1,
            &["golden", "--layout", "bad.toml", "-o", "bad.img"],
        );
        assert!(message.contains(key), "expected {key:?} in: {message}");
        assert!(message.contains("bad.toml"), "the file is named: {message}");
    }
}

#[test]
fn flash_writes_a_sparse_image_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    ok(
        dir.path(),
        &["golden", "--layout", "layout.toml", "-o", "disk.img"],
    );
    // A stale target with data everywhere: flashing must leave exactly the image.
    fs::write(dir.path().join("target.img"), vec![0x55u8; 300 << 20]).unwrap();
    let json = ok(
        dir.path(),
        &["flash", "disk.img", "target.img", "--verify", "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["target_kind"], "file");
    assert_eq!(report["image_size"], 256u64 << 20);
    assert!(report["written_bytes"].as_u64().unwrap() <= report["mapped_bytes"].as_u64().unwrap());
    assert!(
        report["mapped_bytes"].as_u64().unwrap() < 32 << 20,
        "{report}"
    );
    tool(
        "cmp",
        &[
            dir.path().join("disk.img").to_str().unwrap(),
            dir.path().join("target.img").to_str().unwrap(),
        ],
    );
    let verify = tool(
        "sgdisk",
        &["-v", dir.path().join("target.img").to_str().unwrap()],
    );
    assert!(verify.contains("No problems found"), "{verify}");
    // A target that does not exist yet is created.
    ok(dir.path(), &["flash", "disk.img", "new.img"]);
    tool(
        "cmp",
        &[
            dir.path().join("disk.img").to_str().unwrap(),
            dir.path().join("new.img").to_str().unwrap(),
        ],
    );
}

/// The block device holding `/` must be refused before anything is opened for writing. The
/// image path does not exist on purpose: if the safety check were ever broken, the command
/// would fail on the missing image instead of overwriting this machine's disk.
#[test]
fn flash_refuses_the_running_system() {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_source = mountinfo
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            (fields[4] == "/").then(|| fields[dash + 2].to_string())
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let is_block = fs::metadata(&root_source)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false);
    assert!(
        is_block,
        "/ is mounted from {root_source}, not a block device: this test needs one"
    );
    let message = fails_with(
        dir.path(),
        1,
        &["flash", "does-not-exist.img", &root_source, "--yes"],
    );
    assert!(
        message.contains("refusing to write") && message.contains("running system"),
        "{message}"
    );
}

#[test]
fn flash_refuses_the_image_itself_and_odd_targets() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("disk.img"), vec![1u8; 4096]).unwrap();
    let message = fails_with(dir.path(), 1, &["flash", "disk.img", "disk.img"]);
    assert!(message.contains("it is the image itself"), "{message}");
    let message = fails_with(dir.path(), 1, &["flash", "disk.img", "/dev/null"]);
    assert!(
        message.contains("neither a regular file nor a block device"),
        "{message}"
    );
}
