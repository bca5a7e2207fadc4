//! Every class of bad bundle is refused (exit 3) and leaves the inactive slot byte-identical,
//! the boot environment and the state file unchanged. Damage that can only show in the payload
//! (a flipped payload byte) is refused with the slot never made bootable.

mod common;

use std::fs;

use common::*;
use rota_bundle::{Compression, SigningKey};

/// Offsets from FORMAT.md's header: payload length at 16, manifest and signature block
/// lengths at 24 and 28, parts from byte 32 on.
fn layout(bundle: &[u8]) -> (std::ops::Range<usize>, std::ops::Range<usize>, usize) {
    let u32_at = |at: usize| u32::from_le_bytes(bundle[at..at + 4].try_into().unwrap()) as usize;
    let manifest = 32..32 + u32_at(24);
    let signatures = manifest.end..manifest.end + u32_at(28);
    let payload = signatures.end;
    (manifest, signatures, payload)
}

fn flip(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
    bytes[at] ^= 0x40;
    bytes
}

/// A robot that committed 2.0.0 (security version 5) on B and runs it; A is inactive.
fn updated_robot(backend: Backend) -> Robot {
    let robot = Robot::new(backend);
    let mut spec = BundleSpec::new("2.0.0", image_bytes(1 << 20, 3));
    spec.security_version = 5;
    let bundle = robot.bundle("v2.rota", &spec);
    ok(
        robot.run(&["install", bundle.to_str().unwrap()]),
        "install v2",
    );
    assert_eq!(robot.boot(), "B");
    ok(robot.run(&["commit"]), "commit v2");
    robot
}

struct Snapshot {
    slot_a: Vec<u8>,
    env: Vec<String>,
    state: Vec<u8>,
}

fn snapshot(robot: &Robot) -> Snapshot {
    Snapshot {
        slot_a: robot.slot("A"),
        env: robot.env(),
        state: fs::read(robot.path("data/rota/state")).unwrap(),
    }
}

