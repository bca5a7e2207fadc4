//! Installs over HTTP from a loopback server that cuts connections and answers 5xx: the
//! updater reads the header and the manifest with two Range requests, fetches the payload by
//! Range, and resumes with Range requests that start at chunk boundaries, also after it was
//! killed and restarted.

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::http::{Action, Request, Server};
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

/// The two requests that read the header and then the manifest and signatures.
fn assert_reads_header_then_manifest(requests: &[Request]) {
    assert_eq!(
        (requests[0].range_start, requests[0].range_end),
        (Some(0), Some(31)),
        "the header first: {requests:?}"
    );
    assert_eq!(
        requests[1].range_start,
        Some(32),
        "then the manifest: {requests:?}"
    );
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
            Action::Serve,
            Action::Serve,
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
    assert_reads_header_then_manifest(&requests);
    let ranged: Vec<u64> = requests[2..]
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
        6,
        "first run (header, manifest, payload), resume's signature check (header, manifest), resume's Range: {requests:?}"
    );
    assert_reads_header_then_manifest(&requests[3..]);
    let resumed_at = requests[5].range_start.expect("resume uses Range");
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

/// Sets `[download]` keys of the robot's config (replacing the test defaults).
fn set_download(robot: &Robot, keys: &[(&str, &str)]) {
    let path = robot.path("updater.toml");
    let mut config = fs::read_to_string(&path).unwrap();
    for (key, value) in keys {
        let start = config
            .find(&format!("\n{key} = "))
            .map(|at| at + 1)
            .unwrap_or_else(|| {
                let at = config.find("[download]\n").unwrap() + "[download]\n".len();
                config.insert_str(at, &format!("{key} = 0\n"));
                at
            });
        let end = start + config[start..].find('\n').unwrap();
        config.replace_range(start..end, &format!("{key} = {value}"));
    }
    fs::write(&path, config).unwrap();
}

/// An uncompressed 6 MiB image: 1 MiB runs, so several MiB are in flight at once.
fn setup_uncompressed(seed: u64) -> (Robot, Vec<u8>, Vec<u8>) {
    let robot = Robot::new(Backend::Uboot);
    let image = image_bytes(6 << 20, seed);
    let mut spec = BundleSpec::new("2.0.0", image.clone());
    spec.compression = rota_bundle::Compression::None;
    let bundle = fs::read(robot.bundle("v2.rota", &spec)).unwrap();
    (robot, image, bundle)
}

/// Regression (fault campaign at c503221): the runs in the read-ahead window were dropped on
/// a broken connection and fetched again, and the retries were reset only after progress, so
/// a link that broke every <= 2 MiB never finished. Now every chunk that arrived whole is
/// written, and only the chunk the cut went through is fetched again.
#[test]
fn a_link_that_breaks_every_mebibyte_still_completes_refetching_only_the_cut_chunks() {
    let (robot, image, bundle) = setup_uncompressed(23);
    let cuts: Vec<usize> = (0..40)
        .map(|n| if n % 2 == 0 { 1 << 20 } else { 700_000 })
        .collect();
    let server = Server::start(
        bundle.clone(),
        cuts.iter().map(|&bytes| Action::CutAfter(bytes)).collect(),
    );
    let output = robot.run(&["install", "--json", &server.url]);
    let stdout = ok(output, "install over a link that breaks every MiB");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(&robot.slot("B")[..image.len()], &image[..]);
    assert_eq!(robot.state_name(), "reboot-pending");

    let requests = server.requests();
    assert_reads_header_then_manifest(&requests);
    // The header and the manifest fit in what their (planned) cuts let through.
    let cut = requests.len() as u64 - 3;
    assert!(cut >= 6, "{requests:?}");
    assert_eq!(report["reconnects"].as_u64().unwrap(), cut, "{report}");
    // What arrived twice: at most the partial chunk of each cut.
    let refetched = server.bytes_sent() - bundle.len() as u64;
    eprintln!(
        "{cut} cuts, {refetched} bytes fetched again ({} per cut)",
        refetched / cut
    );
    assert!(
        refetched <= cut * u64::from(rota_bundle::CHUNK_MAX_LENGTH),
        "{refetched} bytes fetched again over {cut} cuts"
    );
    let starts = chunk_starts(&robot, &bundle);
    let ranged: Vec<u64> = requests[2..].iter().filter_map(|r| r.range_start).collect();
    assert!(
        ranged.iter().all(|start| starts.contains(start)),
        "{ranged:?}"
    );
    assert!(
        ranged.windows(2).all(|pair| pair[0] < pair[1]),
        "{ranged:?}"
    );
}

