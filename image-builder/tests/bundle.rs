//! keygen, bundle, inspect and verify through the real binary: key files, reproducible
//! bundles, and verify's verdicts and exit codes (0 valid, 1 invalid, 2 usage/I/O).

mod common;

use common::{fails_with, ok, rota_image};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A rootfs-like image: text with some structure, compressible but not trivially.
fn make_image(path: &Path, len: usize) {
    let data: Vec<u8> = (0..len)
        .map(|i| {
            if i % 4096 < 2048 {
                (i / 97 % 251) as u8
            } else {
                b"rota "[i % 5]
            }
        })
        .collect();
    fs::write(path, data).unwrap();
}

/// keygen into `keys/NAME`, returning the printed key id.
fn keygen(dir: &Path, name: &str) -> String {
    fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
    ok(dir, &["keygen", "--out", name]).trim().to_string()
}

fn bundle(dir: &Path, key: &str, out: &str) {
    ok(
        dir,
        &[
            "bundle",
            "--compatible",
            "lekiwi-rpi5",
            "--version",
            "1.2.0",
            "--key",
            key,
            "--image",
            "rootfs=rootfs.img",
            "--zstd",
            "--security-version",
            "3",
            "--git-commit",
            "0123abc",
            "--git-branch",
            "main",
            "--description",
            "nightly",
            "-o",
            out,
        ],
    );
}

#[test]
fn keygen_writes_private_and_public_files() {
    let dir = tempfile::tempdir().unwrap();
    let key_id = keygen(dir.path(), "keys/release");
    assert_eq!(key_id.len(), 16, "{key_id}");
    let secret = fs::metadata(dir.path().join("keys/release.key")).unwrap();
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    let public = fs::read_to_string(dir.path().join("keys/release.pub")).unwrap();
    assert!(public.contains(&key_id), "{public}");
    // Never overwrite a key.
    let message = fails_with(dir.path(), 1, &["keygen", "--out", "keys/release"]);
    assert!(message.contains("release"), "{message}");
    assert!(fs::read_to_string(dir.path().join("keys/release.pub")).unwrap() == public);
}

#[test]
fn bundles_are_reproducible_and_inspectable() {
    let dir = tempfile::tempdir().unwrap();
    make_image(&dir.path().join("rootfs.img"), 3 << 20);
    let key_id = keygen(dir.path(), "keys/release");
    bundle(dir.path(), "keys/release.key", "one.rota");
    bundle(dir.path(), "keys/release.key", "two.rota");
    assert!(
        fs::read(dir.path().join("one.rota")).unwrap()
            == fs::read(dir.path().join("two.rota")).unwrap(),
        "bundles differ"
    );

    let json = ok(
        dir.path(),
        &["inspect", "one.rota", "--keyring", "keys", "--json"],
    );
    let found: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(found["signature"], "verified");
    assert_eq!(found["signed_by"][0], key_id.as_str());
    let manifest = &found["manifest"];
    assert_eq!(manifest["compatible"], "lekiwi-rpi5");
    assert_eq!(manifest["version"], "1.2.0");
    assert_eq!(manifest["security_version"], 3);
    assert_eq!(manifest["build_time"], 1_700_000_000);
    assert_eq!(manifest["git_commit"], "0123abc");
    assert_eq!(manifest["git_branch"], "main");
    assert_eq!(manifest["description"], "nightly");
    let image = &manifest["images"][0];
    assert_eq!(image["name"], "rootfs");
    assert_eq!(image["slot_class"], "rootfs");
    assert_eq!(image["size"], 3u64 << 20);
    assert_eq!(image["compression"], "zstd");
    assert_eq!(image["prefix_window"], 1 << 20, "the default window");
    assert!(image["stored_size"].as_u64().unwrap() < 3 << 20);
    let sha = common::tool(
        "sha256sum",
        &[dir.path().join("rootfs.img").to_str().unwrap()],
    );
    assert_eq!(image["sha256"].as_str().unwrap(), &sha[..64]);

    // Without a keyring only the signers are shown.
    let text = ok(dir.path(), &["inspect", "one.rota"]);
    assert!(
        text.contains("not checked") && text.contains(&key_id) && !text.contains("lekiwi"),
        "{text}"
    );
}

