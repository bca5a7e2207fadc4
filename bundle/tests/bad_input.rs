//! A corpus of damaged and lying bundles. Each must fail with its specific error, the reader
//! must never hand out a byte that did not pass its chunk's hash (everything handed out is
//! a prefix of the true image, ending at the damaged chunk), and nothing of the manifest may
//! be handed out when the signature does not check out (open fails before any image).

mod common;

use std::io::Read;
use std::ops::Range;

use common::*;
use rota_bundle::*;

/// Offsets of a bundle's parts, taken from its header as FORMAT.md describes it (not from
/// the crate), so the tests also check the documented layout.
struct Layout {
    manifest: Range<usize>,
    signatures: Range<usize>,
    payload: Range<usize>,
}

fn layout(bundle: &[u8]) -> Layout {
    let u32_at = |at: usize| u32::from_le_bytes(bundle[at..at + 4].try_into().unwrap()) as usize;
    let payload_length = u64::from_le_bytes(bundle[16..24].try_into().unwrap()) as usize;
    let manifest = 32..32 + u32_at(24);
    let signatures = manifest.end..manifest.end + u32_at(28);
    let payload = signatures.end..signatures.end + payload_length;
    assert_eq!(payload.end, bundle.len());
    Layout {
        manifest,
        signatures,
        payload,
    }
}

/// What reading a whole bundle chunk by chunk gave before it stopped.
struct Attempt {
    result: Result<()>,
    /// Per image reached: its name and the bytes handed out.
    yielded: Vec<(String, Vec<u8>)>,
    opened: bool,
}

fn attempt(bundle: &[u8], keyring: &Keyring) -> Attempt {
    let mut yielded: Vec<(String, Vec<u8>)> = Vec::new();
    let mut opened = false;
    let result = (|| {
        let mut verified = BundleReader::open(bundle, keyring)?;
        opened = true;
        while let Some(mut image) = verified.next_image()? {
            yielded.push((image.entry().name.clone(), Vec::new()));
            while let Some(run) = image.next_run()? {
                yielded.last_mut().unwrap().1.extend_from_slice(&run.data);
            }
        }
        verified.finish().map(drop)
    })();
    Attempt {
        result,
        yielded,
        opened,
    }
}

impl Attempt {
    fn error(&self) -> &Error {
        match &self.result {
            Ok(()) => panic!("a damaged bundle was accepted"),
            Err(error) => error,
        }
    }

    /// Everything handed out is a prefix of the true image; returns the total.
    fn assert_only_true_prefixes(&self, originals: &[(&str, &[u8])]) -> usize {
        for (name, data) in &self.yielded {
            let original = originals.iter().find(|(n, _)| n == name).unwrap().1;
            assert!(
                original.starts_with(data),
                "image {name}: handed out bytes that are not the image's"
            );
        }
        self.yielded.iter().map(|(_, data)| data.len()).sum()
    }
}

fn flip(bundle: &[u8], bit: usize) -> Vec<u8> {
    let mut damaged = bundle.to_vec();
    damaged[bit / 8] ^= 1 << (bit % 8);
    damaged
}

struct Fixture {
    key: SigningKey,
    rootfs: Vec<u8>,
    app: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            key: key(1),
            rootfs: image_data(21, 1_500_000),
            app: image_data(22, 300_000),
        }
    }

    fn images(&self) -> [(&str, &[u8]); 2] {
        [("rootfs", &self.rootfs), ("app", &self.app)]
    }

    fn bundle(&self, compression: Compression) -> Vec<u8> {
        build(&self.images(), compression, &[&self.key])
    }

    fn keyring(&self) -> Keyring {
        keyring(&[&self.key])
    }
}

