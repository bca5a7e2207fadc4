//! The power-cut harness: record an operation's block writes and flushes (see `recorder`),
//! replay crash states and check each one. The model is in `updater/README.md` and at the top
//! of `tests/power_cut.rs`.

use std::collections::HashMap;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use rota_bootctl::{BootConfig, BootCtl, Slot};
use rota_bundle::{Compression, SigningKey};

use rota_protocol::robot::RobotEvent;

use super::blockdev::{run, Loop, Mount};
use super::fleet::{assignment, Daemon, Fleet};
use super::recorder::{Disks, Event};
use super::{exit_code, image_bytes, ok, stderr, Backend, BundleSpec, Robot, ENV_SIZE};

pub const HEALTHY: &str = "[[health.checks]]\nname = \"ok\"\ncommand = [\"true\"]\n";
pub const FAILING: &str = "[[health.checks]]\nname = \"broken\"\ncommand = [\"false\"]\n";

/// The disks, in the recorder's order.
pub const DISKS: [&str; 4] = ["slot-a", "slot-b", "boot", "data"];
const SLOT_A: usize = 0;
const SLOT_B: usize = 1;
const BOOT: usize = 2;
const DATA: usize = 3;
pub const SLOT_BYTES: usize = 4 << 20;
const BOOT_BYTES: usize = 2 << 20;
const DATA_BYTES: usize = 8 << 20;
/// The boot partition is FAT on the robots, but this kernel has no vfat driver (and no module
/// directory to load one from). ext2 is the nearest kernel filesystem: no journal, file data and
/// metadata overwritten in place, as FAT does.
const BOOT_FS: &str = "ext2";
/// What a disk writes atomically: the 4 KiB physical block of eMMC and SSDs. A write tears
/// only at these boundaries (the filesystems rely on a block of theirs, 1 KiB here, not tearing:
/// a torn ext4 superblock fails its checksum and the filesystem does not mount).
const ATOMIC: usize = 4096;
/// The image the bundles carry: 1 MiB, written in `CHECKPOINT` steps with a flush each.
const IMAGE_BYTES: usize = 1 << 20;
pub const CHECKPOINT: &str = "131072";

/// The operation under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    InstallRaw,
    InstallZstd,
    /// A second install over a first one still armed for its trial.
    SecondInstall,
    CommitHealthy,
    CommitFailing,
    /// `rota-bootctl mark-bad B` on a robot whose B is armed for a trial.
    MarkBad,
    /// `rota-bootctl mark-good B` on a robot booted into B on trial.
    MarkGood,
    /// The daemon's switch to the inactive slot (`install::switch_to_inactive_slot`): a robot
    /// running 2.0.0 from A, committed, with 1.0.0 still in B, gets a rollback assignment to
    /// 1.0.0 from the loopback fleet API (`common::fleet`); it records the install, sets the
    /// trial and reboots without writing a slot byte.
    Switch,
}

/// Where throwaway images live: tmpfs when there is one.
fn scratch() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn key() -> SigningKey {
    SigningKey::from_seed([42; 32])
}

/// A bundle the test made, and the image it carries.
pub struct KnownBundle {
    pub path: PathBuf,
    pub digest: serde_json::Value,
    pub image: Vec<u8>,
}

/// One recorded run: the disks as they were when the operation started, and every write and
/// flush after that.
pub struct Recording {
    pub backend: Backend,
    pub op: Op,
    /// The recording robot's directory: keys and bundles (its disks are gone).
    pub dir: tempfile::TempDir,
    pub base: Vec<Vec<u8>>,
    pub log: Vec<Event>,
    pub bundles: Vec<KnownBundle>,
    /// The bundle the operation installs (install operations), for the retry.
    pub target: Option<usize>,
    /// Whether booting a slot the state names no verified bundle for is a violation (true), or
    /// tolerated when the state says that slot is being installed, the slot holds exactly the
    /// image of a bundle an earlier install verified, and `commit` refuses the boot (marks it
    /// bad and asks for a reboot, exit 2). See `tests/power_cut.rs`.
    pub strict_boot: bool,
}

