//! A robot in a temp dir: file-backed slots, a real U-Boot (mkenvimage + fw_env.config) or GRUB
//! (grub-editenv) boot environment, a cmdline file, a keyring, an updater config; plus a
//! bootloader simulator that applies the shipped boot scripts' rules, and bundles built with
//! the rota-bundle writer.
#![allow(dead_code)]

pub mod apps;
pub mod blockdev;
pub mod fleet;
pub mod http;
pub mod power_cut;
pub mod recorder;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rota_bundle::{BundleBuilder, BundleReader, Compression, Keyring, SigningKey, SlotClass};
use rota_updater::state::BundleInfo;

pub const BIN: &str = env!("CARGO_BIN_EXE_rota-updater");
pub const COMPATIBLE: &str = "test-board";
pub const SLOT_SIZE: u64 = 8 << 20;
pub const ENV_SIZE: u64 = 0x4000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uboot,
    Grub,
}

pub struct Robot {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    pub key: SigningKey,
}

pub fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    ok(output, &format!("{command:?}"))
}

/// Deterministic image bytes that do not compress to nothing.
pub fn image_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..length)
        .map(|index| {
            if index % 3 == 0 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
            }
            // Every other 4 KiB block is zeros, so zstd has something to do.
            if (index / 4096) % 2 == 1 {
                0
            } else {
                (state >> 33) as u8
            }
        })
        .collect()
}

/// What a bundle should contain.
#[derive(Clone)]
pub struct BundleSpec {
    pub compatible: String,
    pub version: String,
    pub security_version: u32,
    pub image: Vec<u8>,
    pub compression: Compression,
    pub signed: bool,
}

impl BundleSpec {
    pub fn new(version: &str, image: Vec<u8>) -> BundleSpec {
        BundleSpec {
            compatible: COMPATIBLE.into(),
            version: version.into(),
            security_version: 1,
            image,
            // What `rota-image bundle --zstd` writes, with a window small enough that a
            // fetched range's prefix reaches back over several chunks of these small images.
            compression: Compression::ZstdPrefixed { window: 128 << 10 },
            signed: true,
        }
    }
}

impl Robot {
    pub fn new(backend: Backend) -> Robot {
        Robot::with_checks(backend, "")
    }