#[test]
fn every_bit_flip_in_the_header_is_refused() {
    let fixture = Fixture::new();
    let bundle = fixture.bundle(Compression::Zstd);
    for bit in 0..HEADER_LENGTH * 8 {
        let outcome = attempt(&flip(&bundle, bit), &fixture.keyring());
        let error = outcome.error();
        assert_eq!(outcome.assert_only_true_prefixes(&fixture.images()), 0);
        let ok = match bit / 8 {
            0..8 => matches!(error, Error::BadMagic { .. }),
            // A flip to another version this reader knows is caught by the signature.
            8..12 if (1..=FORMAT_VERSION).contains(&(1 ^ (1 << (bit - 64)))) => {
                matches!(error, Error::BadSignature { .. })
            }
            8..12 => matches!(error, Error::UnsupportedVersion { found, supported: FORMAT_VERSION }
                if *found == 1 ^ (1 << (bit - 64))),
            12..16 => matches!(error, Error::UnsupportedFlags { .. }),
            // Payload length and manifest length are signed.
            16..24 => matches!(error, Error::BadSignature { .. }),
            // A wrong manifest length moves every later boundary: what breaks first depends
            // on which bytes land in the signature block, but it always breaks at open.
            24..28 => {
                !outcome.opened
                    && matches!(
                        error,
                        Error::LengthLimit { .. }
                            | Error::Truncated { .. }
                            | Error::SignatureBlockMalformed { .. }
                            | Error::NoTrustedSignature { .. }
                            | Error::BadSignature { .. }
                    )
            }
            // The signature block length is not signed (so signatures can be added later):
            // a wrong one either breaks the block or shifts the payload under its hashes.
            _ => matches!(
                error,
                Error::LengthLimit { .. }
                    | Error::Truncated { .. }
                    | Error::SignatureBlockMalformed { .. }
                    | Error::ChunkHashMismatch { index: 0, .. }
            ),
        };
        assert!(ok, "bit {bit}: unexpected error {error:?}");
    }
}

#[test]
fn every_bit_flip_in_the_manifest_breaks_the_signature_before_anything_is_decoded() {
    let fixture = Fixture::new();
    let bundle = fixture.bundle(Compression::None);
    let manifest = layout(&bundle).manifest;
    for bit in manifest.start * 8..manifest.end * 8 {
        let outcome = attempt(&flip(&bundle, bit), &fixture.keyring());
        assert!(!outcome.opened);
        assert!(
            matches!(outcome.error(), Error::BadSignature { key_id } if *key_id == fixture.key.key_id()),
            "bit {bit}: {:?}",
            outcome.error()
        );
    }
}

#[test]
fn every_bit_flip_in_the_signature_block_is_refused() {
    let fixture = Fixture::new();
    let bundle = fixture.bundle(Compression::None);
    let signatures = layout(&bundle).signatures;
    assert_eq!(signatures.len(), ED25519_ENTRY_LENGTH);
    for bit in signatures.start * 8..signatures.end * 8 {
        let outcome = attempt(&flip(&bundle, bit), &fixture.keyring());
        assert!(!outcome.opened);
        let error = outcome.error();
        let ok = match bit / 8 - signatures.start {
            // An unknown algorithm is skipped, leaving no signature a trusted key made.
            0..2 => matches!(error, Error::NoTrustedSignature { .. }),
            2..4 => matches!(error, Error::SignatureBlockMalformed { .. }),
            4..12 => matches!(error, Error::NoTrustedSignature { key_ids } if key_ids.len() == 1),
            _ => matches!(
                error,
                Error::BadSignature { .. } | Error::SignatureDamaged { .. }
            ),
        };
        assert!(ok, "bit {bit}: unexpected error {error:?}");
    }
}

/// Regression: a damaged signature entry was reported as "header or manifest altered".
#[test]
fn a_damaged_signature_is_not_blamed_on_the_header_or_manifest() {
    let fixture = Fixture::new();
    let bundle = fixture.bundle(Compression::None);
    let signatures = layout(&bundle).signatures;
    let mut damaged = 0;
    // The 64 signature bytes after the entry's 12-byte prefix.
    for bit in (signatures.start + 12) * 8..signatures.end * 8 {
        let outcome = attempt(&flip(&bundle, bit), &fixture.keyring());
        let message = outcome.error().to_string();
        assert!(
            message.contains("signature entry"),
            "bit {bit}: {message:?} does not name the signature"
        );
        if matches!(outcome.error(), Error::SignatureDamaged { .. }) {
            damaged += 1;
        }
    }
    // Every flip of S's top 3 bits makes it no reduced scalar; most flips of R leave the curve.
    assert!(damaged >= 3, "{damaged} flips recognised as damage");
    // The signed bytes altered, the signature intact: the message cannot single it out.
    let manifest = layout(&bundle).manifest;
    let outcome = attempt(&flip(&bundle, manifest.start * 8), &fixture.keyring());
    assert!(matches!(outcome.error(), Error::BadSignature { .. }));
}