/// Files outside the disks (keys, configs, cmdline) and, on fresh disks, the boot env and the
/// state directory. `robot.path("boot")` and `robot.path("data")` are the mounted filesystems.
fn lay_out(robot: &Robot, fresh: bool) {
    let path = |name: &str| robot.path(name);
    fs::create_dir_all(path("keys")).unwrap();
    if !path("keys/release.pub").exists() {
        robot
            .key
            .public_key()
            .write_new(&path("keys/release.pub"))
            .unwrap();
    }
    match robot.backend {
        Backend::Uboot => {
            let env = path("boot/uboot.env");
            if fresh {
                fs::write(
                    path("env.txt"),
                    "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
                )
                .unwrap();
                run(Command::new("mkenvimage")
                    .arg("-s")
                    .arg(format!("{ENV_SIZE:#x}"))
                    .arg("-o")
                    .arg(&env)
                    .arg(path("env.txt")));
            }
            // The simulator's `next_boot` copies `uboot.env` from the robot's directory.
            let _ = fs::remove_file(path("uboot.env"));
            symlink(&env, path("uboot.env")).unwrap();
            fs::write(
                path("fw_env.config"),
                format!("{} 0x0 {ENV_SIZE:#x}\n", env.display()),
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
            let grubenv = path("boot/grub/grubenv");
            if fresh {
                fs::create_dir_all(path("boot/grub")).unwrap();
                run(Command::new("grub-editenv").arg(&grubenv).arg("create"));
                run(Command::new("grub-editenv").arg(&grubenv).args([
                    "set",
                    "ORDER=A B",
                    "A_OK=1",
                    "A_TRY=0",
                    "B_OK=1",
                    "B_TRY=0",
                ]));
            }
            // The simulator and the tests read `grubenv` in the robot's directory.
            let _ = fs::remove_file(path("grubenv"));
            symlink(&grubenv, path("grubenv")).unwrap();
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
    if fresh {
        fs::create_dir_all(path("data/rota")).unwrap();
    }
}

fn bootctl(robot: &Robot) -> BootCtl {
    BootCtl::from_config(&BootConfig::load(robot.path("bootctl.toml")).unwrap()).unwrap()
}

fn install_args(bundle: &Path) -> Vec<String> {
    vec![
        "install".into(),
        "--checkpoint-bytes".into(),
        CHECKPOINT.into(),
        bundle.display().to_string(),
    ]
}

fn make_bundle(robot: &Robot, name: &str, version: &str, seed: u64, zstd: bool) -> KnownBundle {
    let image = image_bytes(IMAGE_BYTES, seed);
    let mut spec = BundleSpec::new(version, image.clone());
    if !zstd {
        spec.compression = Compression::None;
    }
    let path = robot.bundle(name, &spec);
    let digest = serde_json::to_value(robot.bundle_info(&path).digest).unwrap();
    KnownBundle {
        path,
        digest,
        image,
    }
}

/// Flushes everything the kernel holds for the disks (writes and flushes reach the recorder).
fn sync() {
    run(&mut Command::new("sync"));
}

/// Runs `op` on a robot whose disks are recorded, from the state the operation starts in.
pub fn record(backend: Backend, op: Op) -> Recording {
    let dir = scratch();
    let robot = Robot {
        dir,
        backend,
        key: key(),
    };
    let disks = Disks::new(vec![
        (DISKS[SLOT_A].into(), image_bytes(SLOT_BYTES, 1)),
        (DISKS[SLOT_B].into(), image_bytes(SLOT_BYTES, 2)),
        (DISKS[BOOT].into(), vec![0; BOOT_BYTES]),
        (DISKS[DATA].into(), vec![0; DATA_BYTES]),
    ]);
    fs::create_dir(robot.path("disks")).unwrap();
    let session = disks.mount(&robot.path("disks"));
    let loops: Vec<Loop> = DISKS
        .iter()
        .map(|name| Loop::attach(&robot.path("disks").join(name)))
        .collect();
    run(Command::new("mkfs.ext2")
        .args(["-q", "-F", "-b", "1024"])
        .arg(loops[BOOT].path()));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024", "-E", "nodiscard"])
        .arg(loops[DATA].path()));
    let boot = Mount::new(loops[BOOT].path(), &robot.path("boot"), BOOT_FS, "rw");
    let data = Mount::new(loops[DATA].path(), &robot.path("data"), "ext4", "rw");
    symlink(loops[SLOT_A].path(), robot.path("slot-a")).unwrap();
    symlink(loops[SLOT_B].path(), robot.path("slot-b")).unwrap();
    lay_out(&robot, true);
    robot.write_config(HEALTHY);
    assert_eq!(robot.boot(), "A");
    ok(robot.run(&["commit"]), "commit on first boot");

    let mut bundles = vec![
        make_bundle(&robot, "v2.rota", "2.0.0", 20, op != Op::InstallRaw),
        make_bundle(&robot, "v3.rota", "3.0.0", 30, true),
    ];
    if op == Op::Switch {
        bundles = vec![
            make_bundle(&robot, "v1.rota", "1.0.0", 10, true),
            make_bundle(&robot, "v2.rota", "2.0.0", 20, true),
        ];
    }
    let mut fleet = None;
    let mut target = None;
    match op {
        Op::InstallRaw | Op::InstallZstd => target = Some(0),
        Op::SecondInstall => {
            ok(
                robot
                    .updater()
                    .args(install_args(&bundles[0].path))
                    .output()
                    .unwrap(),
                "first install",
            );
            target = Some(1);
        }
        Op::CommitHealthy | Op::CommitFailing | Op::MarkGood => {
            if op == Op::CommitFailing {
                robot.write_config(FAILING);
            }
            ok(
                robot.run(&["install", bundles[0].path.to_str().unwrap()]),
                "install",
            );
            assert_eq!(robot.boot(), "B");
        }
        Op::MarkBad => {
            ok(
                robot.run(&["install", bundles[0].path.to_str().unwrap()]),
                "install",
            );
        }
        Op::Switch => {
            for (bundle, slot) in [(&bundles[0], "B"), (&bundles[1], "A")] {
                ok(
                    robot.run(&["install", bundle.path.to_str().unwrap()]),
                    "install",
                );
                assert_eq!(robot.boot(), slot);
                ok(robot.run(&["commit"]), "commit");
            }
            let server = Fleet::start();
            robot.join_fleet(&server, "now");
            fleet = Some(server);
            target = Some(0);
        }
    }
    if op != Op::SecondInstall && op != Op::Switch {
        bundles.truncate(1);
    }

    sync();
    let mark = disks.log_len();
    let base = disks.contents();
    match op {
        Op::InstallRaw | Op::InstallZstd | Op::SecondInstall => {
            let bundle = &bundles[target.unwrap()];
            ok(
                robot
                    .updater()
                    .args(install_args(&bundle.path))
                    .output()
                    .unwrap(),
                "the install under test",
            );
        }
        Op::CommitHealthy => {
            ok(robot.run(&["commit"]), "the commit under test");
        }
        Op::CommitFailing => {
            let output = robot.run(&["commit"]);
            assert_eq!(exit_code(&output), 2, "{}", stderr(&output));
        }
        Op::MarkBad => bootctl(&robot).mark_bad(Slot::B).unwrap(),
        Op::MarkGood => bootctl(&robot).mark_good(Slot::B).unwrap(),
        Op::Switch => {
            let fleet = fleet.as_ref().unwrap();
            // Never fetched: the switch downloads nothing (nobody answers at that URL).
            let mut rollback = assignment(
                &robot,
                "dep_rollback",
                &bundles[0].path,
                "http://127.0.0.1:9/",
            );
            rollback.allow_downgrade = true;
            fleet.assign(rollback);
            let daemon = Daemon::start(&robot, None);
            robot.wait_for("the reboot request", || robot.reboots() == 1);
            drop(daemon);
            assert_eq!(
                fleet.events().first(),
                Some(&RobotEvent::Switched {
                    slot: rota_protocol::robot::Slot::B
                })
            );
        }
    }
    sync();
    boot.unmount();
    data.unmount();
    drop(loops);
    session.umount_and_join().unwrap();
    let log = disks.log().split_off(mark);
    Recording {
        backend,
        op,
        dir: robot.dir,
        base,
        log,
        bundles,
        target,
        strict_boot: true,
    }
}

/// Runs one crash state's check; a panic in it (an `unwrap` on a state that broke something)
/// is a violation with the panic's message, not the end of the test.
pub fn check_caught(check: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).unwrap_or_else(|panic| {
        Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into()))
    })
}

