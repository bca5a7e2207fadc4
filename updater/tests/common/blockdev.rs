//! Loop devices and mounts for the power-cut harness, detached and unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A loop device over `file` (buffered I/O, as `losetup` sets it up by default).
pub struct Loop(pub PathBuf);

impl Loop {
    pub fn attach(file: &Path) -> Loop {
        let device = run(Command::new("losetup")
            .args(["--find", "--show", "--direct-io=off"])
            .arg(file));
        Loop(PathBuf::from(device.trim()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Loop {
    /// Detaches, and waits until the kernel let go of the backing file: `losetup -d` only asks
    /// for it, and while something still has the device open (udev probing it) the file stays
    /// busy, which made unmounting the filesystem it lives on fail now and then.
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        let Some(name) = self.0.file_name() else {
            return;
        };
        let attached = Path::new("/sys/block").join(name).join("loop/backing_file");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while attached.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

pub struct Mount(pub PathBuf);

impl Mount {
    pub fn new(device: &Path, at: &Path, fstype: &str, options: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("mount")
            .args(["-t", fstype, "-o", options])
            .arg(device)
            .arg(at));
        Mount(at.to_owned())
    }

    /// Unmounts now, and fails loudly if that does not work.
    pub fn unmount(mut self) {
        run(Command::new("umount").arg(&self.0));
        self.0 = PathBuf::new();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
}
