//! Helpers shared by the integration tests: run `rota-bootctl` and the upstream tools on
//! fixtures made in temp dirs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_rota-bootctl");

/// Runs a command and returns its output; panics if it could not be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `rota-bootctl` with no config file (a path that does not exist) and the given cmdline.
pub fn bootctl(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(dir.join("bootctl.toml"));
    cmd.arg("--cmdline").arg(dir.join("cmdline"));
    cmd
}

/// Writes `bootctl.toml` and a cmdline booted from `slot` into `dir`.
pub fn write_bootctl_config(dir: &Path, backend_line: &str, slot: &str) {
    std::fs::write(dir.join("bootctl.toml"), backend_line).unwrap();
    std::fs::write(
        dir.join("cmdline"),
        format!(
            "console=ttyS0 root=PARTLABEL=rootfs-{} rota.slot={slot}\n",
            slot.to_lowercase()
        ),
    )
    .unwrap();
}

/// Writes an fw_env.config with the given copies (device, offset, size) and returns its path.
pub fn write_fw_config(dir: &Path, copies: &[(&Path, u64, u64)]) -> PathBuf {
    let mut text = String::from("# device offset env-size\n");
    for (device, offset, size) in copies {
        text += &format!("{} {offset:#x} {size:#x}\n", device.display());
    }
    let path = dir.join("fw_env.config");
    std::fs::write(&path, text).unwrap();
    path
}

/// `mkenvimage` of `vars` (`name=value` lines) into a file of `size` bytes.
pub fn mkenvimage(dir: &Path, name: &str, vars: &str, size: u64, redundant: bool) -> PathBuf {
    let input = dir.join(format!("{name}.txt"));
    std::fs::write(&input, vars).unwrap();
    let out = dir.join(name);
    let mut cmd = Command::new("mkenvimage");
    cmd.arg("-s").arg(format!("{size:#x}"));
    if redundant {
        cmd.arg("-r");
    }
    cmd.arg("-o").arg(&out).arg(&input);
    ok(&mut cmd);
    out
}

pub fn fw_printenv(config: &Path) -> String {
    ok(Command::new("fw_printenv").arg("-c").arg(config))
}

pub fn fw_setenv(config: &Path, name: &str, value: &str) {
    ok(Command::new("fw_setenv")
        .arg("-c")
        .arg(config)
        .arg(name)
        .arg(value));
}

pub fn grub_editenv(file: &Path, args: &[&str]) -> String {
    ok(Command::new("grub-editenv").arg(file).args(args))
}

/// Copies `len` bytes of `src` at `src_offset` into `dst` at `dst_offset` (placing an env
/// image inside a disk image).
pub fn splice(dst: &Path, dst_offset: u64, src: &[u8]) {
    let mut image = std::fs::read(dst).unwrap();
    let at = dst_offset as usize;
    image[at..at + src.len()].copy_from_slice(src);
    std::fs::write(dst, image).unwrap();
}