    /// `checks` is appended to the updater config (TOML `[[health.checks]]` tables).
    pub fn with_checks(backend: Backend, checks: &str) -> Robot {
        let dir = tempfile::tempdir().unwrap();
        let robot = Robot {
            dir,
            backend,
            key: SigningKey::from_seed([42; 32]),
        };
        let path = |name: &str| robot.path(name);
        fs::write(path("slot-a"), image_bytes(SLOT_SIZE as usize, 1)).unwrap();
        fs::write(path("slot-b"), image_bytes(SLOT_SIZE as usize, 2)).unwrap();
        fs::create_dir(path("keys")).unwrap();
        robot
            .key
            .public_key()
            .write_new(&path("keys/release.pub"))
            .unwrap();
        match backend {
            Backend::Uboot => {
                fs::write(
                    path("env.txt"),
                    "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
                )
                .unwrap();
                run_ok(
                    Command::new("mkenvimage")
                        .arg("-s")
                        .arg(format!("{ENV_SIZE:#x}"))
                        .arg("-o")
                        .arg(path("uboot.env"))
                        .arg(path("env.txt")),
                );
                fs::write(
                    path("fw_env.config"),
                    format!("{} 0x0 {ENV_SIZE:#x}\n", path("uboot.env").display()),
                )
                .unwrap();
                fs::write(
                    path("bootctl.toml"),
                    format!(
                        "backend = \"uboot\"\nuboot_config = \"{}\"\ncmdline = \"{}\"\n",
                        path("fw_env.config").display(),
                        path("cmdline").display()
                    ),
                )
                .unwrap();
            }
            Backend::Grub => {
                let grubenv = path("grubenv");
                run_ok(Command::new("grub-editenv").arg(&grubenv).arg("create"));
                run_ok(Command::new("grub-editenv").arg(&grubenv).args([
                    "set",
                    "ORDER=A B",
                    "A_OK=1",
                    "A_TRY=0",
                    "B_OK=1",
                    "B_TRY=0",
                ]));
                fs::write(
                    path("bootctl.toml"),
                    format!(
                        "backend = \"grub\"\ngrubenv = \"{}\"\ncmdline = \"{}\"\n",
                        grubenv.display(),
                        path("cmdline").display()
                    ),
                )
                .unwrap();
            }
        }
        apps::write_systemctl(&robot);
        robot.write_config(checks);
        // First boot: the bootloader picks A, and rota-commit.service confirms it.
        assert_eq!(robot.boot(), "A");
        ok(robot.run(&["commit"]), "commit on first boot");
        robot
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_config(&self, checks: &str) {
        let path = |name: &str| self.path(name).display().to_string();
        fs::write(
            self.path("updater.toml"),
            format!(
                r#"compatible = "{COMPATIBLE}"
keyring_dir = "{keys}"
state_path = "{state}"
bootctl_config = "{bootctl}"
trial_attempts = 1
reboot_command = ["sh", "-c", "echo reboot >> {reboots}"]

[slots]
A = "{a}"
B = "{b}"

[health]
deadline_secs = 30
boot_complete_units = false
systemctl = "{systemctl}"

[download]
retries = 8
backoff_initial_ms = 10
backoff_max_ms = 50
timeout_secs = 10

[apps]
dir = "{apps}"

{checks}
"#,
                keys = path("keys"),
                state = path("data/rota/state"),
                bootctl = path("bootctl.toml"),
                reboots = path("reboots"),
                systemctl = path("systemctl"),
                apps = path("data/rota/apps"),
                a = path("slot-a"),
                b = path("slot-b"),
            ),
        )
        .unwrap();
    }

    /// The updater with this robot's config; ROTA_FAILPOINT cleared unless set by the caller.
    pub fn updater(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(self.path("updater.toml"))
            .env_remove("ROTA_FAILPOINT")
            .env_remove("NOTIFY_SOCKET")
            .env("ROTA_LOG", "info");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.updater().args(args).output().unwrap()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let stdout = ok(self.run(&["status", "--json"]), "status --json");
        serde_json::from_str(&stdout).unwrap()
    }

    pub fn state_name(&self) -> String {
        self.status_json()["state"].as_str().unwrap().to_owned()
    }

    pub fn reboots(&self) -> usize {
        fs::read_to_string(self.path("reboots"))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    pub fn slot(&self, slot: &str) -> Vec<u8> {
        fs::read(self.path(&format!("slot-{}", slot.to_lowercase()))).unwrap()
    }

    /// Builds a bundle signed with this robot's key (or unsigned) and returns its path.
    pub fn bundle(&self, name: &str, spec: &BundleSpec) -> PathBuf {
        let mut builder =
            BundleBuilder::new(spec.compatible.clone(), spec.version.parse().unwrap());
        builder
            .build_time(1_700_000_000)
            .security_version(spec.security_version)
            .compression(spec.compression)
            .add_image("rootfs", SlotClass::Rootfs, &spec.image[..]);
        if spec.signed {
            builder.sign_with(&self.key);
        }
        let mut bytes = Vec::new();
        builder.write_to(&mut bytes).unwrap();
        let path = self.path(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    /// What the updater calls the bundle at `bundle` (digest, version, ...), read through its
    /// signature check with this robot's keyring.
    pub fn bundle_info(&self, bundle: &Path) -> BundleInfo {
        let keyring = Keyring::load_dir(&self.path("keys")).unwrap();
        let reader = BundleReader::open(fs::File::open(bundle).unwrap(), &keyring).unwrap();
        rota_updater::install::bundle_info(reader.verified_manifest())
    }

    /// The boot environment as the upstream tools print it, sorted.
    pub fn env(&self) -> Vec<String> {
        let text = match self.backend {
            Backend::Uboot => run_ok(
                Command::new("fw_printenv")
                    .arg("-c")
                    .arg(self.path("fw_env.config")),
            ),
            Backend::Grub => run_ok(
                Command::new("grub-editenv")
                    .arg(self.path("grubenv"))
                    .arg("list"),
            ),
        };
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    pub fn env_var(&self, name: &str) -> Option<String> {
        self.env()
            .into_iter()
            .find_map(|line| line.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }

    fn set_env(&self, name: &str, value: &str) {
        match self.backend {
            Backend::Uboot => run_ok(
                Command::new("fw_setenv")
                    .arg("-c")
                    .arg(self.path("fw_env.config"))
                    .arg(name)
                    .arg(value),
            ),
            Backend::Grub => run_ok(
                Command::new("grub-editenv")
                    .arg(self.path("grubenv"))
                    .arg("set")
                    .arg(format!("{name}={value}")),
            ),
        };
    }

    /// What the bootloader does at power-on, by the shipped boot scripts' rules; writes the
    /// cmdline the kernel would see and returns the slot booted.
    pub fn boot(&self) -> String {
        let slot = match self.backend {
            Backend::Uboot => self.boot_uboot(),
            Backend::Grub => self.boot_grub(),
        };
        fs::write(
            self.path("cmdline"),
            format!(
                "console=ttyS0 root=PARTLABEL=rootfs-{} rota.slot={slot} quiet\n",
                slot.to_lowercase()
            ),
        )
        .unwrap();
        slot
    }

    /// boot.cmd: first slot in BOOT_ORDER with attempts left (hex), decrement, saveenv; none
    /// left: reset the counters and reset the board (then the loop boots the first slot).
    fn boot_uboot(&self) -> String {
        let order = self.env_var("BOOT_ORDER").unwrap_or_else(|| "A B".into());
        for slot in order.split_whitespace() {
            let var = format!("BOOT_{slot}_LEFT");
            let left = self
                .env_var(&var)
                .map(|value| u64::from_str_radix(&value, 16).unwrap())
                .unwrap_or(3);
            if left > 0 {
                self.set_env(&var, &format!("{:x}", left - 1));
                return slot.to_owned();
            }
        }
        for slot in order.split_whitespace() {
            self.set_env(&format!("BOOT_{slot}_LEFT"), "3");
        }
        self.boot_uboot()
    }

    /// grub.cfg: first slot in ORDER with OK=1 and TRY=0, set TRY=1; none: clear TRY of the
    /// good slots and try again.
    fn boot_grub(&self) -> String {
        let order = self.env_var("ORDER").unwrap_or_else(|| "A B".into());
        for slot in order.split_whitespace() {
            let ok = self.env_var(&format!("{slot}_OK")).as_deref() == Some("1");
            let tried = self.env_var(&format!("{slot}_TRY")).as_deref() == Some("1");
            if ok && !tried {
                self.set_env(&format!("{slot}_TRY"), "1");
                return slot.to_owned();
            }
        }
        for slot in order.split_whitespace() {
            if self.env_var(&format!("{slot}_OK")).as_deref() == Some("1") {
                self.set_env(&format!("{slot}_TRY"), "0");
            }
        }
        self.boot_grub()
    }

    /// Whether the bootloader would boot `slot` next (without booting).
    pub fn next_boot(&self) -> String {
        let copy = tempfile::tempdir().unwrap();
        let robot = Robot {
            dir: copy,
            backend: self.backend,
            key: SigningKey::from_seed([42; 32]),
        };
        // Boot a copy of the env so this robot's env is not changed.
        for name in ["uboot.env", "grubenv"] {
            if self.path(name).exists() {
                fs::copy(self.path(name), robot.path(name)).unwrap();
            }
        }
        fs::write(
            robot.path("fw_env.config"),
            format!("{} 0x0 {ENV_SIZE:#x}\n", robot.path("uboot.env").display()),
        )
        .unwrap();
        robot.boot()
    }
}

pub fn both_backends() -> [Backend; 2] {
    [Backend::Uboot, Backend::Grub]
}

pub fn exit_code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap()
}