/// A deterministic generator (splitmix64).
pub struct Random(pub u64);

impl Random {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A crash state: the log's writes that reached the disks, in the order they were applied.
#[derive(Clone, Debug)]
pub struct CrashState {
    /// Human-readable: where in the log and how.
    pub label: String,
    /// A prefix ending at a flush (every write before it applied).
    pub at_flush: bool,
    /// (log index, bytes of that write applied): a torn write applies only its first sectors.
    pub writes: Vec<Applied>,
}

/// (log index, bytes of that write applied).
pub type Applied = (usize, usize);

/// Crash at log position `k` (before event `k`): for each disk, every write before its last
/// flush before `k` is durable; later writes before `k` are in flight.
fn split_at(log: &[Event], k: usize) -> (Vec<Applied>, Vec<Applied>) {
    let mut last_flush: HashMap<usize, usize> = HashMap::new();
    for (index, event) in log[..k].iter().enumerate() {
        if let Event::Flush { dev } = event {
            last_flush.insert(*dev, index);
        }
    }
    let mut durable = Vec::new();
    let mut in_flight = Vec::new();
    for (index, event) in log[..k].iter().enumerate() {
        if let Event::Write { dev, data, .. } = event {
            if last_flush.get(dev).is_some_and(|&flush| index < flush) {
                durable.push((index, data.len()));
            } else {
                in_flight.push((index, data.len()));
            }
        }
    }
    (durable, in_flight)
}

/// `points` crash states: every prefix ending at a flush (and the empty and complete logs),
/// then random points whose in-flight writes are dropped at random and applied in random order.
pub fn crash_states(log: &[Event], points: usize, seed: u64) -> Vec<CrashState> {
    let mut states = Vec::new();
    let mut ends: Vec<usize> = vec![0];
    ends.extend(
        log.iter()
            .enumerate()
            .filter(|(_, event)| matches!(event, Event::Flush { .. }))
            .map(|(index, _)| index + 1),
    );
    ends.push(log.len());
    ends.dedup();
    for k in ends {
        let writes = (0..k)
            .filter_map(|index| match &log[index] {
                Event::Write { data, .. } => Some((index, data.len())),
                Event::Flush { .. } => None,
            })
            .collect();
        states.push(CrashState {
            label: format!("prefix of {k}/{} events", log.len()),
            at_flush: true,
            writes,
        });
    }
    let mut random = Random(seed);
    while states.len() < points {
        let k = random.below(log.len() + 1);
        let (mut writes, mut in_flight) = split_at(log, k);
        let before = in_flight.len();
        in_flight.retain(|_| random.next() % 2 == 0);
        // Fisher-Yates: the disk may apply what it kept in any order.
        for i in (1..in_flight.len()).rev() {
            in_flight.swap(i, random.below(i + 1));
        }
        // A third of the time one of them is torn at an atomic-unit boundary of the disk.
        let mut torn = String::new();
        if !in_flight.is_empty() && random.below(3) == 0 {
            let victim = random.below(in_flight.len());
            let (index, length) = in_flight[victim];
            let Event::Write { offset, .. } = &log[index] else {
                unreachable!()
            };
            let start = *offset as usize;
            let first = start / ATOMIC + 1;
            let last = (start + length - 1) / ATOMIC;
            if first <= last {
                let boundary = (first + random.below(last - first + 1)) * ATOMIC;
                in_flight[victim].1 = boundary - start;
                torn = format!(", write {index} torn after {} bytes", boundary - start);
            }
        }
        states.push(CrashState {
            label: format!(
                "cut at {k}/{} events, {} of {before} in-flight writes applied as {:?}{torn}",
                log.len(),
                in_flight.len(),
                in_flight.iter().map(|write| write.0).collect::<Vec<_>>()
            ),
            at_flush: false,
            writes: {
                writes.extend(in_flight);
                writes
            },
        });
    }
    states
}

/// The disks' contents in a crash state.
pub fn materialise(recording: &Recording, state: &CrashState) -> Vec<Vec<u8>> {
    let mut disks = recording.base.clone();
    for &(index, length) in &state.writes {
        if let Event::Write { dev, offset, data } = &recording.log[index] {
            let offset = *offset as usize;
            disks[*dev][offset..offset + length].copy_from_slice(&data[..length]);
        }
    }
    disks
}

/// Hashes crash states by content, cheaply: only the byte ranges some write in the log touches
/// can differ from the base, so only those are applied, hashed and restored.
pub struct Deduper {
    work: Vec<Vec<u8>>,
    /// Per disk: merged (start, end) ranges written anywhere in the log.
    touched: Vec<Vec<(usize, usize)>>,
}

impl Deduper {
    pub fn new(recording: &Recording) -> Deduper {
        let mut touched: Vec<Vec<(usize, usize)>> = vec![Vec::new(); recording.base.len()];
        for event in &recording.log {
            if let Event::Write { dev, offset, data } = event {
                touched[*dev].push((*offset as usize, *offset as usize + data.len()));
            }
        }
        for ranges in &mut touched {
            ranges.sort_unstable();
            let mut merged: Vec<(usize, usize)> = Vec::new();
            for &(start, end) in ranges.iter() {
                match merged.last_mut() {
                    Some(last) if start <= last.1 => last.1 = last.1.max(end),
                    _ => merged.push((start, end)),
                }
            }
            *ranges = merged;
        }
        Deduper {
            work: recording.base.clone(),
            touched,
        }
    }