/// Regression: key ids were printed with their Debug form (`[KeyId(0a1b…)]`).
#[test]
fn key_ids_in_messages_are_plain_hex() {
    let fixture = Fixture::new();
    let bundle = fixture.bundle(Compression::None);
    let message = attempt(&bundle, &keyring(&[&key(9)])).error().to_string();
    let id = fixture.key.key_id().to_string();
    assert_eq!(id.len(), 16);
    assert!(
        message.ends_with(&format!("(the bundle is signed by key {id})")),
        "{message}"
    );
    assert!(
        !message.contains("KeyId") && !message.contains('['),
        "{message}"
    );
}

#[test]
fn a_damaged_signature_is_outvoted_only_by_another_trusted_one() {
    let (first, second) = (key(1), key(2));
    let data = image_data(23, 100_000);
    let bundle = build(&[("rootfs", &data)], Compression::None, &[&first, &second]);
    let signatures = layout(&bundle).signatures;
    // The last byte of the first entry's signature.
    let damaged = flip(&bundle, (signatures.start + ED25519_ENTRY_LENGTH - 1) * 8);
    let verified = BundleReader::open(&damaged[..], &keyring(&[&first, &second])).unwrap();
    assert_eq!(verified.signed_by(), &[second.key_id()]);
    assert!(matches!(
        BundleReader::open(&damaged[..], &keyring(&[&first])),
        Err(Error::BadSignature { key_id }) if key_id == first.key_id()
    ));
}

#[test]
fn without_the_decompressed_hash_a_bit_flip_in_any_stored_chunk_is_still_caught() {
    let fixture = Fixture::new();
    let bundle = fixture.bundle(Compression::Zstd);
    let manifest = manifest_of(&bundle, &fixture.key);
    let payload = layout(&bundle).payload;
    // As the updater reads: stored digests only, a chunk or a few per hand-off.
    let options = ReadOptions {
        check_image_sha256: false,
        check_decompressed_sha256: false,
        run_bytes: 200_000,
        ..ReadOptions::default()
    };
    for image in &manifest.images {
        for (index, chunk) in image.chunks.iter().enumerate() {
            let last_byte =
                payload.start + (chunk.stored_offset + u64::from(chunk.stored_length)) as usize - 1;
            let damaged = flip(&bundle, last_byte * 8);
            let verified =
                BundleReader::open_with(&damaged[..], &fixture.keyring(), options.clone());
            let error = verified.unwrap().verify_all().unwrap_err();
            assert!(
                matches!(&error, Error::ChunkHashMismatch { image: name, index: i }
                    if *name == image.name && *i == index),
                "{} chunk {index}: {error:?}",
                image.name
            );
        }
    }
}

#[test]
fn a_bit_flip_in_any_chunk_stops_the_reader_right_before_that_chunk() {
    let fixture = Fixture::new();
    for compression in ALL_COMPRESSIONS {
        let bundle = fixture.bundle(compression);
        let manifest = manifest_of(&bundle, &fixture.key);
        let payload = layout(&bundle).payload;
        let mut checked = 0;
        for (image_index, image) in manifest.images.iter().enumerate() {
            for (index, chunk) in image.chunks.iter().enumerate() {
                let middle = payload.start
                    + (chunk.stored_offset + u64::from(chunk.stored_length) / 2) as usize;
                let damaged = flip(&bundle, middle * 8 + 3);
                let outcome = attempt(&damaged, &fixture.keyring());
                assert!(
                    matches!(outcome.error(), Error::ChunkHashMismatch { image: name, index: i }
                        if *name == image.name && *i == index),
                    "{compression:?} {} chunk {index}: {:?}",
                    image.name,
                    outcome.error()
                );
                outcome.assert_only_true_prefixes(&fixture.images());
                // Every earlier chunk was handed out, nothing of the damaged one.
                assert_eq!(outcome.yielded.len(), image_index + 1);
                assert_eq!(outcome.yielded[image_index].1.len() as u64, chunk.offset);
                checked += 1;
            }
        }
        assert!(checked > 10);
    }
}

