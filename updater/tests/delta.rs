//! Delta installs: the updater copies every chunk the booted slot already holds (found through
//! the chunk index the install that wrote it left) and fetches only the others by Range. Each
//! test first installs, boots and commits release 1 into slot B, so that the update under test
//! goes into slot A, planned against B.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::http::{Action, Request, Server};
use common::*;

/// The two requests that read the header, then the manifest and signatures.
const MANIFEST_REQUESTS: usize = 2;

/// A robot that booted and committed release 1.0.0 (`image`) in slot B.
fn robot_running(image: &[u8]) -> Robot {
    let robot = Robot::new(Backend::Uboot);
    let v1 = robot.bundle("v1.rota", &BundleSpec::new("1.0.0", image.to_vec()));
    ok(
        robot.run(&["install", v1.to_str().unwrap()]),
        "install 1.0.0",
    );
    assert_eq!(robot.boot(), "B");
    ok(robot.run(&["commit"]), "commit 1.0.0");
    assert!(robot.path("data/rota/slot-b.chunks").exists());
    robot
}

/// A robot whose booted slot A was flashed with `image`, not installed: the state knows
/// nothing of it and there is no chunk index. Returns the robot and slot A's bytes.
fn flashed_robot(image: &[u8]) -> (Robot, Vec<u8>) {
    let robot = Robot::new(Backend::Uboot);
    let mut slot_a = robot.slot("A");
    slot_a[..image.len()].copy_from_slice(image);
    fs::write(robot.path("slot-a"), &slot_a).unwrap();
    (robot, slot_a)
}

/// `rota-updater ARGS` (an install with `--json`), which must succeed: its report and log.
fn install_with_log(robot: &Robot, args: &[&str]) -> (serde_json::Value, String) {
    let output = robot.run(args);
    let log = stderr(&output);
    (serde_json::from_str(&ok(output, "install")).unwrap(), log)
}

fn install_json(robot: &Robot, source: &str) -> serde_json::Value {
    let stdout = ok(robot.run(&["install", "--json", source]), "delta install");
    serde_json::from_str(&stdout).unwrap()
}

fn payload_requests(requests: &[Request]) -> &[Request] {
    &requests[MANIFEST_REQUESTS..]
}

/// A 6 MiB ext4 image of `dir`, with everything pinned that mkfs would take from the clock or
/// the random pool (as `rota-image rootfs` does).
fn ext4_image(dir: &Path, out: &Path) -> Vec<u8> {
    let file = fs::File::create(out).unwrap();
    file.set_len(6 << 20).unwrap();
    drop(file);
    let status = Command::new("mkfs.ext4")
        .args(["-F", "-q", "-b", "4096", "-L", "rootfs"])
        .args(["-U", "6b3b6c2e-6e0b-4c55-9a57-2f1f6e0c7a10"])
        .args([
            "-E",
            "hash_seed=0c9f3e6a-1d55-4f37-8e5b-0d8f4f6c2b11,nodiscard",
        ])
        .arg("-d")
        .arg(dir)
        .arg(out)
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.ext4 runs");
    assert!(status.success(), "mkfs.ext4 failed");
    fs::read(out).unwrap()
}