#[test]
fn bad_bundles_are_refused_without_touching_slot_env_or_state() {
    for backend in both_backends() {
        let robot = updated_robot(backend);
        let good_spec = BundleSpec::new("3.0.0", image_bytes(2 << 20, 4));
        let good = fs::read(robot.bundle("good.rota", &{
            let mut spec = good_spec.clone();
            spec.security_version = 5;
            spec
        }))
        .unwrap();
        let (manifest, signatures, payload) = layout(&good);

        let spec = |change: &dyn Fn(&mut BundleSpec)| {
            let mut spec = good_spec.clone();
            spec.security_version = 5;
            change(&mut spec);
            spec
        };
        let built = |name: &str, spec: BundleSpec| fs::read(robot.bundle(name, &spec)).unwrap();
        let foreign_key = {
            let other = Robot {
                dir: tempfile::tempdir().unwrap(),
                backend,
                key: SigningKey::from_seed([7; 32]),
            };
            let mut spec = good_spec.clone();
            spec.security_version = 5;
            fs::read(other.bundle("foreign.rota", &spec)).unwrap()
        };

        // The writer refuses to make unsigned bundles: drop the (unsigned-length) signature block.
        let unsigned = {
            let mut bytes = [&good[..signatures.start], &good[payload..]].concat();
            bytes[28..32].copy_from_slice(&0u32.to_le_bytes());
            bytes
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("not a bundle", image_bytes(100_000, 5), "not a Rota bundle"),
            ("empty file", Vec::new(), "truncated"),
            ("unsigned", unsigned, "no signature"),
            (
                "signed by an unknown key",
                foreign_key,
                "no signature by a trusted key",
            ),
            (
                "manifest byte flipped",
                flip(good.clone(), manifest.start + 3),
                "does not verify",
            ),
            (
                "signature byte flipped",
                flip(good.clone(), signatures.end - 5),
                "does not verify",
            ),
            (
                "header payload length changed",
                flip(good.clone(), 17),
                "does not verify",
            ),
            (
                "cut in the manifest",
                good[..manifest.start + 10].to_vec(),
                "truncated",
            ),
            (
                "cut in the payload",
                good[..payload + 100_000].to_vec(),
                "should be",
            ),
            (
                "trailing bytes",
                [good.clone(), vec![0; 10]].concat(),
                "should be",
            ),
            (
                "wrong compatible",
                built(
                    "other-board.rota",
                    spec(&|s| s.compatible = "other-board".into()),
                ),
                "other-board",
            ),
            (
                "downgrade",
                built("v1.rota", spec(&|s| s.version = "1.0.0".into())),
                "--allow-downgrade",
            ),
            (
                "security version below the floor",
                built("sv4.rota", spec(&|s| s.security_version = 4)),
                "anti-rollback",
            ),
            (
                "image bigger than the slot",
                built(
                    "big.rota",
                    spec(&|s| s.image = image_bytes(SLOT_SIZE as usize + 1, 6)),
                ),
                "does not fit",
            ),
        ];
        for (name, bytes, needle) in cases {
            let path = robot.path("case.rota");
            fs::write(&path, &bytes).unwrap();
            let before = snapshot(&robot);
            let output = robot.run(&["install", path.to_str().unwrap()]);
            let stderr = stderr(&output);
            assert_eq!(exit_code(&output), 3, "{backend:?} {name}: {stderr}");
            assert!(
                stderr.contains(needle),
                "{backend:?} {name}: {stderr:?} lacks {needle:?}"
            );
            let after = snapshot(&robot);
            assert!(
                after.slot_a == before.slot_a,
                "{backend:?} {name}: slot A was written"
            );
            assert_eq!(
                after.env, before.env,
                "{backend:?} {name}: boot env changed"
            );
            assert!(
                after.state == before.state,
                "{backend:?} {name}: state file changed"
            );
        }
        // The downgrade is fine when asked for; the security floor never gives way.
        let downgrade = built("v1.rota", spec(&|s| s.version = "1.0.0".into()));
        fs::write(robot.path("case.rota"), downgrade).unwrap();
        let case = robot.path("case.rota");
        ok(
            robot.run(&["install", "--allow-downgrade", case.to_str().unwrap()]),
            "downgrade",
        );
        let below_floor = built("sv4.rota", spec(&|s| s.security_version = 4));
        fs::write(&case, below_floor).unwrap();
        let output = robot.run(&["install", "--allow-downgrade", case.to_str().unwrap()]);
        assert_eq!(exit_code(&output), 3);
    }
}

#[test]
fn damaged_payload_is_refused_and_the_slot_never_made_bootable() {
    for compression in [
        Compression::None,
        Compression::Zstd,
        Compression::ZstdPrefixed { window: 128 << 10 },
    ] {
        let robot = updated_robot(Backend::Uboot);
        let mut spec = BundleSpec::new("3.0.0", image_bytes(3 << 20, 8));
        spec.security_version = 5;
        spec.compression = compression;
        let good = fs::read(robot.bundle("good.rota", &spec)).unwrap();
        let (_, _, payload) = layout(&good);
        // Late in the payload, so earlier chunks were already written when it is found.
        let damaged = flip(good.clone(), payload + (good.len() - payload) * 3 / 4);
        let path = robot.path("damaged.rota");
        fs::write(&path, damaged).unwrap();
        let slot_b = robot.slot("B");

        let output = robot.run(&["install", path.to_str().unwrap()]);
        assert_eq!(
            exit_code(&output),
            3,
            "{compression:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("sha256 does not match"),
            "{}",
            stderr(&output)
        );
        assert_eq!(
            robot.env_var("BOOT_ORDER").as_deref(),
            Some("B"),
            "A is out of the order"
        );
        assert_eq!(robot.env_var("BOOT_A_LEFT").as_deref(), Some("0"));
        assert_eq!(robot.next_boot(), "B", "only the running slot is bootable");
        assert_eq!(robot.slot("B"), slot_b, "running slot untouched");
        assert_eq!(robot.state_name(), "installing");

        // The intact bundle then installs over it.
        ok(
            robot.run(&["install", robot.path("good.rota").to_str().unwrap()]),
            "good install",
        );
        assert_eq!(robot.state_name(), "reboot-pending");
        assert_eq!(robot.next_boot(), "A");
    }
}