#[test]
fn the_read_interface_stops_at_a_damaged_chunk_with_its_error() {
    let fixture = Fixture::new();
    let bundle = fixture.bundle(Compression::Zstd);
    let manifest = manifest_of(&bundle, &fixture.key);
    let chunk = &manifest.images[0].chunks[4];
    let at = layout(&bundle).payload.start + chunk.stored_offset as usize;
    let damaged = flip(&bundle, at * 8);
    let mut verified = BundleReader::open(&damaged[..], &fixture.keyring()).unwrap();
    let mut image = verified.next_image().unwrap().unwrap();
    let mut handed_out = Vec::new();
    let mut buffer = [0u8; 10_000];
    let error = loop {
        match image.read(&mut buffer) {
            Ok(0) => panic!("a damaged image was read to its end"),
            Ok(n) => handed_out.extend_from_slice(&buffer[..n]),
            Err(error) => break error,
        }
    };
    assert_eq!(handed_out, &fixture.rootfs[..chunk.offset as usize]);
    assert!(matches!(
        Error::from_io(&error),
        Some(Error::ChunkHashMismatch { index: 4, .. })
    ));
    // It stays failed.
    assert!(image.read(&mut buffer).is_err());
}

/// Reads `bundle` up to `cut`, then fails as a broken connection does.
struct BreaksAfter<'a> {
    bundle: &'a [u8],
    position: usize,
    cut: usize,
}