#[test]
fn verify_gives_a_verdict_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    make_image(&dir.path().join("rootfs.img"), 2 << 20);
    keygen(dir.path(), "keys/release");
    keygen(dir.path(), "other/stranger");
    bundle(dir.path(), "keys/release.key", "good.rota");
    let good = fs::read(dir.path().join("good.rota")).unwrap();

    let text = ok(dir.path(), &["verify", "good.rota", "--keyring", "keys"]);
    assert!(text.starts_with("VALID"), "{text}");
    let json = ok(
        dir.path(),
        &[
            "verify",
            "good.rota",
            "--keyring",
            "keys",
            "--json",
            "--full-image-hash",
        ],
    );
    let verdict: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(verdict["valid"], true);
    assert_eq!(verdict["images"][0]["size"], 2u64 << 20);

    // Damaged copies: a flipped bit early (header/manifest/signature) and in the payload's
    // middle and last byte, and a truncated file.
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    for (name, offset) in [
        ("header", 9usize),
        ("manifest", 200),
        ("payload", good.len() / 2),
        ("last byte", good.len() - 1),
    ] {
        let mut bad = good.clone();
        bad[offset] ^= 0x01;
        cases.push((name, bad, ""));
    }
    cases.push(("truncated", good[..good.len() - 1000].to_vec(), "truncated"));
    for (name, bytes, expect) in cases {
        fs::write(dir.path().join("bad.rota"), bytes).unwrap();
        let text = fails_with(dir.path(), 1, &["verify", "bad.rota", "--keyring", "keys"]);
        assert!(
            text.starts_with("INVALID") && text.contains(expect),
            "{name}: {text}"
        );
    }

    // Signed by a key the keyring does not trust.
    let text = fails_with(
        dir.path(),
        1,
        &["verify", "good.rota", "--keyring", "other"],
    );
    assert!(text.contains("no signature by a trusted key"), "{text}");

    // Usage and I/O errors: exit 2.
    fails_with(
        dir.path(),
        2,
        &["verify", "missing.rota", "--keyring", "keys"],
    );
    fails_with(
        dir.path(),
        2,
        &["verify", "good.rota", "--keyring", "no-such-dir"],
    );
    fails_with(dir.path(), 2, &["verify", "good.rota"]);
    let help = rota_image(dir.path(), &["verify", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("0 valid, 1 invalid"));
}

#[test]
fn bundle_with_two_keys_verifies_with_either() {
    let dir = tempfile::tempdir().unwrap();
    make_image(&dir.path().join("rootfs.img"), 1 << 20);
    keygen(dir.path(), "old/key");
    keygen(dir.path(), "new/key");
    ok(
        dir.path(),
        &[
            "bundle",
            "--compatible",
            "c",
            "--version",
            "2.0.0",
            "--key",
            "old/key.key",
            "--key",
            "new/key.key",
            "--image",
            "rootfs=rootfs.img",
            "-o",
            "b.rota",
        ],
    );
    for keyring in ["old", "new"] {
        ok(dir.path(), &["verify", "b.rota", "--keyring", keyring]);
    }
    let message = fails_with(
        dir.path(),
        2,
        &[
            "bundle",
            "--compatible",
            "c",
            "--version",
            "two",
            "--key",
            "old/key.key",
            "--image",
            "rootfs=rootfs.img",
            "-o",
            "x.rota",
        ],
    );
    assert!(message.contains("--version"), "{message}");
    let message = fails_with(
        dir.path(),
        1,
        &[
            "bundle",
            "--compatible",
            "c",
            "--version",
            "2.0.0",
            "--key",
            "old/key.key",
            "--image",
            "rootfs=missing.img",
            "-o",
            "x.rota",
        ],
    );
    assert!(message.contains("missing.img"), "{message}");
    assert!(!dir.path().join("x.rota").exists());
}

/// Random bytes, so that content-defined chunking has something to cut on.
fn random_image(path: &Path, len: usize) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(path, data).unwrap();
}

/// `rota-image bundle` of rootfs.img with `--chunk-size SIZE`, signed with keys/release.key.
fn bundle_with_chunk_size<'a>(size: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut args: Vec<&str> = "bundle --compatible b --version 1.0.0 --key keys/release.key \
         --image rootfs=rootfs.img --zstd --chunk-size"
        .split_whitespace()
        .collect();
    args.extend([size, "-o", out]);
    args
}

#[test]
fn chunk_size_trades_chunk_count_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    random_image(&dir.path().join("rootfs.img"), 4 << 20);
    keygen(dir.path(), "keys/release");
    let chunks = |size: &str| -> u64 {
        let out = format!("{size}.rota");
        ok(dir.path(), &bundle_with_chunk_size(size, &out));
        ok(dir.path(), &["verify", &out, "--keyring", "keys"]);
        let json = ok(
            dir.path(),
            &["inspect", &out, "--keyring", "keys", "--json"],
        );
        let found: serde_json::Value = serde_json::from_str(&json).unwrap();
        found["manifest"]["images"][0]["chunks"].as_u64().unwrap()
    };
    let (small, default, large) = (chunks("16KiB"), chunks("64KiB"), chunks("256KiB"));
    assert!(
        small > 2 * default && default > 2 * large,
        "{small} {default} {large}"
    );
    let error = fails_with(dir.path(), 2, &bundle_with_chunk_size("48KiB", "bad.rota"));
    assert!(
        error.contains("not a power of two from 4 KiB to 1 MiB"),
        "{error}"
    );
    assert!(!dir.path().join("bad.rota").exists());
}