/// A tree of 24 files of 128 KiB, each with its own bytes, all with one mtime.
fn write_tree(dir: &Path, changed: Option<usize>) {
    fs::create_dir_all(dir.join("usr/lib")).unwrap();
    for index in 0..24 {
        let seed = if Some(index) == changed { 1000 } else { 100 } + index as u64;
        let path = dir.join(format!("usr/lib/lib{index}.so"));
        fs::write(&path, image_bytes(128 << 10, seed)).unwrap();
        let status = Command::new("touch")
            .args(["-d", "@1700000000"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

#[test]
fn an_identical_image_fetches_no_payload_byte() {
    let image = image_bytes(5 << 20, 60);
    let robot = robot_running(&image);
    // Another release with the same image: a rebuild with only the version changed.
    let v2 = robot.bundle("v2.rota", &BundleSpec::new("1.0.1", image.clone()));
    let server = Server::start(fs::read(&v2).unwrap(), Vec::new());
    // --full copies nothing: every stored byte crosses the wire.
    let full: serde_json::Value = serde_json::from_str(&ok(
        robot.run(&["install", "--json", "--full", &server.url]),
        "install --full",
    ))
    .unwrap();
    assert_eq!(full["reused_bytes"], 0, "{full}");
    let payload_sent: u64 = payload_requests(&server.requests())
        .iter()
        .map(|request| request.sent)
        .sum();
    assert_eq!(full["fetched_bytes"], payload_sent, "{full}");
    let before = server.requests().len();

    let report = install_json(&robot, &server.url);
    assert_eq!(report["slot"], "A", "{report}");
    assert_eq!(report["fetched_bytes"], 0, "{report}");
    assert_eq!(report["reused_bytes"], image.len() as u64, "{report}");
    assert_eq!(&robot.slot("A")[..image.len()], &image[..]);
    let requests = server.requests();
    assert_eq!(requests.len() - before, MANIFEST_REQUESTS, "{requests:?}");
}

#[test]
fn one_changed_file_in_an_ext4_image_fetches_only_the_chunks_covering_it() {
    let work = tempfile::tempdir().unwrap();
    write_tree(&work.path().join("v1"), None);
    write_tree(&work.path().join("v2"), Some(7));
    let old = ext4_image(&work.path().join("v1"), &work.path().join("v1.ext4"));
    let new = ext4_image(&work.path().join("v2"), &work.path().join("v2.ext4"));
    assert_ne!(old, new);
    let robot = robot_running(&old);
    let full = robot.bundle("full.rota", &BundleSpec::new("2.0.0", new.clone()));
    let full_length = fs::metadata(&full).unwrap().len();
    let server = Server::start(fs::read(&full).unwrap(), Vec::new());

    // The dry run says what the install then does, and writes nothing.
    let (slot_a, state) = (robot.slot("A"), robot.status_json());
    let plan: serde_json::Value =
        serde_json::from_str(&ok(robot.run(&["plan", "--json", &server.url]), "plan")).unwrap();
    assert_eq!((robot.slot("A"), robot.status_json()), (slot_a, state));
    let text = ok(robot.run(&["plan", full.to_str().unwrap()]), "plan (text)");
    assert!(
        text.contains("fetch") && text.contains("request(s)"),
        "{text}"
    );
    let plan_requests = server.requests().len();

    let report = install_json(&robot, &server.url);
    assert_eq!(
        plan["fetch_bytes"], report["fetched_bytes"],
        "{plan} {report}"
    );
    assert_eq!(
        plan["reuse_bytes"], report["reused_bytes"],
        "{plan} {report}"
    );
    assert_eq!(&robot.slot("A")[..new.len()], &new[..], "byte-exact");
    let fetched = report["fetched_bytes"].as_u64().unwrap();
    let payload_sent: u64 = payload_requests(&server.requests()[plan_requests..])
        .iter()
        .map(|request| request.sent)
        .sum();
    assert_eq!(
        fetched, payload_sent,
        "the report counts what crossed the wire"
    );
    eprintln!(
        "one 128 KiB file changed in a 6 MiB ext4 image: {fetched} of {full_length} bundle bytes fetched ({:.1} %), {} requests",
        fetched as f64 * 100.0 / full_length as f64,
        server.requests().len()
    );
    // The changed file (128 KiB of data) plus its chunks' edges and some metadata blocks: a
    // few chunks of at most 256 KiB each, never the image.
    assert!(fetched > 0);
    assert!(
        fetched <= 4 * u64::from(rota_bundle::CHUNK_MAX_LENGTH),
        "{fetched} bytes fetched"
    );
    assert_eq!(
        report["reused_bytes"].as_u64().unwrap() + fetched_image_bytes(&robot, &full, &old),
        new.len() as u64
    );
}

/// Image bytes of the chunks of `bundle` whose content `old` does not have (by the signed
/// chunk table, independently of the updater's plan), plus what coalescing adds: at most that.
fn fetched_image_bytes(robot: &Robot, bundle: &Path, old: &[u8]) -> u64 {
    let keyring = rota_bundle::Keyring::from_keys([robot.key.public_key()]);
    let reader =
        rota_bundle::BundleReader::open(fs::File::open(bundle).unwrap(), &keyring).unwrap();
    let old_index = robot.bundle("old.rota", &BundleSpec::new("1.0.0", old.to_vec()));
    let old_reader =
        rota_bundle::BundleReader::open(fs::File::open(old_index).unwrap(), &keyring).unwrap();
    let have: std::collections::HashSet<_> = old_reader.manifest().images[0]
        .chunks
        .iter()
        .map(|chunk| chunk.sha256)
        .collect();
    let chunks = &reader.manifest().images[0].chunks;
    // Runs of new chunks with short reused gaps between them fetched too, as the plan does.
    let missing: Vec<bool> = chunks
        .iter()
        .map(|chunk| !have.contains(&chunk.sha256))
        .collect();
    let first = missing.iter().position(|&m| m);
    let last = missing.iter().rposition(|&m| m);
    let mut total = 0u64;
    if let (Some(first), Some(last)) = (first, last) {
        let mut index = first;
        while index <= last {
            if missing[index] {
                total += u64::from(chunks[index].length);
                index += 1;
                continue;
            }
            let gap_end = (index..=last).find(|&i| missing[i]).unwrap();
            let gap_stored: u64 = chunks[index..gap_end]
                .iter()
                .map(|chunk| u64::from(chunk.stored_length))
                .sum();
            if gap_stored <= rota_updater::install::plan::COALESCE_GAP_BYTES {
                total += chunks[index..gap_end]
                    .iter()
                    .map(|chunk| u64::from(chunk.length))
                    .sum::<u64>();
            }
            index = gap_end;
        }
    }
    total
}

#[test]
fn a_booted_slot_changed_under_its_index_costs_a_download_never_a_wrong_byte() {
    let image = image_bytes(5 << 20, 61);
    let robot = robot_running(&image);
    // Something wrote into the running slot (a read-write mount, a bad block): 1 MiB in.
    let mut slot_b = robot.slot("B");
    for byte in &mut slot_b[(1 << 20) + 100..(1 << 20) + 200] {
        *byte ^= 0xff;
    }
    fs::write(robot.path("slot-b"), &slot_b).unwrap();
    let v2 = robot.bundle("v2.rota", &BundleSpec::new("1.0.1", image.clone()));
    let server = Server::start(fs::read(&v2).unwrap(), Vec::new());

    let (report, log) = install_with_log(&robot, &["install", "--json", &server.url]);
    assert_eq!(&robot.slot("A")[..image.len()], &image[..], "byte-exact");
    assert!(
        log.contains("is not what its index says: fetching it instead"),
        "{log}"
    );
    let fetched = report["fetched_bytes"].as_u64().unwrap();
    assert!(fetched > 0, "{report}");
    assert!(
        fetched <= u64::from(rota_bundle::CHUNK_MAX_LENGTH),
        "only the damaged chunk: {report}"
    );
    assert_eq!(server.requests().len(), MANIFEST_REQUESTS + 1);
    assert_eq!(robot.slot("B"), slot_b, "the booted slot is only read");
}

#[test]
fn a_server_that_ignores_range_gets_a_full_download_and_a_correct_slot() {
    let old = image_bytes(5 << 20, 62);
    let mut new = old.clone();
    new[3 << 20..(3 << 20) + 5000].fill(7);
    for (name, plan) in [
        ("from the first request", vec![Action::IgnoreRange; 10]),
        (
            "from the payload on",
            vec![
                Action::Serve,
                Action::Serve,
                Action::IgnoreRange,
                Action::IgnoreRange,
            ],
        ),
    ] {
        let robot = robot_running(&old);
        let v2 = robot.bundle("v2.rota", &BundleSpec::new("2.0.0", new.clone()));
        let bundle = fs::read(&v2).unwrap();
        let server = Server::start(bundle.clone(), plan);
        let report = install_json(&robot, &server.url);
        assert_eq!(
            &robot.slot("A")[..new.len()],
            &new[..],
            "{name}: byte-exact"
        );
        assert_eq!(robot.state_name(), "reboot-pending", "{name}");
        // Everything went over the wire once, in one answer that was read on.
        assert!(server.bytes_sent() >= bundle.len() as u64, "{name}");
        assert!(
            report["fetched_bytes"].as_u64().unwrap() > 0,
            "{name}: {report}"
        );
    }
}

/// Three regions changed far apart: three ranged requests (the next one sent while the current
/// one is read), and every other request the server answers is cut.
#[test]
fn a_connection_cut_on_every_other_request_resumes_to_a_byte_exact_slot() {
    let old = image_bytes(6 << 20, 63);
    let mut new = old.clone();
    for at in [1usize << 20, 3 << 20, 5 << 20] {
        new[at..at + 3000].fill(9);
    }
    let robot = robot_running(&old);
    let v2 = robot.bundle("v2.rota", &BundleSpec::new("2.0.0", new.clone()));
    let mut plan = vec![Action::Serve, Action::Serve];
    for _ in 0..3 {
        plan.push(Action::CutAfter(10_000));
        plan.push(Action::Serve);
    }
    let server = Server::start(fs::read(&v2).unwrap(), plan);
    let report = install_json(&robot, &server.url);
    assert_eq!(&robot.slot("A")[..new.len()], &new[..], "byte-exact");
    let requests = server.requests();
    let payload = payload_requests(&requests);
    let asked = |request: &Request| request.range_end.unwrap() + 1 - request.range_start.unwrap();
    let cut: Vec<usize> = (0..payload.len())
        .filter(|&index| payload[index].sent < asked(&payload[index]))
        .collect();
    assert_eq!(cut.len(), 3, "{requests:?}");
    assert_eq!(report["reconnects"], 3, "{report}");
    for index in cut {
        // Asked again later for the same run, from the first chunk that did not arrive whole.
        let again = payload[index + 1..].iter().any(|later| {
            later.range_end == payload[index].range_end
                && later.range_start >= payload[index].range_start
        });
        assert!(
            again,
            "the run of request {index} was not asked again: {requests:?}"
        );
    }
}

/// 60 on the x86_64 host; under qemu-user (aarch64 CI) every process costs ~10x, and the logic
/// under test is the same, so fewer suffice there.
const KILLS: u64 = if cfg!(target_arch = "x86_64") { 60 } else { 20 };

#[test]
fn sigkill_at_random_moments_of_a_delta_install_then_retry_is_byte_exact() {
    let old = image_bytes(6 << 20, 64);
    let mut new = old.clone();
    for at in [1usize << 20, 2 << 20, 4 << 20] {
        new[at..at + 70_000].fill(3);
        // Edited in place too: what a precomputed delta's patches rebuild.
        for byte in (at + 100_000..at + 300_000).step_by(5000) {
            new[byte] ^= 1;
        }
    }
    // Ed25519 signatures are deterministic: every robot's v1 and v2 bundles are these bytes.
    let builder = Robot::new(Backend::Uboot);
    let v1 = builder.bundle("v1.rota", &BundleSpec::new("1.0.0", old.clone()));
    let v2 = builder.bundle("v2.rota", &BundleSpec::new("2.0.0", new.clone()));
    let (old_path, new_path) = (builder.path("v1.img"), builder.path("v2.img"));
    fs::write(&old_path, &old).unwrap();
    fs::write(&new_path, &new).unwrap();
    let delta = builder.path("v2.rdelta");
    make_delta(&builder, [&v1, &v2], [&old_path, &new_path], &delta);
    let server = Server::start(fs::read(&v2).unwrap(), Vec::new());
    let mut seed = 0x5eedu64;
    let mut landed = std::collections::BTreeMap::new();
    for kill in 0..KILLS {
        let robot = robot_running(&old);
        let slot_b = robot.slot("B");
        // Every other install rebuilds chunks from the delta, killed or not.
        let delta_args = match kill % 2 {
            1 => vec!["--delta", delta.to_str().unwrap()],
            _ => Vec::new(),
        };
        let mut child = robot
            .updater()
            .args(["install", "--checkpoint-bytes", "262144", &server.url])
            .args(&delta_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        thread::sleep(Duration::from_micros((seed >> 33) % 60_000));
        let _ = child.kill();
        child.wait().unwrap();
        assert_eq!(
            robot.slot("B"),
            slot_b,
            "kill {kill}: the booted slot was written"
        );
        let state = robot.state_name();
        // "installed": the slot is complete and verified; the trial may be set already (the
        // next boot's commit completes it) or not yet.
        let next = robot.next_boot();
        match state.as_str() {
            "reboot-pending" => assert_eq!(next, "A", "kill {kill}: {state}"),
            "installed" => {}
            _ => assert_eq!(next, "B", "kill {kill}: {state}"),
        }
        *landed.entry(state).or_insert(0) += 1;
        // The retry completes it, and reuses what it can.
        let mut retry = vec!["install", "--json", &server.url];
        retry.extend(&delta_args);
        let report: serde_json::Value =
            serde_json::from_str(&ok(robot.run(&retry), "retry")).unwrap();
        assert_eq!(
            &robot.slot("A")[..new.len()],
            &new[..],
            "kill {kill}: {report}"
        );
        assert_eq!(robot.state_name(), "reboot-pending");
        assert_eq!(robot.slot("B"), slot_b, "kill {kill}");
    }
    eprintln!("states right after the kills: {landed:?}");
}

/// Free space is all-zero chunks: their content is known from the signed hash alone, so they
/// are written without reading the booted slot (where that space may hold anything by now).
#[test]
fn zero_chunks_are_written_from_the_manifest_not_read_from_the_booted_slot() {
    let mut image = image_bytes(6 << 20, 65);
    image[1 << 20..5 << 20].fill(0);
    let robot = robot_running(&image);
    // Something wrote into the running slot's free space since its install.
    let mut slot_b = robot.slot("B");
    slot_b[(3 << 19)..(5 << 19)].fill(0x5a);
    fs::write(robot.path("slot-b"), &slot_b).unwrap();
    let v2 = robot.bundle("v2.rota", &BundleSpec::new("1.0.1", image.clone()));
    let (report, log) = install_with_log(&robot, &["install", "--json", v2.to_str().unwrap()]);
    assert_eq!(&robot.slot("A")[..image.len()], &image[..], "byte-exact");
    assert_eq!(report["fetched_bytes"], 0, "{report}\n{log}");
    assert!(!log.contains("not what its index says"), "{log}");
}

/// A robot flashed from a golden image has no chunk index for its booted slot: its first update
/// reads the slot to find the chunks it can reuse, and is a delta too.
#[test]
fn a_slot_flashed_without_an_index_is_read_for_chunks_to_reuse() {
    let old = image_bytes(5 << 20, 66);
    let mut new = old.clone();
    new[2 << 20..(2 << 20) + 5000].fill(1);
    let (robot, slot_a) = flashed_robot(&old);
    assert!(!robot.path("data/rota/slot-a.chunks").exists());
    let v2 = robot.bundle("v2.rota", &BundleSpec::new("2.0.0", new.clone()));
    let bundle_length = fs::metadata(&v2).unwrap().len();
    let server = Server::start(fs::read(&v2).unwrap(), Vec::new());
    let (report, log) = install_with_log(&robot, &["install", "--json", &server.url]);
    assert_eq!(&robot.slot("B")[..new.len()], &new[..], "byte-exact");
    assert!(
        log.contains("no chunk index for slot A: reading it"),
        "{log}"
    );
    let fetched = report["fetched_bytes"].as_u64().unwrap();
    assert!(fetched > 0 && fetched < bundle_length / 4, "{report}");
    assert!(
        report["reused_bytes"].as_u64().unwrap() > 4 << 20,
        "{report}"
    );
    assert_eq!(robot.slot("A"), slot_a, "the booted slot is only read");
}

/// Reading a whole booted slot to find chunks pays off when the bundle's bytes cost network;
/// from a file it doubled the work of an install (`scripts/bench install`: raw install from a
/// file fell from 0.85x to 0.27x dd's speed).
#[test]
fn a_file_install_does_not_read_a_booted_slot_without_an_index() {
    let image = image_bytes(5 << 20, 67);
    let (robot, _) = flashed_robot(&image);
    let v2 = robot.bundle("v2.rota", &BundleSpec::new("2.0.0", image.clone()));
    let (report, log) = install_with_log(&robot, &["install", "--json", v2.to_str().unwrap()]);
    assert_eq!(&robot.slot("B")[..image.len()], &image[..], "byte-exact");
    assert!(!log.contains("reading it to find chunks"), "{log}");
    assert_eq!(report["reused_bytes"], 0, "{report}");
}

/// v1's tree with one library edited the way a package upgrade changes it: a few bytes here
/// and there, and 12 KiB longer (every file after it in the image moves).
fn edited_tree(dir: &Path, v1: &Path) {
    write_tree(dir, None);
    let path = dir.join("usr/lib/lib7.so");
    let mut library = fs::read(v1.join("usr/lib/lib7.so")).unwrap();
    for at in (1000..library.len()).step_by(9000) {
        library[at] ^= 0x20;
    }
    library.extend(image_bytes(12 << 10, 77));
    fs::write(&path, library).unwrap();
    let status = Command::new("touch")
        .args(["-d", "@1700000000"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// `rota-image delta` from `base` to `target` (bundles, and their images as files), signed
/// with the robot's key, at `out`.
fn make_delta(robot: &Robot, bundles: [&Path; 2], images: [&Path; 2], out: &Path) {
    use rota_bundle::delta::{write_delta, DeltaInputs};
    let keyring = rota_bundle::Keyring::from_keys([robot.key.public_key()]);
    let verified = |bundle: &Path| {
        rota_bundle::BundleReader::open(fs::File::open(bundle).unwrap(), &keyring)
            .unwrap()
            .verified_manifest()
            .clone()
    };
    let (base, target) = (verified(bundles[0]), verified(bundles[1]));
    let (base_image, target_image) = (
        fs::File::open(images[0]).unwrap(),
        fs::File::open(images[1]).unwrap(),
    );
    let inputs = DeltaInputs {
        base: &base,
        base_image: &base_image,
        target: &target,
        target_image: &target_image,
        image: "rootfs",
    };
    let mut delta = Vec::new();
    // Level 3: the shipped 19 makes smaller patches, slowly under emulation (aarch64 runs).
    write_delta(&inputs, 3, 2, std::slice::from_ref(&robot.key), &mut delta).unwrap();
    fs::write(out, delta).unwrap();
}

fn plan_json(robot: &Robot, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["plan", "--json"];
    all.extend(args);
    serde_json::from_str(&ok(robot.run(&all), "plan")).unwrap()
}

/// With a precomputed delta, the chunks the booted slot lacks are rebuilt from small patches
/// against it: fewer bytes than fetching them, a byte-exact slot. A delta for another pair is
/// set aside and a damaged one falls back to the bundle, both ending byte-exact too.
#[test]
fn a_precomputed_delta_rebuilds_missing_chunks_from_the_booted_slot() {
    let work = tempfile::tempdir().unwrap();
    let (v1, v2) = (work.path().join("v1"), work.path().join("v2"));
    write_tree(&v1, None);
    edited_tree(&v2, &v1);
    let (old_path, new_path) = (work.path().join("v1.ext4"), work.path().join("v2.ext4"));
    let old = ext4_image(&v1, &old_path);
    let new = ext4_image(&v2, &new_path);
    let robot = robot_running(&old);
    let bundle = robot.bundle("v2.rota", &BundleSpec::new("2.0.0", new.clone()));
    let delta = robot.path("v2.rdelta");
    make_delta(
        &robot,
        [&robot.path("v1.rota"), &bundle],
        [&old_path, &new_path],
        &delta,
    );
    let (bundle_arg, delta_arg) = (bundle.to_str().unwrap(), delta.to_str().unwrap());

    let without = plan_json(&robot, &[bundle_arg]);
    let with = plan_json(&robot, &[bundle_arg, "--delta", delta_arg]);
    let total = |plan: &serde_json::Value| {
        plan["fetch_bytes"].as_u64().unwrap() + plan["patch_bytes"].as_u64().unwrap()
    };
    assert!(with["patch_bytes"].as_u64().unwrap() > 0, "{with}");
    assert!(
        2 * total(&with) < total(&without),
        "with the delta {with}, without {without}"
    );
    assert_eq!(with["reuse_bytes"], without["reuse_bytes"]);

    // Damaged: a patch fails its check, and the chunks from it on are fetched instead. For
    // another pair (here one whose base is v2): set aside. Either way the slot is exact.
    let mut damaged = fs::read(&delta).unwrap();
    let last = damaged.len() - 1;
    damaged[last - 10] ^= 1;
    let damaged_path = robot.path("damaged.rdelta");
    fs::write(&damaged_path, damaged).unwrap();
    let other = robot.path("other.rdelta");
    make_delta(&robot, [&bundle, &bundle], [&new_path, &new_path], &other);
    for (delta, warning) in [
        (&delta, None),
        (&damaged_path, Some("from the bundle")),
        (&other, Some("it applies to a slot holding bundle")),
    ] {
        // Each on a robot of its own running v1 (the same bundle: builds are reproducible).
        let robot = robot_running(&old);
        let bundle = robot.bundle("v2.rota", &BundleSpec::new("2.0.0", new.clone()));
        let args = [
            "install",
            "--json",
            bundle.to_str().unwrap(),
            "--delta",
            delta.to_str().unwrap(),
        ];
        let (report, stderr) = install_with_log(&robot, &args);
        assert_eq!(
            &robot.slot("A")[..new.len()],
            &new[..],
            "byte-exact ({warning:?})"
        );
        match warning {
            Some(warning) => assert!(stderr.contains(warning), "{stderr}"),
            None => assert_eq!(
                report["fetched_bytes"].as_u64(),
                Some(total(&with)),
                "{report}"
            ),
        }
    }
}