/// Regression (fault campaign at c503221): a stall was reported as "bundle rejected: I/O error
/// reading the bundle's payload (chunk 22)", with the bad-bundle framing and no word of time.
#[test]
fn a_stalled_server_gives_an_error_that_says_it_timed_out() {
    let (robot, _, bundle) = setup(24);
    set_download(&robot, &[("timeout_secs", "1"), ("retry_budget_secs", "3")]);
    let mut plan = vec![
        Action::Serve,
        Action::Serve,
        Action::StallAfter(bundle.len() / 3),
    ];
    plan.extend(vec![Action::StallAfter(0); 20]);
    let server = Server::start(bundle, plan);
    let started = std::time::Instant::now();
    let output = robot.run(&["install", &server.url]);
    let stderr = stderr(&output);
    assert_eq!(exit_code(&output), 4, "transport: {stderr}");
    let error = stderr
        .lines()
        .find(|line| line.contains("ERROR") || line.contains("error"))
        .unwrap_or(&stderr);
    assert!(error.contains("timed out"), "{stderr}");
    assert!(!error.contains("rejected"), "{stderr}");
    assert!(error.contains("retry_budget_secs = 3"), "{stderr}");
    // The budget counts from the last verified chunk: a few seconds, not retries × timeout.
    assert!(started.elapsed().as_secs() < 15, "{:?}", started.elapsed());
    assert!(server.requests().len() >= 4);
    assert_eq!(robot.state_name(), "installing");
}

/// Regression (fault campaign at c503221): a bundle with bytes after its end was installed
/// from HTTP (a file was refused). The Content-Length must be the signed bundle length, and a
/// wrong one is refused before the slot is touched.
#[test]
fn a_content_length_other_than_the_signed_length_is_refused_before_the_slot_is_touched() {
    let (robot, _, bundle) = setup(25);
    let slot_b = robot.slot("B");
    let env = robot.env();
    for (name, body) in [
        ("trailing bytes", [&bundle[..], &[0u8; 10][..]].concat()),
        ("cut short", bundle[..bundle.len() - 100].to_vec()),
    ] {
        let server = Server::start(body.clone(), Vec::new());
        let output = robot.run(&["install", &server.url]);
        let stderr = stderr(&output);
        assert_eq!(exit_code(&output), 3, "{name}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "should be {} bytes long, the source has {}",
                bundle.len(),
                body.len()
            )),
            "{name}: {stderr}"
        );
        assert_eq!(robot.slot("B"), slot_b, "{name}: slot written");
        assert_eq!(robot.env(), env, "{name}: boot env changed");
        assert_eq!(
            server.requests().len(),
            2,
            "{name}: header and manifest, not retried"
        );
    }
}

/// Regression (found with the fault campaign's fixes): a connection cut inside the header or
/// manifest was "bundle rejected: bundle truncated in the manifest" (exit 3, a bad bundle)
/// and not retried.
#[test]
fn a_cut_before_the_payload_is_retried_not_rejected() {
    let (robot, image, bundle) = setup(26);
    let server = Server::start(
        bundle,
        vec![Action::CutAfter(20), Action::Serve, Action::CutAfter(100)],
    );
    ok(robot.run(&["install", &server.url]), "install");
    assert_eq!(&robot.slot("B")[..image.len()], &image[..]);
    let requests = server.requests();
    // Header cut, header, manifest cut, header, manifest, payload.
    assert_eq!(requests.len(), 6, "{requests:?}");
    assert_reads_header_then_manifest(&requests[3..]);
}

/// An answer without a Content-Length cannot be checked up front: bytes after the bundle are
/// found after the image and refused before the trial is armed, as from stdin.
#[test]
fn trailing_bytes_without_a_content_length_are_refused_before_the_trial_is_armed() {
    let (robot, _, bundle) = setup(27);
    let padded = [&bundle[..], &[0u8; 10][..]].concat();
    let server = Server::start(padded, vec![Action::ServeWithoutLength]);
    let output = robot.run(&["install", &server.url]);
    let stderr = stderr(&output);
    assert_eq!(exit_code(&output), 3, "{stderr}");
    assert!(
        stderr.contains("goes on after the bundle's end"),
        "{stderr}"
    );
    assert_eq!(robot.state_name(), "installing");
    assert_eq!(robot.next_boot(), "A", "no trial of B");

    let server = Server::start(bundle, vec![Action::ServeWithoutLength]);
    ok(robot.run(&["install", &server.url]), "the bundle alone");
    assert_eq!(robot.state_name(), "reboot-pending");
}

/// A server that sends all it promised (its Content-Length) and the bundle's header wants
/// more: the file is short, and asking again cannot help (exit 3 at once, not retries for the
/// whole retry budget).
#[test]
fn an_answer_that_ends_inside_the_manifest_as_promised_is_refused_not_retried() {
    let (robot, _, bundle) = setup(28);
    let short = bundle[..200].to_vec();
    let server = Server::start(short, Vec::new());
    let output = robot.run(&["install", &server.url]);
    let stderr = stderr(&output);
    assert_eq!(exit_code(&output), 3, "{stderr}");
    assert!(
        stderr.contains("the source has 200 bytes and ends inside the bundle's manifest"),
        "{stderr}"
    );
    assert_eq!(server.requests().len(), 2, "header, manifest; not retried");
}
