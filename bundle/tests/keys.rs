//! Key files, keyrings, and the signature format checked with OpenSSL.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use rota_bundle::*;

#[test]
fn generated_keys_round_trip_through_their_files_with_private_mode() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    assert_ne!(key.key_id(), SigningKey::generate().unwrap().key_id());
    let secret = dir.path().join("release.key");
    let public = dir.path().join("release.pub");
    key.write_new(&secret).unwrap();
    key.public_key().write_new(&public).unwrap();

    let mode = fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = SigningKey::load(&secret).unwrap();
    assert_eq!(loaded.public_key(), key.public_key());
    assert_eq!(PublicKey::load(&public).unwrap(), key.public_key());

    let text = fs::read_to_string(&public).unwrap();
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields[0], "rota-ed25519-public");
    assert_eq!(fields[1], key.key_id().to_string());
    assert!(fs::read_to_string(&secret)
        .unwrap()
        .starts_with("rota-ed25519-secret "));

    assert!(matches!(
        key.write_new(&secret),
        Err(KeyError::Write { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists
    ));
}

#[test]
fn the_key_id_is_the_start_of_sha256_of_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(3);
    let raw = dir.path().join("raw");
    fs::write(&raw, key.public_key().as_bytes()).unwrap();
    let output = Command::new("sha256sum").arg(&raw).output().unwrap();
    let digest = String::from_utf8(output.stdout).unwrap();
    assert_eq!(key.key_id().to_string(), digest[..16]);
}

#[test]
fn a_keyring_directory_loads_its_pub_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (key(1), key(2));
    first
        .public_key()
        .write_new(&dir.path().join("a.pub"))
        .unwrap();
    second
        .public_key()
        .write_new(&dir.path().join("b.pub"))
        .unwrap();
    fs::write(dir.path().join("README"), "not a key").unwrap();
    first.write_new(&dir.path().join("a.key")).unwrap();
    let keyring = Keyring::load_dir(dir.path()).unwrap();
    let mut expected = vec![first.key_id(), second.key_id()];
    expected.sort();
    assert_eq!(keyring.key_ids().collect::<Vec<_>>(), expected);

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Keyring::load_dir(empty.path()),
        Err(KeyError::EmptyKeyring { .. })
    ));

    fs::write(
        dir.path().join("broken.pub"),
        "rota-ed25519-public 00 AAAA\n",
    )
    .unwrap();
    let error = Keyring::load_dir(dir.path()).unwrap_err();
    assert!(error.to_string().contains("broken.pub"), "{error}");
}

#[test]
fn malformed_key_files_are_refused_with_the_reason() {
    let key = key(4);
    let public = key.public_key().to_file_string();
    let id = key.key_id().to_string();
    let other_id = common::key(5).key_id().to_string();
    let cases = [
        ("", "no key line"),
        ("# only a comment\n", "no key line"),
        (
            &*public.replace("public", "secret"),
            "expected `rota-ed25519-public",
        ),
        (&*public.replace(&id, &other_id), "states key id"),
        (&*public.replace(&id, "xyz"), "16 hex digits"),
        (&*format!("{public}{public}"), "more than one key line"),
        (&*format!("rota-ed25519-public {id} !!!\n"), "base64"),
        (&*format!("rota-ed25519-public {id} AAAA\n"), "32 bytes"),
        (
            &*format!("rota-ed25519-public {id}\n"),
            "expected `rota-ed25519-public <key id>",
        ),
    ];
    for (text, reason) in cases {
        let error = PublicKey::parse(text, "test.pub").unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("test.pub: "), "{message}");
        assert!(message.contains(reason), "{text:?}: {message}");
    }
    // Comments and blank lines around the key line are fine.
    let commented = format!("# release key 2026\n\n{public}\n");
    assert_eq!(PublicKey::parse(&commented, "x").unwrap(), key.public_key());
    assert!(SigningKey::parse(&public, "x").is_err());
}

#[test]
fn debug_output_never_shows_the_secret() {
    let key = key(6);
    let secret_line = key.to_file_string();
    let secret = secret_line.split_whitespace().last().unwrap();
    assert!(!format!("{key:?}").contains(secret));
}

/// Ed25519 public key as a PEM SubjectPublicKeyInfo (RFC 8410: a fixed 12-byte DER prefix).
fn public_key_pem(key: &PublicKey) -> String {
    use base64::Engine;
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(key.as_bytes());
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
}

#[test]
fn openssl_verifies_bundle_signatures_over_the_documented_message() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(7);
    let bundle = build(
        &[("rootfs", &image_data(31, 100_000))],
        Compression::Zstd,
        &[&key],
    );
    let manifest_length = u32::from_le_bytes(bundle[24..28].try_into().unwrap()) as usize;
    let manifest = &bundle[32..32 + manifest_length];
    let entry = &bundle[32 + manifest_length..][..ED25519_ENTRY_LENGTH];
    assert_eq!(&entry[0..4], &[1, 0, 64, 0]);
    assert_eq!(&entry[4..12], &key.key_id().0);

    let mut message = b"rota-bundle signature v1\0".to_vec();
    message.extend_from_slice(&bundle[..28]);
    message.extend_from_slice(manifest);
    let paths = ["key.pem", "message", "signature"].map(|name| dir.path().join(name));
    fs::write(&paths[0], public_key_pem(&key.public_key())).unwrap();
    fs::write(&paths[1], &message).unwrap();
    fs::write(&paths[2], &entry[12..]).unwrap();
    let verify = |message: &std::path::Path| {
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(&paths[0])
            .arg("-in")
            .arg(message)
            .arg("-sigfile")
            .arg(&paths[2])
            .output()
            .unwrap()
    };
    let output = verify(&paths[1]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let altered = dir.path().join("altered");
    message[40] ^= 1;
    fs::write(&altered, &message).unwrap();
    assert!(!verify(&altered).status.success());
}
