//! Precomputed deltas: made from two real bundles, they rebuild exactly the target chunks a
//! base lacks, in fewer bytes, and nothing unsigned or damaged gets through.

mod common;

use std::fs::File;

use common::*;
use rota_bundle::delta::*;
use rota_bundle::*;

struct Pair {
    _dir: tempfile::TempDir,
    base: Vec<u8>,
    target: Vec<u8>,
    base_bundle: Vec<u8>,
    target_bundle: Vec<u8>,
    base_file: File,
    target_file: File,
}

/// A base image and a target that differs the way a package upgrade changes a filesystem:
/// bytes changed in place (metadata), a file rewritten with a few edits, content moved by an
/// insertion.
fn pair() -> Pair {
    let base = image_data(31, 2_000_000);
    let mut target = base.clone();
    for at in (300_000..303_000).step_by(7) {
        target[at] ^= 0x5a;
    }
    for at in (900_000..1_000_000).step_by(4096) {
        target[at] = target[at].wrapping_add(1);
    }
    target.splice(1_400_000..1_400_000, image_data(32, 10_000));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        File::open(path).unwrap()
    };
    let (base_file, target_file) = (write("base.img", &base), write("target.img", &target));
    let key = key(1);
    Pair {
        base_bundle: build(&[("rootfs", &base)], PREFIXED, &[&key]),
        target_bundle: build(&[("rootfs", &target)], PREFIXED, &[&key]),
        _dir: dir,
        base,
        target,
        base_file,
        target_file,
    }
}

fn verified(bundle: &[u8]) -> VerifiedManifest {
    BundleReader::open(bundle, &keyring(&[&key(1)]))
        .unwrap()
        .verified_manifest()
        .clone()
}

fn delta_of(pair: &Pair) -> (Vec<u8>, DeltaSummary) {
    let (base, target) = (verified(&pair.base_bundle), verified(&pair.target_bundle));
    let inputs = DeltaInputs {
        base: &base,
        base_image: &pair.base_file,
        target: &target,
        target_image: &pair.target_file,
        image: "rootfs",
    };
    let mut delta = Vec::new();
    let summary = write_delta(&inputs, 19, 2, &[key(1)], &mut delta).unwrap();
    (delta, summary)
}

#[test]
fn a_delta_rebuilds_every_patched_chunk_exactly_in_fewer_bytes() {
    let pair = pair();
    let (delta, summary) = delta_of(&pair);
    assert_eq!(summary.delta_length, delta.len() as u64);
    assert!(summary.patches > 0 && summary.patches <= summary.missing_chunks);
    assert!(
        summary.patch_bytes * 3 < summary.missing_stored_bytes,
        "{summary:?}"
    );
    let opened = VerifiedDelta::open(&mut &delta[..], &keyring(&[&key(1)])).unwrap();
    let target = verified(&pair.target_bundle);
    assert_eq!(opened.manifest().base, verified(&pair.base_bundle).digest());
    assert_eq!(opened.manifest().target, target.digest());
    let entry = target.image(0).unwrap();
    for (index, patch) in opened.manifest().patches.iter().enumerate() {
        let range = opened.patches_file_range(index..index + 1);
        let stored = &delta[range.start as usize..range.end as usize];
        let from = patch.reference_offset as usize;
        let reference = &pair.base[from..from + patch.reference_length as usize];
        let chunk = &entry.chunks[patch.chunk as usize];
        let expected = &pair.target[chunk.offset as usize..][..chunk.length as usize];
        assert_eq!(
            opened.apply(patch, stored, reference, entry).unwrap(),
            expected
        );
    }
    // Patches of consecutive chunks sit back to back: one range fetches them.
    let all = opened.patches_file_range(0..opened.manifest().patches.len());
    assert_eq!(all.end, delta.len() as u64);
    assert_eq!(delta_payload_start(&delta).unwrap(), all.start);
}

#[test]
fn an_unsigned_damaged_or_misapplied_delta_is_refused() {
    let pair = pair();
    let (delta, _) = delta_of(&pair);
    let open = |bytes: &[u8], trusted: &Keyring| VerifiedDelta::open(&mut &bytes[..], trusted);

    let untrusted = open(&delta, &keyring(&[&key(2)])).unwrap_err();
    assert!(
        matches!(untrusted, Error::NoTrustedSignature { .. }),
        "{untrusted}"
    );
    let mut manifest_flipped = delta.clone();
    manifest_flipped[40] ^= 1;
    let error = open(&manifest_flipped, &keyring(&[&key(1)])).unwrap_err();
    assert!(matches!(error, Error::BadSignature { .. }), "{error}");
    let error = open(&pair.base_bundle, &keyring(&[&key(1)])).unwrap_err();
    assert!(error.to_string().contains("not a Rota delta"), "{error}");

    let opened = open(&delta, &keyring(&[&key(1)])).unwrap();
    let target = verified(&pair.target_bundle);
    let entry = target.image(0).unwrap();
    let patch = &opened.manifest().patches[0];
    let range = opened.patches_file_range(0..1);
    let stored = delta[range.start as usize..range.end as usize].to_vec();
    let from = patch.reference_offset as usize;
    let reference = &pair.base[from..from + patch.reference_length as usize];
    // Damaged stored bytes are caught before decompression.
    let mut damaged = stored.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    assert!(matches!(
        opened.apply(patch, &damaged, reference, entry),
        Err(Error::ChunkHashMismatch { .. })
    ));
    // A booted slot that changed under the reference gives wrong bytes: refused too.
    let mut changed = reference.to_vec();
    for byte in changed.iter_mut().step_by(97) {
        *byte ^= 0xff;
    }
    assert!(opened.apply(patch, &stored, &changed, entry).is_err());
}