/// `--zstd-window 0` writes independent frames, a version 1 bundle that updaters predating
/// version 2 read; a window outside the format's limits is a usage error before any work.
#[test]
fn zstd_window_zero_writes_format_version_1_and_a_bad_window_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    random_image(&dir.path().join("rootfs.img"), 2 << 20);
    keygen(dir.path(), "keys/release");
    let with_window = |window: &str, out: &str| -> Vec<String> {
        format!(
            "bundle --compatible b --version 1.0.0 --key keys/release.key \
             --image rootfs=rootfs.img --zstd --zstd-window {window} -o {out}"
        )
        .split_whitespace()
        .map(str::to_owned)
        .collect()
    };
    fn args(list: &[String]) -> Vec<&str> {
        list.iter().map(String::as_str).collect()
    }
    for (window, version, prefix_window) in [("0", 1u32, 0u64), ("64KiB", 2, 64 << 10)] {
        let out = format!("w{window}.rota");
        ok(dir.path(), &args(&with_window(window, &out)));
        ok(dir.path(), &["verify", &out, "--keyring", "keys"]);
        let bytes = fs::read(dir.path().join(&out)).unwrap();
        assert_eq!(
            bytes[8..12],
            version.to_le_bytes(),
            "--zstd-window {window}"
        );
        let json = ok(
            dir.path(),
            &["inspect", &out, "--keyring", "keys", "--json"],
        );
        let found: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            found["manifest"]["images"][0]["prefix_window"],
            prefix_window
        );
    }
    for bad in ["3000", "16MiB"] {
        let error = fails_with(dir.path(), 2, &args(&with_window(bad, "bad.rota")));
        assert!(error.contains("not 0 or a power of two"), "{error}");
        assert!(!dir.path().join("bad.rota").exists());
    }
}

/// `rota-image delta` between two bundles of one product: signed, smaller than the chunks it
/// replaces, reported in --json; bundles of two products, or a key that signed neither bundle
/// with no --keyring, are refused and write nothing.
#[test]
fn delta_joins_two_bundles_of_one_product() {
    let dir = tempfile::tempdir().unwrap();
    random_image(&dir.path().join("v1.img"), 3 << 20);
    let mut v2 = fs::read(dir.path().join("v1.img")).unwrap();
    for at in (100_000..2_000_000).step_by(50_000) {
        v2[at] ^= 0xff;
    }
    fs::write(dir.path().join("v2.img"), v2).unwrap();
    keygen(dir.path(), "keys/release");
    keygen(dir.path(), "keys/other");
    let bundle = |image: &str, compatible: &str, out: &str| {
        let args = format!(
            "bundle --compatible {compatible} --version 1.0.0 --key keys/release.key \
             --image rootfs={image} --zstd -o {out}"
        );
        ok(dir.path(), &args.split_whitespace().collect::<Vec<_>>());
    };
    bundle("v1.img", "b", "v1.rota");
    bundle("v2.img", "b", "v2.rota");
    bundle("v2.img", "c", "c.rota");
    let delta = |to: &str, key: &str, out: &str| -> Vec<String> {
        format!("delta --from v1.rota --to {to} --key keys/{key}.key --level 3 -o {out} --json")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    fn args(list: &[String]) -> Vec<&str> {
        list.iter().map(String::as_str).collect()
    }
    let json = ok(dir.path(), &args(&delta("v2.rota", "release", "v2.rdelta")));
    let found: serde_json::Value = serde_json::from_str(&json).unwrap();
    let summary = &found["summary"];
    let patches = summary["patches"].as_u64().unwrap();
    assert!(patches > 0 && patches <= summary["missing_chunks"].as_u64().unwrap());
    assert!(
        summary["patch_bytes"].as_u64().unwrap()
            < summary["missing_stored_bytes"].as_u64().unwrap(),
        "{summary}"
    );
    let written = fs::read(dir.path().join("v2.rdelta")).unwrap();
    assert_eq!(
        written.len() as u64,
        summary["delta_length"].as_u64().unwrap()
    );
    assert_eq!(written[..8], rota_bundle::delta::DELTA_MAGIC);

    let error = fails_with(
        dir.path(),
        1,
        &args(&delta("c.rota", "release", "c.rdelta")),
    );
    assert!(
        error.contains("a delta joins bundles of one product"),
        "{error}"
    );
    let error = fails_with(dir.path(), 1, &args(&delta("v2.rota", "other", "o.rdelta")));
    assert!(error.contains("does not verify"), "{error}");
    for refused in ["c.rdelta", "o.rdelta"] {
        assert!(!dir.path().join(refused).exists(), "{refused}");
    }
}