    pub fn hash(&mut self, recording: &Recording, state: &CrashState) -> u64 {
        for &(index, length) in &state.writes {
            if let Event::Write { dev, offset, data } = &recording.log[index] {
                let offset = *offset as usize;
                self.work[*dev][offset..offset + length].copy_from_slice(&data[..length]);
            }
        }
        let mut hasher = DefaultHasher::new();
        for (dev, ranges) in self.touched.iter().enumerate() {
            for &(start, end) in ranges {
                hasher.write(&self.work[dev][start..end]);
                self.work[dev][start..end].copy_from_slice(&recording.base[dev][start..end]);
            }
        }
        hasher.finish()
    }
}

/// The robot after the power came back: the disks of a crash state as image files, boot and
/// data mounted through loop devices (the kernel replays ext4's journal), the slots as files.
struct Replayed {
    // Dropped in field order: unmount, detach, then remove the directory.
    _mounts: Vec<Mount>,
    _loops: Vec<Loop>,
    robot: Robot,
}

fn replay(recording: &Recording, disks: &[Vec<u8>]) -> Result<Replayed, String> {
    let robot = Robot {
        dir: scratch(),
        backend: recording.backend,
        key: key(),
    };
    fs::write(robot.path("slot-a"), &disks[SLOT_A]).unwrap();
    fs::write(robot.path("slot-b"), &disks[SLOT_B]).unwrap();
    fs::write(robot.path("boot.img"), &disks[BOOT]).unwrap();
    fs::write(robot.path("data.img"), &disks[DATA]).unwrap();
    let loops = vec![
        Loop::attach(&robot.path("boot.img")),
        Loop::attach(&robot.path("data.img")),
    ];
    let mut mounts = Vec::new();
    for (device, at, fstype) in [
        (loops[0].path(), "boot", BOOT_FS),
        (loops[1].path(), "data", "ext4"),
    ] {
        fs::create_dir(robot.path(at)).unwrap();
        let output = Command::new("mount")
            .args(["-t", fstype])
            .arg(device)
            .arg(robot.path(at))
            .output()
            .unwrap();
        if !output.status.success() {
            return Err(format!(
                "the {at} filesystem does not mount: {}",
                stderr(&output)
            ));
        }
        mounts.push(Mount(robot.path(at)));
    }
    mounts.reverse();
    lay_out(&robot, false);
    // The kernel command line of the boot the power cut ended, for commands run before the
    // simulator boots again.
    let running = recording.running();
    fs::write(
        robot.path("cmdline"),
        format!(
            "console=ttyS0 root=PARTLABEL=rootfs-{} rota.slot={running} quiet\n",
            running.to_lowercase()
        ),
    )
    .unwrap();
    robot.write_config(match recording.op {
        Op::CommitFailing => FAILING,
        _ => HEALTHY,
    });
    Ok(Replayed {
        robot,
        _mounts: mounts,
        _loops: loops,
    })
}

type Check = Result<(), String>;

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Check {
    if condition {
        Ok(())
    } else {
        Err(what())
    }
}

/// The boot env parses with the upstream tools (a U-Boot env with a bad CRC counts as not
/// parsing: the tools would fall back to the default env) and with rota-bootctl.
fn env_parses(robot: &Robot) -> Check {
    let output = match robot.backend {
        Backend::Uboot => Command::new("fw_printenv")
            .arg("-c")
            .arg(robot.path("fw_env.config"))
            .output(),
        Backend::Grub => Command::new("grub-editenv")
            .arg(robot.path("grubenv"))
            .arg("list")
            .output(),
    }
    .unwrap();
    ensure(
        output.status.success() && !stderr(&output).contains("Bad CRC"),
        || format!("the boot env does not parse: {}", stderr(&output)),
    )?;
    BootCtl::from_config(&BootConfig::load(robot.path("bootctl.toml")).unwrap())
        .and_then(|ctl| ctl.status())
        .map(|_| ())
        .map_err(|error| format!("rota-bootctl cannot read the boot env: {error}"))
}

fn status(robot: &Robot) -> Result<serde_json::Value, String> {
    let output = robot.run(&["status", "--json"]);
    if !output.status.success() {
        return Err(format!("status fails: {}", stderr(&output)));
    }
    serde_json::from_slice(&output.stdout).map_err(|error| format!("status --json: {error}"))
}

fn slot_name(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

impl Recording {
    /// The slot running while the operation ran.
    fn running(&self) -> &'static str {
        match self.op {
            Op::CommitHealthy | Op::CommitFailing | Op::MarkGood => "B",
            _ => "A",
        }
    }

    fn image_of(&self, digest: &serde_json::Value) -> Option<&[u8]> {
        self.bundles
            .iter()
            .find(|bundle| &bundle.digest == digest)
            .map(|bundle| &bundle.image[..])
    }

    /// `slot` holds exactly the image of the bundle `digest`.
    fn holds(&self, robot: &Robot, slot: &str, digest: &serde_json::Value) -> Check {
        let Some(image) = self.image_of(digest) else {
            return Err(format!(
                "the state names an unknown bundle {digest} for {slot}"
            ));
        };
        let bytes = robot.slot(slot);
        ensure(bytes[..image.len()] == *image, || {
            let first = bytes.iter().zip(image).position(|(a, b)| a != b).unwrap();
            format!(
                "slot {slot} does not hold bundle {digest} as the state says \
                 (first differing byte at {first})"
            )
        })
    }

    /// Every slot the state says holds bundle X holds exactly X's image; so does the slot of a
    /// pending install past `installing`, and the slot of the last commit.
    fn truthful(&self, robot: &Robot, status: &serde_json::Value) -> Check {
        for slot in status["slots"].as_array().into_iter().flatten() {
            if !slot["bundle_digest"].is_null() {
                self.holds(robot, &slot_name(&slot["slot"]), &slot["bundle_digest"])?;
            }
        }
        let pending = &status["pending"];
        if !pending.is_null() && pending["stage"] != "installing" {
            self.holds(
                robot,
                &slot_name(&pending["slot"]),
                &pending["bundle_digest"],
            )?;
        }
        let last = &status["last_result"];
        if last["result"] == "committed" {
            self.holds(robot, &slot_name(&last["slot"]), &last["bundle_digest"])?;
        }
        Ok(())
    }

    /// A holds what it held when the operation started, and the bootloader would still boot it.
    fn a_untouched_and_bootable(&self, robot: &Robot) -> Check {
        ensure(robot.slot("A") == self.base[SLOT_A], || {
            "the committed slot A was written".to_owned()
        })?;
        let var = |name: &str| robot.env_var(name);
        match robot.backend {
            Backend::Uboot => {
                let order = var("BOOT_ORDER").unwrap_or_default();
                ensure(order.split_whitespace().any(|slot| slot == "A"), || {
                    format!("A left BOOT_ORDER ({order:?})")
                })?;
                ensure(var("BOOT_A_LEFT").as_deref() != Some("0"), || {
                    "A has no attempts left".into()
                })
            }
            Backend::Grub => {
                let order = var("ORDER").unwrap_or_default();
                ensure(order.split_whitespace().any(|slot| slot == "A"), || {
                    format!("A left ORDER ({order:?})")
                })?;
                ensure(var("A_OK").as_deref() == Some("1"), || {
                    "A_OK is not 1".into()
                })
            }
        }
    }

    /// The booted slot is A (committed, untouched) or a slot whose bytes are the image of the
    /// bundle the state names for it.
    fn booted_ok(&self, robot: &Robot, booted: &str, status: &serde_json::Value) -> Check {
        // A as it was before the operation is the committed slot (a retry may install into A
        // later; then A must hold what the state names, like B).
        if booted == "A" && robot.slot("A") == self.base[SLOT_A] {
            return Ok(());
        }
        let named = status["slots"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|slot| slot["slot"] == booted && !slot["bundle_digest"].is_null())
            .map(|slot| slot["bundle_digest"].clone())
            .or_else(|| {
                let pending = &status["pending"];
                (pending["slot"] == booted).then(|| pending["bundle_digest"].clone())
            });
        match named {
            Some(digest) => self
                .holds(robot, booted, &digest)
                .map_err(|error| format!("booted {booted}: {error}")),
            None => Err(format!(
                "booted {booted}, for which the state names no bundle (state {})",
                status["state"]
            )),
        }
    }

    /// The bootloader's rules, then `rota-updater commit` (again after the reboot it asks for).
    fn boot_and_commit(&self, robot: &Robot) -> Result<String, String> {
        let before = status(robot)?;
        let booted = robot.boot();
        let mut must_refuse = false;
        if let Err(error) = self.booted_ok(robot, &booted, &before) {
            let being_installed = before["pending"]["slot"] == booted.as_str()
                && before["pending"]["stage"] == "installing";
            if self.strict_boot || !being_installed {
                return Err(error);
            }
            // Still a fully verified image: the one an earlier install verified and armed.
            let bytes = robot.slot(&booted);
            let verified_earlier = self
                .bundles
                .iter()
                .any(|bundle| bytes[..bundle.image.len()] == bundle.image);
            ensure(verified_earlier, || {
                format!("{error}, and it holds no bundle ever verified")
            })?;
            must_refuse = true;
        }
        let output = robot.run(&["commit"]);
        match exit_code(&output) {
            0 if !must_refuse => Ok(booted),
            2 => {
                let booted = robot.boot();
                let before = status(robot)?;
                self.booted_ok(robot, &booted, &before)?;
                let output = robot.run(&["commit"]);
                ensure(output.status.success(), || {
                    format!("commit after the requested reboot: {}", stderr(&output))
                })?;
                Ok(booted)
            }
            code => Err(format!(
                "commit on {booted} exits {code}{}: {}",
                if must_refuse {
                    " (the state names no verified bundle for it: it must refuse, exit 2)"
                } else {
                    ""
                },
                stderr(&output)
            )),
        }
    }

    /// The invariants for one crash state, and the retry when `retry`.
    pub fn check(&self, disks: &[Vec<u8>], retry: bool) -> Check {
        let replayed = replay(self, disks)?;
        let robot = &replayed.robot;
        env_parses(robot)?;
        let found = status(robot)?;
        self.truthful(robot, &found)
            .map_err(|error| format!("as found ({}): {error}", found["state"]))?;
        self.a_untouched_and_bootable(robot)?;

        let booted = self.boot_and_commit(robot)?;
        env_parses(robot).map_err(|error| format!("after commit: {error}"))?;
        let after = status(robot)?;
        self.truthful(robot, &after)
            .map_err(|error| format!("after commit ({}): {error}", after["state"]))?;
        self.a_untouched_and_bootable(robot)
            .map_err(|error| format!("after commit: {error}"))?;
        let state = slot_name(&after["state"]);
        match self.op {
            Op::CommitHealthy => ensure(["committed", "rolled-back"].contains(&&*state), || {
                format!("commit ended {state}")
            })?,
            Op::CommitFailing => ensure(state == "rolled-back" && booted == "A", || {
                format!("a failing check ended {state} on {booted}")
            })?,
            _ => {}
        }
        if retry {
            self.retry(robot, &after, &booted)?;
        }
        Ok(())
    }

    /// Does the interrupted operation again, and checks that it takes effect.
    fn retry(&self, robot: &Robot, after: &serde_json::Value, booted: &str) -> Check {
        match self.op {
            Op::InstallRaw | Op::InstallZstd | Op::SecondInstall => {
                let bundle = &self.bundles[self.target.unwrap()];
                let done = after["state"] == "committed"
                    && after["last_result"]["slot"] == booted
                    && after["last_result"]["bundle_digest"] == bundle.digest;
                if !done {
                    let output = robot
                        .updater()
                        .args(install_args(&bundle.path))
                        .output()
                        .unwrap();
                    ensure(output.status.success(), || {
                        format!("the retried install fails: {}", stderr(&output))
                    })?;
                    let booted = self.boot_and_commit(robot)?;
                    let status = status(robot)?;
                    ensure(
                        status["state"] == "committed"
                            && status["last_result"]["slot"] == booted.as_str(),
                        || format!("after the retry: {} on {booted}", status["state"]),
                    )?;
                    self.holds(robot, &booted, &bundle.digest)?;
                    self.truthful(robot, &status)?;
                }
                Ok(())
            }
            // The retry of a commit is the next boot's commit, done above.
            Op::CommitHealthy | Op::CommitFailing => Ok(()),
            // The switch ends at the trial boot and its commit, done above; a retry would need
            // the daemon and the fleet API once per crash state.
            Op::Switch => Ok(()),
            Op::MarkBad => {
                bootctl(robot)
                    .mark_bad(Slot::B)
                    .map_err(|error| format!("mark-bad again: {error}"))?;
                ensure(robot.next_boot() == "A", || {
                    "B marked bad still boots".into()
                })
            }
            Op::MarkGood => {
                if booted == "B" {
                    bootctl(robot)
                        .mark_good(Slot::B)
                        .map_err(|error| format!("mark-good again: {error}"))?;
                    ensure(robot.next_boot() == "B", || {
                        "B marked good does not boot".into()
                    })?;
                }
                Ok(())
            }
        }
    }
}

/// How many crash points per operation: `ROTA_CRASH_POINTS`, else `default`.
pub fn points(default: usize) -> usize {
    std::env::var("ROTA_CRASH_POINTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}
