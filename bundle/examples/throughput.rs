//! Measures bundle creation and verification speed against `openssl dgst -sha256` on the
//! same file (the single-core SHA-256 ceiling). Not a test: it prints figures.
//!
//! cargo run --release -p rota-bundle --example throughput -- [MIB] [none|zstd] [DIR]

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rota_bundle::*;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args
        .first()
        .map_or(256, |a| a.parse().expect("MIB is a number"));
    let compression = match args.get(1).map(String::as_str) {
        Some("zstd") => Compression::Zstd,
        _ => Compression::None,
    };
    let dir = tempfile::tempdir_in(args.get(2).map_or("/tmp", String::as_str)).unwrap();
    let image_path = dir.path().join("rootfs.img");
    write_image(&image_path, mib << 20);

    let key = SigningKey::from_seed([1; 32]);
    let keyring = Keyring::from_keys([key.public_key()]);
    let bundle_path = dir.path().join("bundle.rota");
    let build = timed(|| {
        let mut builder = BundleBuilder::new("bench", semver::Version::new(1, 0, 0));
        builder
            .compression(compression)
            .sign_with(&key)
            .add_image_file("rootfs", SlotClass::Rootfs, &image_path);
        let mut out = BufWriter::new(File::create(&bundle_path).unwrap());
        builder.write_to(&mut out).unwrap();
        out.flush().unwrap();
    });
    let openssl = timed(|| {
        let status = Command::new("openssl")
            .args(["dgst", "-sha256"])
            .arg(&bundle_path)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    });
    let verify = |check_image_sha256| {
        timed(|| {
            let options = ReadOptions {
                check_image_sha256,
                ..ReadOptions::default()
            };
            let file = File::open(&bundle_path).unwrap();
            // Unbuffered on purpose: each chunk arrives in one read straight into its buffer;
            // a BufReader would add a copy of every byte.
            if std::env::var_os("BUFFERED").is_some() {
                let file = BufReader::with_capacity(1 << 20, file);
                let bundle = BundleReader::open_with(file, &keyring, options).unwrap();
                bundle.verify_all().unwrap();
            } else {
                let bundle = BundleReader::open_with(file, &keyring, options).unwrap();
                bundle.verify_all().unwrap();
            }
        })
    };
    let full = verify(true);
    let chunks_only = verify(false);
    // sha2 on one core, in memory: close to `openssl speed -evp sha256` when it uses SHA-NI
    // (x86_64) or the ARMv8 SHA2 instructions (aarch64), several times slower otherwise.
    let buffer = vec![7u8; 64 << 20];
    let sha2_time = timed(|| {
        std::hint::black_box(Sha256Digest::of(&buffer));
    });
    let bundle_mib = std::fs::metadata(&bundle_path).unwrap().len() as f64 / (1 << 20) as f64;
    let rate = |d: Duration| bundle_mib / d.as_secs_f64();
    println!(
        "image {mib} MiB, bundle {bundle_mib:.0} MiB ({compression:?}), {} cores",
        std::thread::available_parallelism().unwrap()
    );
    println!(
        "sha2 crate, one core     {:>8.3} s {:>7.0} MiB/s (in memory)",
        sha2_time.as_secs_f64(),
        64.0 / sha2_time.as_secs_f64()
    );
    println!("build                    {:>8.3} s", build.as_secs_f64());
    println!(
        "openssl dgst -sha256     {:>8.3} s {:>7.0} MiB/s",
        openssl.as_secs_f64(),
        rate(openssl)
    );
    println!(
        "verify (chunks + image)  {:>8.3} s {:>7.0} MiB/s  {:.2}x openssl",
        full.as_secs_f64(),
        rate(full),
        openssl.as_secs_f64() / full.as_secs_f64()
    );
    println!(
        "verify (chunks only)     {:>8.3} s {:>7.0} MiB/s  {:.2}x openssl",
        chunks_only.as_secs_f64(),
        rate(chunks_only),
        openssl.as_secs_f64() / chunks_only.as_secs_f64()
    );
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    let cpu = cpu_seconds();
    f();
    let elapsed = start.elapsed();
    eprintln!(
        "  ({:.3} s wall, {:.3} s CPU in this process)",
        elapsed.as_secs_f64(),
        cpu_seconds() - cpu
    );
    elapsed
}

/// User + system CPU time of this process (all threads), from /proc/self/stat. On a busy
/// machine CPU time says more than wall time about what verification costs.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of the file (utime, stime), counted after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Half noise, half text, like a root filesystem with binaries and configuration.
fn write_image(path: &Path, length: usize) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut block = vec![0u8; 1 << 20];
    for n in 0..length >> 20 {
        if n % 2 == 0 {
            for word in block.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
        } else {
            let text = format!("block {n} of configuration text\n");
            for (byte, value) in block.iter_mut().zip(text.bytes().cycle()) {
                *byte = value;
            }
        }
        out.write_all(&block).unwrap();
    }
    out.flush().unwrap();
}
