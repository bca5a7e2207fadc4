//! Installs over HTTP from a loopback server that cuts connections and answers 5xx: the
//! updater resumes with Range requests that start at chunk boundaries, also after it was
//! killed and restarted.

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::http::{Action, Server};
use common::*;
use rota_bundle::{BundleReader, Keyring};

/// Offsets in the bundle file where a chunk's stored bytes start.
fn chunk_starts(robot: &Robot, bundle: &[u8]) -> BTreeSet<u64> {
    let keyring = Keyring::from_keys([robot.key.public_key()]);
    let verified = BundleReader::open(bundle, &keyring).unwrap();
    let manifest = verified.verified_manifest();
    (0..manifest.manifest().images[0].chunks.len())
        .map(|index| manifest.chunk_file_range(0, index).unwrap().start)
        .collect()
}

fn setup(seed: u64) -> (Robot, Vec<u8>, Vec<u8>) {
    let robot = Robot::new(Backend::Uboot);
    let image = image_bytes(4 << 20, seed);
    let bundle =
        fs::read(robot.bundle("v2.rota", &BundleSpec::new("2.0.0", image.clone()))).unwrap();
    (robot, image, bundle)
}

#[test]
fn cut_connections_and_server_errors_resume_from_chunk_boundaries() {
    let (robot, image, bundle) = setup(20);
    let starts = chunk_starts(&robot, &bundle);
    let length = bundle.len();
    let server = Server::start(
        bundle.clone(),
        vec![
            Action::CutAfter(length / 3),
            Action::Status(503),
            Action::CutAfter(length / 4),
            Action::Status(429),
            Action::Status(408),
            Action::CutAfter(1000),
        ],
    );
    let output = robot.run(&["install", "--json", &server.url]);
    let stdout = ok(output, "install over HTTP");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["reconnects"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(&robot.slot("B")[..image.len()], &image[..]);
    assert_eq!(robot.state_name(), "reboot-pending");

    let requests = server.requests();
    assert_eq!(
        requests[0].range_start, None,
        "the first request reads from the start"
    );
    let ranged: Vec<u64> = requests
        .iter()
        .filter_map(|request| request.range_start)
        .collect();
    assert!(ranged.len() >= 3, "{requests:?}");
    for start in &ranged {
        assert!(
            starts.contains(start),
            "Range from {start}, not a chunk boundary"
        );
    }
    assert!(
        ranged.windows(2).all(|pair| pair[0] <= pair[1]),
        "resumes never go back: {ranged:?}"
    );
}

#[test]
fn killed_install_resumes_by_range_after_restart() {
    let (robot, image, bundle) = setup(21);
    let starts = chunk_starts(&robot, &bundle);
    let server = Server::start(bundle, Vec::new());
    let output = robot
        .updater()
        .args(["install", "--checkpoint-bytes", "524288", &server.url])
        .env("ROTA_FAILPOINT", "after-progress-saved@3")
        .output()
        .unwrap();
    assert_eq!(exit_code(&output), 97, "{}", stderr(&output));
    let status = robot.status_json();
    assert_eq!(status["state"], "installing");
    let done = status["pending"]["bytes_done"].as_u64().unwrap();
    assert!(done >= 3 * 524288, "{status}");

    // The daemon restarts: `resume` takes the source from the state file.
    let output = robot.run(&["resume"]);
    ok(output, "resume");
    assert_eq!(robot.state_name(), "reboot-pending");
    assert_eq!(&robot.slot("B")[..image.len()], &image[..]);
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        3,
        "first run, resume's signature check, resume's Range: {requests:?}"
    );
    let resumed_at = requests[2].range_start.expect("resume uses Range");
    assert!(
        starts.contains(&resumed_at),
        "Range from {resumed_at}, not a chunk boundary"
    );
    assert!(resumed_at > 0);
}

#[test]
fn permanent_errors_are_not_retried_and_endless_5xx_gives_up() {
    let (robot, _, bundle) = setup(22);
    let slot_b = robot.slot("B");
    let server = Server::start(bundle.clone(), vec![Action::Status(404)]);
    let output = robot.run(&["install", &server.url]);
    // Transport: the source is unreachable.
    assert_eq!(exit_code(&output), 4, "{}", stderr(&output));
    assert!(stderr(&output).contains("404"), "{}", stderr(&output));
    assert_eq!(server.requests().len(), 1, "404 is not retried");

    let server = Server::start(bundle, vec![Action::Status(500); 50]);
    let output = robot.run(&["install", &server.url]);
    assert_eq!(exit_code(&output), 4);
    assert!(
        stderr(&output).contains("gave up after 9 attempts"),
        "{}",
        stderr(&output)
    );
    assert_eq!(robot.slot("B"), slot_b, "nothing was written");
    assert_eq!(robot.env_var("BOOT_B_LEFT").as_deref(), Some("3"));
}
