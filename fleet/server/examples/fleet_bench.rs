//! Fleet benchmarks against a real rota-server process (run by `scripts/bench fleet`).
//!
//! - `poll`: enrolls fleets of growing size and has every robot poll once per interval (spread
//!   evenly), measuring each poll's latency; prints p50/p99 per fleet size.
//! - `deploy`: publishes a bundle of the given size, starts N robot threads on
//!   rota-protocol's client (long-poll, streaming download through rota-bundle's verifying
//!   reader), deploys to all, and prints the time from the deploy call to every robot
//!   downloading and to every robot committed.
//!
//! The load generator shares the machine with the server: the figures are a floor.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rota_bundle::{BundleBuilder, BundleReader, Compression, Keyring, SigningKey, SlotClass};
use rota_protocol::client::{Poll, RobotClient};
use rota_protocol::robot::RobotEvent;

const ADMIN_KEY: &str = "rota_op_bench_admin_key_0123456789abcdef";
const ENROLLMENT_KEY: &str = "rota_en_bench_enrollment_key_0123456789";
const COMPATIBLE: &str = "bench-board";

struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signing_key() -> SigningKey {
    SigningKey::from_seed([42; 32])
}

fn start_server(bin: &str, database: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring");
    std::fs::create_dir_all(&keyring).unwrap();
    signing_key()
        .public_key()
        .write_new(&keyring.join("bench.pub"))
        .unwrap();
    let mut command = Command::new(bin);
    command
        .arg("--data")
        .arg(dir.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("ROTA_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("ROTA_ENROLLMENT_KEY", ENROLLMENT_KEY)
        .env("ROTA_LOG", "warn")
        .stdout(Stdio::piped());
    if let Some(url) = database {
        command.arg("--database").arg(url);
    }
    let mut child = command.spawn().expect("start rota-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Server {
        child,
        url: line.trim().to_string(),
        dir,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

async fn enroll_many(url: &str, from: usize, to: usize, tokens: &mut Vec<String>) {
    let client = reqwest::Client::new();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for n in from..to {
        let (client, url, permit) = (
            client.clone(),
            url.to_string(),
            semaphore.clone().acquire_owned().await.unwrap(),
        );
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({"enrollment_key": ENROLLMENT_KEY, "robot_id": format!("bench-{n:06}"), "compatible": COMPATIBLE});
            let answer: serde_json::Value = client
                .post(format!("{url}/api/v1/robot/enroll"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            drop(permit);
            answer["token"].as_str().expect("enrolled").to_string()
        }));
    }
    for task in tasks {
        tokens.push(task.await.unwrap());
    }
}

/// Polls at `fleet / interval` per second for `measure`; returns latencies (µs) and errors.
async fn poll_load(
    url: &str,
    tokens: &[String],
    interval: Duration,
    measure: Duration,
) -> (Vec<u64>, u64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let rate = tokens.len() as f64 / interval.as_secs_f64();
    let tick = Duration::from_millis(10);
    let per_tick = rate * tick.as_secs_f64();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let semaphore = Arc::new(tokio::sync::Semaphore::new(2048));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(tick);
    let (mut owed, mut next) = (0.0, 0usize);
    let mut tasks = Vec::new();
    while started.elapsed() < measure {
        ticker.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let token = tokens[next % tokens.len()].clone();
            next += 1;
            let (client, url, latencies, errors) = (
                client.clone(),
                url.to_string(),
                latencies.clone(),
                errors.clone(),
            );
            let permit = semaphore.clone().acquire_owned().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let answer = client
                    .get(format!("{url}/api/v1/robot/assignment"))
                    .bearer_auth(token)
                    .header("If-None-Match", "\"none\"")
                    .send()
                    .await;
                let elapsed = sent.elapsed().as_micros() as u64;
                match answer {
                    Ok(response)
                        if response.status().as_u16() == 204
                            || response.status().as_u16() == 304 =>
                    {
                        latencies.lock().unwrap().push(elapsed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort_unstable();
    (latencies, errors.load(Ordering::Relaxed))
}

fn poll_bench(
    bin: &str,
    database: Option<&str>,
    sizes: &[usize],
    interval: Duration,
    measure: Duration,
) {
    let server = start_server(bin, database);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut tokens = Vec::new();
    println!("fleet size  polls/s  p50 ms  p99 ms  max ms  errors  (interval {}s, {}s measured per size)", interval.as_secs(), measure.as_secs());
    for &size in sizes {
        let enroll_started = Instant::now();
        let from = tokens.len();
        runtime.block_on(enroll_many(&server.url, from, size, &mut tokens));
        eprintln!(
            "enrolled {} robots in {:.1}s",
            size - from,
            enroll_started.elapsed().as_secs_f64()
        );
        let (latencies, errors) =
            runtime.block_on(poll_load(&server.url, &tokens, interval, measure));
        println!(
            "{size:>10}  {:>7.0}  {:>6.2}  {:>6.2}  {:>6.2}  {errors:>6}",
            latencies.len() as f64 / measure.as_secs_f64(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
    }
}

fn deploy_bench(bin: &str, database: Option<&str>, robots: usize, bundle_mib: usize) {
    let server = start_server(bin, database);
    let http = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap();
    let bundle_path: PathBuf = server.dir.path().join("bench.rota");
    {
        let mut image = vec![0u8; bundle_mib << 20];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for byte in image.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        let mut builder = BundleBuilder::new(COMPATIBLE, "2.0.0".parse().unwrap());
        builder
            .compression(Compression::None)
            .sign_with(&signing_key())
            .add_image("rootfs", SlotClass::Rootfs, std::io::Cursor::new(image));
        let mut file = std::fs::File::create(&bundle_path).unwrap();
        builder.write_to(&mut file).unwrap();
    }
    let upload_started = Instant::now();
    let release: serde_json::Value = http
        .post(format!("{}/api/v1/releases", server.url))
        .bearer_auth(ADMIN_KEY)
        .body(std::fs::File::open(&bundle_path).unwrap())
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    eprintln!(
        "published {} MiB in {:.2}s (upload + signature and hash check)",
        bundle_mib,
        upload_started.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let t0: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let marks: Arc<Mutex<Vec<(String, Duration, Duration)>>> = Arc::new(Mutex::new(Vec::new()));
    let keyring = Keyring::from_keys([signing_key().public_key()]);
    let mut threads = Vec::new();
    for n in 1..=robots {
        let mut client = RobotClient::new(&server.url).unwrap();
        let id = format!("robot-{n:03}");
        client
            .enroll(ENROLLMENT_KEY, &id, COMPATIBLE, None)
            .unwrap();
        let (stop, t0, marks, keyring) = (stop.clone(), t0.clone(), marks.clone(), keyring.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(Poll::Assignment { assignment, .. }) =
                    client.poll(None, Some(Duration::from_secs(30)))
                else {
                    continue;
                };
                let start = t0.lock().unwrap().expect("deploy time recorded");
                client
                    .report(
                        &assignment.deployment_id,
                        RobotEvent::Downloading {
                            bytes_done: 0,
                            bytes_total: assignment.bundle_size,
                        },
                    )
                    .unwrap();
                let downloading = start.elapsed();
                let stream = client.open_bundle(&assignment, 0).unwrap();
                let verified = BundleReader::open(
                    std::io::BufReader::with_capacity(1 << 20, stream),
                    &keyring,
                )
                .unwrap();
                verified.verify_all().expect("bundle verifies");
                for event in [
                    RobotEvent::Installing,
                    RobotEvent::Installed {
                        fetched_bytes: None,
                        reused_bytes: None,
                    },
                    RobotEvent::Rebooting,
                    RobotEvent::Trial,
                    RobotEvent::Committed,
                ] {
                    client.report(&assignment.deployment_id, event).unwrap();
                }
                marks
                    .lock()
                    .unwrap()
                    .push((id.clone(), downloading, start.elapsed()));
                return;
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    *t0.lock().unwrap() = Some(Instant::now());
    let deploy_started = Instant::now();
    http.post(format!("{}/api/v1/deployments", server.url))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"release": release["id"], "target": "all"}))
        .send()
        .unwrap()
        .error_for_status()
        .unwrap();
    let deploy_call = deploy_started.elapsed();
    for thread in threads {
        thread.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let marks = marks.lock().unwrap();
    let all_downloading = marks.iter().map(|m| m.1).max().unwrap();
    let all_committed = marks.iter().map(|m| m.2).max().unwrap();
    let first_committed = marks.iter().map(|m| m.2).min().unwrap();
    println!(
        "robots: {robots}, bundle: {bundle_mib} MiB, deploy call answered in {:.3}s",
        deploy_call.as_secs_f64()
    );
    println!(
        "deploy -> all {robots} downloading: {:.3}s",
        all_downloading.as_secs_f64()
    );
    println!(
        "deploy -> first committed:     {:.3}s",
        first_committed.as_secs_f64()
    );
    println!("deploy -> all {robots} committed:   {:.3}s (download + verify of every byte, simulated install)", all_committed.as_secs_f64());
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = arg(&args, "--server-bin").expect("--server-bin PATH");
    let database = arg(&args, "--database");
    match args.get(1).map(String::as_str) {
        Some("poll") => {
            let sizes: Vec<usize> = arg(&args, "--sizes")
                .unwrap_or("1000,10000".into())
                .split(',')
                .map(|s| s.parse().unwrap())
                .collect();
            let interval =
                Duration::from_secs(arg(&args, "--interval").map_or(60, |s| s.parse().unwrap()));
            let measure =
                Duration::from_secs(arg(&args, "--measure").map_or(20, |s| s.parse().unwrap()));
            poll_bench(&bin, database.as_deref(), &sizes, interval, measure);
        }
        Some("deploy") => {
            let robots = arg(&args, "--robots").map_or(15, |s| s.parse().unwrap());
            let mib = arg(&args, "--bundle-mib").map_or(100, |s| s.parse().unwrap());
            deploy_bench(&bin, database.as_deref(), robots, mib);
        }
        _ => {
            eprintln!("usage: fleet_bench poll|deploy --server-bin PATH [--database URL] [--sizes N,N] [--interval S] [--measure S] [--robots N] [--bundle-mib M]");
            std::process::exit(2);
        }
    }
}