impl Read for BreaksAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.position >= self.cut {
            return Err(std::io::ErrorKind::ConnectionReset.into());
        }
        let n = buf.len().min(self.cut - self.position);
        buf[..n].copy_from_slice(&self.bundle[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Regression: a read error used to drop the runs in the read-ahead window (several MiB, all
/// received), so a resumed download fetched them again and a link that broke more often than
/// that never finished.
#[test]
fn a_read_error_hands_out_every_chunk_that_arrived_whole_before_it() {
    let fixture = Fixture::new();
    for compression in ALL_COMPRESSIONS {
        let bundle = fixture.bundle(compression);
        let manifest = manifest_of(&bundle, &fixture.key);
        let payload = layout(&bundle).payload;
        let chunks = &manifest.images[0].chunks;
        let options = ReadOptions {
            workers: 2,
            read_ahead: 4,
            run_bytes: 1 << 20,
            ..ReadOptions::default()
        };
        let mut checked = 0;
        for (index, chunk) in chunks.iter().enumerate().skip(1) {
            // Inside the chunk, and right at its start.
            for into in [u64::from(chunk.stored_length) / 2, 0] {
                let cut = payload.start + (chunk.stored_offset + into) as usize;
                let mut source = BreaksAfter {
                    bundle: &bundle,
                    position: 0,
                    cut,
                };
                let mut verified =
                    BundleReader::open_with(&mut source, &fixture.keyring(), options.clone())
                        .unwrap();
                let mut image = verified.next_image().unwrap().unwrap();
                let mut handed_out = Vec::new();
                let error = loop {
                    match image.next_run() {
                        Ok(Some(run)) => handed_out.extend_from_slice(&run.data),
                        Ok(None) => panic!("a broken stream was read to its end"),
                        Err(error) => break error,
                    }
                };
                assert_eq!(
                    handed_out.len() as u64,
                    chunk.offset,
                    "{compression:?} cut in chunk {index}: every whole chunk before it"
                );
                assert_eq!(handed_out, &fixture.rootfs[..chunk.offset as usize]);
                assert!(
                    matches!(&error, Error::Read { part: Part::Chunk { index: i, .. }, .. } if *i == index),
                    "{compression:?} cut in chunk {index}: {error:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 10);
    }
}

#[test]
fn truncation_at_every_part_boundary_and_inside_every_part() {
    let fixture = Fixture::new();
    let bundle = fixture.bundle(Compression::Zstd);
    let parts = layout(&bundle);
    let manifest = manifest_of(&bundle, &fixture.key);
    let mut cases: Vec<(usize, Part)> = vec![
        (0, Part::Header),
        (7, Part::Header),
        (12, Part::Header),
        (31, Part::Header),
        (32, Part::Manifest),
        (
            parts.manifest.start + parts.manifest.len() / 2,
            Part::Manifest,
        ),
        (parts.manifest.end - 1, Part::Manifest),
        (parts.signatures.start, Part::SignatureBlock),
        (parts.signatures.start + 40, Part::SignatureBlock),
        (parts.signatures.end - 1, Part::SignatureBlock),
    ];
    for image in &manifest.images {
        for (index, chunk) in image.chunks.iter().enumerate() {
            let start = parts.payload.start + chunk.stored_offset as usize;
            let part = Part::Chunk {
                image: image.name.clone(),
                index,
            };
            cases.push((start, part.clone()));
            cases.push((start + chunk.stored_length as usize / 2, part.clone()));
            cases.push((start + chunk.stored_length as usize - 1, part));
        }
    }
    for (length, part) in cases {
        let outcome = attempt(&bundle[..length], &fixture.keyring());
        match outcome.error() {
            Error::Truncated { part: found } => assert_eq!(found, &part, "cut at {length}"),
            other => panic!("cut at {length}: {other:?}"),
        }
        let handed_out = outcome.assert_only_true_prefixes(&fixture.images());
        if let Part::Chunk { image, index } = &part {
            let image_index = manifest.image_index(image).unwrap();
            let entry = &manifest.images[image_index];
            assert!(outcome.yielded[image_index].1.len() as u64 <= entry.chunks[*index].offset);
        } else {
            assert!(!outcome.opened);
            assert_eq!(handed_out, 0);
        }
    }
}

#[test]
fn trailing_bytes_after_the_payload_are_refused() {
    let fixture = Fixture::new();
    let mut bundle = fixture.bundle(Compression::None);
    bundle.push(0);
    let outcome = attempt(&bundle, &fixture.keyring());
    assert!(matches!(outcome.error(), Error::TrailingData));
}

#[test]
fn an_unknown_format_version_is_named() {
    let fixture = Fixture::new();
    for version in [0u32, FORMAT_VERSION + 1, u32::MAX] {
        let mut bundle = fixture.bundle(Compression::None);
        bundle[8..12].copy_from_slice(&version.to_le_bytes());
        let outcome = attempt(&bundle, &fixture.keyring());
        assert!(matches!(
            outcome.error(),
            Error::UnsupportedVersion { found, supported: FORMAT_VERSION } if *found == version
        ));
    }
}

#[test]
fn a_bundle_signed_by_an_untrusted_key_is_refused_naming_its_signer() {
    let fixture = Fixture::new();
    let bundle = fixture.bundle(Compression::None);
    let outcome = attempt(&bundle, &keyring(&[&key(9)]));
    assert!(!outcome.opened);
    assert!(matches!(
        outcome.error(),
        Error::NoTrustedSignature { key_ids } if key_ids == &[fixture.key.key_id()]
    ));
}

#[test]
fn unsigned_bundles_are_refused() {
    let fixture = Fixture::new();
    // Signatures stripped from a good bundle.
    let bundle = fixture.bundle(Compression::None);
    let parts = layout(&bundle);
    let mut stripped = bundle[..parts.signatures.start].to_vec();
    stripped[28..32].copy_from_slice(&0u32.to_le_bytes());
    stripped.extend_from_slice(&bundle[parts.payload.clone()]);
    assert!(matches!(
        attempt(&stripped, &fixture.keyring()).error(),
        Error::Unsigned
    ));

    // Written without keys.
    let manifest = manifest_of(&bundle, &fixture.key);
    let mut unsigned = Vec::new();
    let payload = &bundle[parts.payload.clone()];
    write_bundle_parts(
        &manifest,
        &[],
        payload.len() as u64,
        &mut &payload[..],
        &mut unsigned,
    )
    .unwrap();
    assert_eq!(unsigned, stripped);
    assert!(matches!(
        attempt(&unsigned, &fixture.keyring()).error(),
        Error::Unsigned
    ));

    // The builder does not write them.
    let builder = builder(Compression::None, &[]);
    assert!(matches!(
        builder.write_to(&mut Vec::new()),
        Err(Error::NoSigningKey)
    ));
}

/// Signs `manifest` properly with the trusted key around `payload`.
fn lying_bundle(fixture: &Fixture, manifest: &Manifest, payload: &[u8]) -> Vec<u8> {
    let mut bundle = Vec::new();
    write_bundle_parts(
        manifest,
        std::slice::from_ref(&fixture.key),
        payload.len() as u64,
        &mut &payload[..],
        &mut bundle,
    )
    .unwrap();
    bundle
}

fn shift_chunks_after(image: &mut ImageEntry, index: usize, by: u64) {
    for chunk in &mut image.chunks[index + 1..] {
        chunk.offset += by;
    }
    image.size += by;
}

#[test]
fn signed_manifests_that_lie_about_sizes_are_refused() {
    let fixture = Fixture::new();
    let zstd_bundle = fixture.bundle(Compression::Zstd);
    let honest = manifest_of(&zstd_bundle, &fixture.key);
    let payload = zstd_bundle[layout(&zstd_bundle).payload].to_vec();
    let invalid = |manifest: &Manifest| {
        let outcome = attempt(
            &lying_bundle(&fixture, manifest, &payload),
            &fixture.keyring(),
        );
        assert!(!outcome.opened, "a lying manifest was handed out");
        assert!(
            matches!(outcome.error(), Error::ManifestInvalid { .. }),
            "{:?}",
            outcome.error()
        );
    };

    // Image size beyond what its chunks cover.
    let mut manifest = honest.clone();
    manifest.images[0].size += 1;
    invalid(&manifest);
    // A chunk of 4 GiB: refused before anything is allocated for it.
    let mut manifest = honest.clone();
    let grow = u64::from(u32::MAX - manifest.images[0].chunks[0].length);
    manifest.images[0].chunks[0].length = u32::MAX;
    shift_chunks_after(&mut manifest.images[0], 0, grow);
    invalid(&manifest);
    // Stored bytes overlapping the next chunk's.
    let mut manifest = honest.clone();
    manifest.images[0].chunks[1].stored_offset -= 1;
    invalid(&manifest);
    // Images overlapping in the payload.
    let mut manifest = honest.clone();
    manifest.images[1].payload_offset -= 1;
    invalid(&manifest);
    // More payload claimed than the header says the bundle has.
    let mut manifest = honest.clone();
    let last = manifest.images[1].chunks.len() - 1;
    manifest.images[1].chunks[last].stored_length += 1;
    manifest.images[1].payload_length += 1;
    invalid(&manifest);

    // A chunk that decompresses to less than the manifest claims (offsets kept consistent,
    // so the table passes validation): refused when the chunk is read, from zstd's frame
    // header, before decompression.
    let mut manifest = honest.clone();
    manifest.images[0].chunks[2].length += 1000;
    shift_chunks_after(&mut manifest.images[0], 2, 1000);
    let outcome = attempt(
        &lying_bundle(&fixture, &manifest, &payload),
        &fixture.keyring(),
    );
    let real = u64::from(honest.images[0].chunks[2].length);
    assert!(
        matches!(outcome.error(), Error::ChunkSizeMismatch { index: 2, expected, found, .. }
            if *expected == real + 1000 && *found == real),
        "{:?}",
        outcome.error()
    );
    outcome.assert_only_true_prefixes(&fixture.images());
    assert_eq!(
        outcome.yielded[0].1.len() as u64,
        honest.images[0].chunks[2].offset
    );

    // An uncompressed chunk whose stored form would differ from its content.
    let plain = fixture.bundle(Compression::None);
    let mut manifest = manifest_of(&plain, &fixture.key);
    manifest.images[0].chunks[0].stored_sha256 = Sha256Digest([0; 32]);
    let outcome = attempt(
        &lying_bundle(&fixture, &manifest, &plain[layout(&plain).payload]),
        &fixture.keyring(),
    );
    assert!(matches!(outcome.error(), Error::ManifestInvalid { .. }));
}

#[test]
fn a_signed_decompression_bomb_stays_within_the_declared_chunk_length() {
    let fixture = Fixture::new();
    // 256 MiB of zeros in one zstd frame that does not state its size: a few KiB stored.
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    encoder.include_contentsize(false).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        std::io::Write::write_all(&mut encoder, &zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 64 << 10);
    let declared = 64u32 << 10;
    let manifest = Manifest {
        compatible: "test-board".into(),
        version: semver::Version::new(1, 0, 0),
        security_version: 0,
        build_time: 0,
        source: None,
        description: String::new(),
        images: vec![ImageEntry {
            name: "rootfs".into(),
            slot_class: SlotClass::Rootfs,
            size: declared.into(),
            sha256: Sha256Digest::of(&zeros[..declared as usize]),
            compression: Compression::Zstd,
            payload_offset: 0,
            payload_length: bomb.len() as u64,
            chunks: vec![Chunk {
                offset: 0,
                length: declared,
                sha256: Sha256Digest::of(&zeros[..declared as usize]),
                stored_offset: 0,
                stored_length: bomb.len() as u32,
                stored_sha256: Sha256Digest::of(&bomb),
            }],
        }],
        app: None,
    };
    let outcome = attempt(
        &lying_bundle(&fixture, &manifest, &bomb),
        &fixture.keyring(),
    );
    assert!(
        matches!(outcome.error(), Error::ChunkDecompress { index: 0, .. }),
        "{:?}",
        outcome.error()
    );
    assert_eq!(outcome.yielded[0].1.len(), 0);
}

#[test]
fn a_wrong_whole_image_digest_holds_back_the_last_run() {
    let fixture = Fixture::new();
    let bundle = fixture.bundle(Compression::Zstd);
    let mut manifest = manifest_of(&bundle, &fixture.key);
    manifest.images[1].sha256 = Sha256Digest::of(b"something else");
    let lying = lying_bundle(&fixture, &manifest, &bundle[layout(&bundle).payload]);
    let outcome = attempt(&lying, &fixture.keyring());
    assert!(matches!(outcome.error(), Error::ImageHashMismatch { image } if image == "app"));
    // Bytes before the last run came out, the last chunk never did.
    let last = manifest.images[1].chunks.last().unwrap();
    let yielded = &outcome.yielded[1].1;
    assert!(yielded.len() as u64 <= last.offset);
    assert_eq!(yielded[..], fixture.app[..yielded.len()]);

    // Without the whole-image check every chunk still passes its own hash.
    let options = ReadOptions {
        check_image_sha256: false,
        ..ReadOptions::default()
    };
    let verified = BundleReader::open_with(&lying[..], &fixture.keyring(), options).unwrap();
    assert_eq!(verified.verify_all().unwrap().len(), 2);
}

/// A bundle whose manifest bytes are `manifest`, whatever they are, properly signed by the
/// fixture's key; built by hand following FORMAT.md, with an empty payload.
fn signed_raw_manifest(fixture: &Fixture, manifest: &[u8]) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes());
    header.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    header.extend_from_slice(&(ED25519_ENTRY_LENGTH as u32).to_le_bytes());
    let dalek = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    assert_eq!(
        dalek.verifying_key().as_bytes(),
        fixture.key.public_key().as_bytes()
    );
    let mut message = b"rota-bundle signature v1\0".to_vec();
    message.extend_from_slice(&header[..28]);
    message.extend_from_slice(manifest);
    let mut bundle = header.clone();
    bundle.extend_from_slice(manifest);
    bundle.extend_from_slice(&1u16.to_le_bytes());
    bundle.extend_from_slice(&64u16.to_le_bytes());
    bundle.extend_from_slice(&fixture.key.key_id().0);
    bundle.extend_from_slice(&ed25519_dalek::Signer::sign(&dalek, &message).to_bytes());
    bundle
}

#[test]
fn a_signed_but_undecodable_manifest_is_refused_after_the_signature_check() {
    let fixture = Fixture::new();
    let bundle = signed_raw_manifest(&fixture, &[0xffu8; 50]);
    assert!(matches!(
        BundleReader::open(&bundle[..], &keyring(&[&key(5)])),
        Err(Error::NoTrustedSignature { .. })
    ));
    assert!(matches!(
        BundleReader::open(&bundle[..], &fixture.keyring()),
        Err(Error::ManifestDecode { .. })
    ));
}

/// Regression: "the signed manifest cannot be decoded" named neither the field nor why.
#[test]
fn an_undecodable_manifest_names_the_field_and_the_decoders_reason() {
    let fixture = Fixture::new();
    let error = |manifest: &[u8]| match BundleReader::open(
        &signed_raw_manifest(&fixture, manifest)[..],
        &fixture.keyring(),
    ) {
        Err(error @ Error::ManifestDecode { .. }) => error.to_string(),
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("an undecodable manifest was accepted"),
    };
    let message = error(&[0xffu8; 50]);
    assert!(message.contains("field compatible"), "{message}");
    assert!(message.to_lowercase().contains("varint"), "{message}");

    // A real manifest cut inside its chunk table.
    let bundle = fixture.bundle(Compression::None);
    let whole = &bundle[layout(&bundle).manifest];
    let message = error(&whole[..whole.len() - 40]);
    // The fixture's last image is "app", the second.
    assert!(message.contains("field images[1].chunks["), "{message}");
    assert!(message.contains("end of buffer"), "{message}");

    let message = error(&[whole, &[0]].concat());
    assert!(message.contains("1 bytes left over"), "{message}");
}
