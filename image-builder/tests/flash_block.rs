//! `rota-image flash` onto real block devices: loop devices over temporary files. Needs root
//! and loop support (CI runs as root); the guard detaches and unmounts whatever it set up.

mod common;

use common::{fails_with, make_tree, ok, tool};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device over a file, detached on drop; `mounts` are
/// unmounted first.
struct Loop {
    device: String,
    mounts: Vec<PathBuf>,
}

impl Loop {
    fn attach(file: &Path) -> Loop {
        let device = tool("losetup", &["-f", "--show", file.to_str().unwrap()])
            .trim()
            .to_string();
        Loop {
            device,
            mounts: Vec::new(),
        }
    }

    /// A loop device over `size` bytes of `file` from `offset`.
    fn attach_at(file: &Path, offset: u64, size: u64) -> Loop {
        let (offset, size) = (offset.to_string(), size.to_string());
        let args = [
            "-f",
            "--show",
            "-o",
            &offset,
            "--sizelimit",
            &size,
            file.to_str().unwrap(),
        ];
        Loop {
            device: tool("losetup", &args).trim().to_string(),
            mounts: Vec::new(),
        }
    }

    fn mount(&mut self, device: &str, at: &Path) {
        fs::create_dir_all(at).unwrap();
        tool("mount", &[device, at.to_str().unwrap()]);
        self.mounts.push(at.to_path_buf());
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for at in self.mounts.drain(..).rev() {
            let _ = Command::new("umount").arg(&at).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

fn golden(dir: &Path) {
    fs::create_dir_all(dir.join("boot")).unwrap();
    fs::write(dir.join("boot/boot.scr"), "boot\n").unwrap();
    make_tree(&dir.join("tree"));
    ok(dir, &["rootfs", "tree", "-o", "rootfs.img", "--fs", "ext4"]);
    fs::write(
        dir.join("layout.toml"),
        "[disk]\nsize = \"128MiB\"\narch = \"x86-64\"\n[boot]\nsize = \"16MiB\"\ndir = \"boot\"\n\
         [rootfs-a]\nimage = \"rootfs.img\"\nsize = \"32MiB\"\n[data]\nsize = \"rest\"\n",
    )
    .unwrap();
    ok(
        dir,
        &["golden", "--layout", "layout.toml", "-o", "disk.img"],
    );
}

#[test]
fn flash_to_a_loop_device_and_refuse_it_once_mounted() {
    let dir = tempfile::tempdir().unwrap();
    golden(dir.path());
    // Old data everywhere on the "card": what the image maps must replace it.
    let backing = dir.path().join("card.img");
    fs::write(&backing, vec![0x5au8; 128 << 20]).unwrap();
    let card = Loop::attach(&backing);

    let json = ok(
        dir.path(),
        &[
            "flash",
            "disk.img",
            &card.device,
            "--yes",
            "--verify",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["target_kind"], "block-device");
    assert_eq!(report["verified"], true);
    tool("sync", &[]);
    // Every mapped range of the image is on the device; sgdisk sees a valid table.
    let verify = tool("sgdisk", &["-v", &card.device]);
    assert!(verify.contains("No problems found"), "{verify}");
    // The image's holes were not written, so the old bytes are still there, as with bmaptool:
    // the file systems must not care. Slot A (at 17 MiB, 32 MiB long) must be clean and hold
    // the tree. (Partition devices need udev, absent here: a loop device at the offset
    // stands in for one.)
    let mut slot_a = Loop::attach_at(&backing, 17 << 20, 32 << 20);
    tool("e2fsck", &["-fn", &slot_a.device]);
    assert_eq!(
        tool("debugfs", &["-R", "cat /etc/hostname", &slot_a.device]),
        "robot-7\n"
    );

    // Mounted: refused, and the message says where.
    let device = slot_a.device.clone();
    slot_a.mount(&device, &dir.path().join("mnt"));
    let message = fails_with(dir.path(), 1, &["flash", "disk.img", &device, "--yes"]);
    assert!(
        message.contains("refusing to write") && message.contains("is mounted on"),
        "{message}"
    );
    drop(slot_a);

    // Not mounted, but no --yes and no terminal: refused, nothing written.
    let message = fails_with(dir.path(), 1, &["flash", "disk.img", &card.device]);
    assert!(message.contains("--yes"), "{message}");
}
