//! Bundles built from generated data read back exactly, with and without compression,
//! through every reading interface, and builds are reproducible.

mod common;

use std::io::{Cursor, Read};

use common::*;
use proptest::prelude::*;
use rota_bundle::*;

#[test]
fn round_trip_without_and_with_zstd() {
    let rootfs = image_data(1, 1_500_000);
    let app = image_data(2, 300_000);
    for compression in ALL_COMPRESSIONS {
        let key = key(1);
        let bundle = build(&[("rootfs", &rootfs), ("app", &app)], compression, &[&key]);
        let images = read_all(&bundle, &keyring(&[&key])).unwrap();
        assert_eq!(
            images,
            vec![
                ("rootfs".into(), rootfs.clone()),
                ("app".into(), app.clone())
            ]
        );

        let manifest = manifest_of(&bundle, &key);
        assert_eq!(manifest.compatible, "test-board");
        assert_eq!(manifest.version, "1.2.3-rc.1+build.7".parse().unwrap());
        assert_eq!(manifest.security_version, 4);
        assert_eq!(manifest.build_time, 1_700_000_000);
        assert_eq!(
            manifest.source.as_ref().unwrap().git_branch.as_deref(),
            Some("main")
        );
        let entry = &manifest.images[0];
        assert_eq!(entry.compression, compression);
        assert_eq!(entry.size, rootfs.len() as u64);
        assert_eq!(entry.sha256, Sha256Digest::of(&rootfs));
        assert!(
            entry.chunks.len() > 5,
            "1.5 MB should give many ~64 KiB chunks"
        );
        for chunk in &entry.chunks {
            assert!(chunk.length <= CHUNK_MAX_LENGTH);
        }
        if compression.is_zstd() {
            assert!(
                entry.payload_length < entry.size,
                "the repeated text compresses"
            );
        }
    }
}

#[test]
fn serial_and_parallel_readers_and_writers_agree() {
    let data = image_data(3, 700_000);
    let key = key(1);
    let mut bundles = Vec::new();
    for workers in [0, 1, 3] {
        let mut builder = builder(Compression::Zstd, &[&key]);
        builder
            .workers(workers)
            .add_image("rootfs", SlotClass::Rootfs, &data[..]);
        let mut bundle = Vec::new();
        builder.write_to(&mut bundle).unwrap();
        bundles.push(bundle);
    }
    assert!(bundles.windows(2).all(|pair| pair[0] == pair[1]));
    // One chunk per hand-off, a few, and many: the bytes come out the same.
    for (workers, run_bytes) in [(0, 1), (1, 300_000), (3, 1 << 20)] {
        let options = ReadOptions {
            workers,
            read_ahead: 2,
            run_bytes,
            compressed_run_bytes: (workers == 3).then_some(200_000),
            check_image_sha256: workers != 1,
            check_decompressed_sha256: workers != 3,
        };
        let mut verified =
            BundleReader::open_with(&bundles[0][..], &keyring(&[&key]), options).unwrap();
        let mut read = Vec::new();
        verified
            .next_image()
            .unwrap()
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, data);
    }
}

#[test]
fn identical_inputs_give_byte_identical_bundles() {
    let data = image_data(4, 900_000);
    let keys = [key(1), key(2)];
    let first = build(
        &[("rootfs", &data)],
        Compression::Zstd,
        &[&keys[0], &keys[1]],
    );
    let second = build(
        &[("rootfs", &data)],
        Compression::Zstd,
        &[&keys[0], &keys[1]],
    );
    assert_eq!(first, second);
    let other_time = {
        let mut builder = builder(Compression::Zstd, &[&keys[0], &keys[1]]);
        builder
            .build_time(1_700_000_001)
            .add_image("rootfs", SlotClass::Rootfs, &data[..]);
        let mut bundle = Vec::new();
        builder.write_to(&mut bundle).unwrap();
        bundle
    };
    assert_ne!(
        first, other_time,
        "the build time is part of the signed manifest"
    );
}

#[test]
fn key_rotation_a_keyring_trusting_only_the_second_signer_accepts() {
    let (old, new, stranger) = (key(1), key(2), key(3));
    let data = image_data(5, 200_000);
    let bundle = build(&[("rootfs", &data)], Compression::None, &[&old, &new]);
    for trusted in [&old, &new] {
        let verified = BundleReader::open(&bundle[..], &keyring(&[trusted])).unwrap();
        assert_eq!(verified.signed_by(), &[trusted.key_id()]);
    }
    let both = BundleReader::open(&bundle[..], &keyring(&[&new, &old, &stranger])).unwrap();
    assert_eq!(both.signed_by(), &[old.key_id(), new.key_id()]);
    assert_eq!(read_all(&bundle, &keyring(&[&new])).unwrap()[0].1, data);
}

#[test]
fn empty_image_round_trips() {
    let key = key(1);
    let bundle = build(
        &[("empty", &[]), ("rootfs", b"tiny")],
        Compression::Zstd,
        &[&key],
    );
    let images = read_all(&bundle, &keyring(&[&key])).unwrap();
    assert_eq!(
        images,
        vec![
            ("empty".into(), vec![]),
            ("rootfs".into(), b"tiny".to_vec())
        ]
    );
}

#[test]
fn an_image_can_be_picked_by_name_skipping_the_ones_before() {
    let key = key(1);
    let (first, second) = (image_data(6, 400_000), image_data(7, 100_000));
    let bundle = build(
        &[("first", &first), ("second", &second)],
        Compression::Zstd,
        &[&key],
    );
    let mut verified = BundleReader::open(&bundle[..], &keyring(&[&key])).unwrap();
    let mut read = Vec::new();
    verified
        .image("second")
        .unwrap()
        .copy_to(&mut read)
        .unwrap();
    assert_eq!(read, second);
    assert!(matches!(
        verified.image("first"),
        Err(Error::ImageAlreadyPassed { image }) if image == "first"
    ));
    assert!(matches!(
        verified.image("third"),
        Err(Error::NoSuchImage { .. })
    ));
    verified.finish().unwrap();
}

#[test]
fn random_access_by_chunk_from_a_seekable_source_and_from_raw_bytes() {
    let key = key(1);
    let data = image_data(8, 800_000);
    for compression in [Compression::None, Compression::Zstd] {
        let bundle = build(&[("rootfs", &data)], compression, &[&key]);
        let mut verified = BundleReader::open(Cursor::new(&bundle), &keyring(&[&key])).unwrap();
        let manifest = verified.verified_manifest().clone();
        let chunks = manifest.manifest().images[0].chunks.clone();
        // Backwards, to show the order does not matter.
        for (index, chunk) in chunks.iter().enumerate().rev() {
            let expected = &data[chunk.offset as usize..][..chunk.length as usize];
            assert_eq!(verified.read_chunk(0, index).unwrap(), expected);
            let range = manifest.chunk_file_range(0, index).unwrap();
            let stored = &bundle[range.start as usize..range.end as usize];
            assert_eq!(manifest.verify_chunk(0, index, stored).unwrap(), expected);
        }
        // Random access did not disturb the stream.
        let mut read = Vec::new();
        verified
            .next_image()
            .unwrap()
            .unwrap()
            .copy_to(&mut read)
            .unwrap();
        assert_eq!(read, data);
        assert!(matches!(
            manifest.verify_chunk(0, chunks.len(), &[]),
            Err(Error::NoSuchChunk { .. })
        ));
    }
}

#[test]
fn a_download_resumes_at_a_chunk_boundary() {
    let key = key(1);
    let data = image_data(9, 900_000);
    let bundle = build(&[("rootfs", &data)], Compression::Zstd, &[&key]);
    let verified = BundleReader::open(&bundle[..], &keyring(&[&key])).unwrap();
    let manifest = verified.verified_manifest().clone();
    let resume_at = manifest.manifest().images[0].chunks.len() / 2;
    // What an HTTP `Range: bytes=START-` request would return.
    let start = manifest.chunk_file_range(0, resume_at).unwrap().start as usize;
    let mut body = &bundle[start..];
    let mut reader = manifest
        .image_reader(0, resume_at, &mut body, &ReadOptions::default())
        .unwrap();
    let mut rest = Vec::new();
    reader.copy_to(&mut rest).unwrap();
    let offset = manifest.manifest().images[0].chunks[resume_at].offset as usize;
    assert_eq!(rest, &data[offset..]);
}

#[test]
fn the_image_digest_is_what_sha256sum_prints_and_chunks_are_plain_zstd_frames() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(1);
    let data = image_data(10, 600_000);
    let image_path = dir.path().join("rootfs.img");
    std::fs::write(&image_path, &data).unwrap();
    let mut builder = builder(Compression::Zstd, &[&key]);
    builder.add_image_file("rootfs", SlotClass::Rootfs, &image_path);
    let mut bundle = Vec::new();
    let summary = builder.write_to(&mut bundle).unwrap();
    assert_eq!(summary.bundle_length, bundle.len() as u64);

    let sha256sum = std::process::Command::new("sha256sum")
        .arg(&image_path)
        .output()
        .unwrap();
    let printed = String::from_utf8(sha256sum.stdout).unwrap();
    assert_eq!(
        printed.split_whitespace().next().unwrap(),
        summary.manifest.images[0].sha256.to_hex()
    );

    // Any chunk's stored bytes, cut out of the file by offset, decompress with the zstd CLI.
    let verified = BundleReader::open(&bundle[..], &keyring(&[&key])).unwrap();
    let manifest = verified.verified_manifest();
    let index = 3;
    let range = manifest.chunk_file_range(0, index).unwrap();
    let frame_path = dir.path().join("chunk.zst");
    std::fs::write(
        &frame_path,
        &bundle[range.start as usize..range.end as usize],
    )
    .unwrap();
    let chunk = &summary.manifest.images[0].chunks[index];
    assert_eq!(
        zstd_decompress(&frame_path, &[]),
        &data[chunk.offset as usize..][..chunk.length as usize]
    );

    // A prefixed frame decompresses with the zstd CLI given its prefix as --patch-from.
    let window = 64usize << 10;
    let mut prefixed_builder = common::builder(
        Compression::ZstdPrefixed {
            window: window as u32,
        },
        &[&key],
    );
    prefixed_builder.add_image_file("rootfs", SlotClass::Rootfs, &image_path);
    let mut prefixed = Vec::new();
    let summary = prefixed_builder.write_to(&mut prefixed).unwrap();
    let verified = BundleReader::open(&prefixed[..], &keyring(&[&key])).unwrap();
    let range = verified
        .verified_manifest()
        .chunk_file_range(0, index)
        .unwrap();
    std::fs::write(
        &frame_path,
        &prefixed[range.start as usize..range.end as usize],
    )
    .unwrap();
    let chunk = &summary.manifest.images[0].chunks[index];
    let start = chunk.offset as usize;
    assert!(start > window, "the prefix is a whole window");
    let prefix_path = dir.path().join("prefix");
    std::fs::write(&prefix_path, &data[start - window..start]).unwrap();
    let patch_from = [
        std::ffi::OsStr::new("--patch-from"),
        prefix_path.as_os_str(),
    ];
    assert_eq!(
        zstd_decompress(&frame_path, &patch_from),
        &data[start..][..chunk.length as usize]
    );
}

/// `zstd -d` of one file with `options`, which must succeed.
fn zstd_decompress(frame: &std::path::Path, options: &[&std::ffi::OsStr]) -> Vec<u8> {
    let zstd = std::process::Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .args(options)
        .arg(frame)
        .output()
        .unwrap();
    assert!(
        zstd.status.success(),
        "{}",
        String::from_utf8_lossy(&zstd.stderr)
    );
    zstd.stdout
}

/// compatible, version, security version, build time, source, description.
type ManifestFields = (
    String,
    (u64, u64, u64),
    u32,
    u64,
    Option<(String, Option<String>)>,
    String,
);

fn arbitrary_manifest_fields() -> impl Strategy<Value = ManifestFields> {
    (
        "[a-z0-9][a-z0-9-]{0,30}",
        (any::<u64>(), any::<u64>(), any::<u64>()),
        any::<u32>(),
        any::<u64>(),
        proptest::option::of(("[0-9a-f]{40}", proptest::option::of("[a-z/._-]{1,20}"))),
        ".{0,200}",
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the manifest fields hold, they come back unchanged through sign and verify.
    #[test]
    fn manifest_fields_round_trip(
        (compatible, (major, minor, patch), security_version, build_time, source, description)
            in arbitrary_manifest_fields(),
        image in proptest::collection::vec(any::<u8>(), 0..3000),
        zstd in any::<bool>(),
    ) {
        let key = key(1);
        let version = semver::Version::new(major, minor, patch);
        let mut builder = BundleBuilder::new(compatible.clone(), version.clone());
        let source = source.map(|(git_commit, git_branch)| SourceInfo { git_commit, git_branch });
        if let Some(source) = &source {
            builder.source(source.clone());
        }
        let app = AppSpec {
            units: vec![format!("{compatible}.service")],
            checks: vec![AppCheck {
                name: "answers".into(),
                probe: AppProbe::Http {
                    url: "http://127.0.0.1/".into(),
                    expect_status: 200,
                    body_contains: Some(description.clone()),
                },
                attempt_timeout_secs: security_version,
            }],
            check_deadline_secs: 30,
            os_versions: Some(format!(">={major}.{minor}")),
        };
        builder
            .security_version(security_version)
            .build_time(build_time)
            .description(description.clone())
            .compression(if zstd { Compression::Zstd } else { Compression::None })
            .sign_with(&key)
            .app(app.clone())
            .add_image("app", SlotClass::App, &image[..]);
        let mut bundle = Vec::new();
        let summary = builder.write_to(&mut bundle).unwrap();
        let verified = BundleReader::open(&bundle[..], &keyring(&[&key])).unwrap();
        let manifest = verified.manifest();
        prop_assert_eq!(manifest, &summary.manifest);
        prop_assert_eq!(&manifest.compatible, &compatible);
        prop_assert_eq!(&manifest.version, &version);
        prop_assert_eq!(manifest.security_version, security_version);
        prop_assert_eq!(manifest.build_time, build_time);
        prop_assert_eq!(&manifest.source, &source);
        prop_assert_eq!(&manifest.description, &description);
        prop_assert_eq!(manifest.images[0].slot_class, SlotClass::App);
        prop_assert_eq!(manifest.app.as_ref(), Some(&app));
        prop_assert_eq!(&read_all(&bundle, &keyring(&[&key])).unwrap()[0].1, &image);
    }
}

#[test]
fn images_from_files_and_from_readers_give_the_same_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(1);
    let (rootfs, app) = (image_data(11, 500_000), image_data(12, 70_000));
    let paths = [dir.path().join("rootfs.img"), dir.path().join("app.img")];
    std::fs::write(&paths[0], &rootfs).unwrap();
    std::fs::write(&paths[1], &app).unwrap();
    for compression in ALL_COMPRESSIONS {
        let from_readers = build(&[("rootfs", &rootfs), ("app", &app)], compression, &[&key]);
        let mut builder = builder(compression, &[&key]);
        builder
            .spool_dir(dir.path())
            .add_image_file("rootfs", SlotClass::Rootfs, &paths[0])
            .add_image_file("app", SlotClass::Rootfs, &paths[1]);
        let mut from_files = Vec::new();
        builder.write_to(&mut from_files).unwrap();
        assert!(from_files == from_readers, "{compression:?}");
    }
    let mut builder = builder(Compression::None, &[&key]);
    builder.add_image_file("rootfs", SlotClass::Rootfs, dir.path().join("missing.img"));
    let error = builder.write_to(&mut Vec::new()).unwrap_err();
    assert!(matches!(&error, Error::ImageInput { image, path: Some(_), .. } if image == "rootfs"));
    assert!(error.to_string().contains("missing.img"), "{error}");
}

#[test]
fn workers_write_verified_runs_to_a_positioned_sink_and_report_them_in_order() {
    let key = key(1);
    let data = image_data(10, 1_200_000);
    for compression in ALL_COMPRESSIONS {
        let bundle = build(&[("rootfs", &data)], compression, &[&key]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        std::fs::write(&path, vec![0xeeu8; data.len() + 4096]).unwrap();
        let slot = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // Compressed runs get their own, smaller budget.
        let budget = if compression.is_zstd() {
            150_000
        } else {
            300_000
        };
        let options = ReadOptions {
            workers: 3,
            read_ahead: 4,
            run_bytes: 300_000,
            compressed_run_bytes: Some(150_000),
            ..ReadOptions::default()
        };
        let mut verified =
            BundleReader::open_with(&bundle[..], &keyring(&[&key]), options).unwrap();
        let mut image = verified.next_image().unwrap().unwrap();
        let chunk_count = image.entry().chunks.len();
        // What a chunk counts against the budget: its larger form.
        let sizes: Vec<u64> = image
            .entry()
            .chunks
            .iter()
            .map(|c| u64::from(c.length.max(c.stored_length)))
            .collect();
        image.write_to(std::sync::Arc::new(slot));
        let (mut next_chunk, mut end) = (0, 0);
        while let Some(run) = image.next_written_run().unwrap() {
            assert_eq!(
                run.chunks.start, next_chunk,
                "{compression:?}: runs come in order"
            );
            assert!(run.end > end);
            let counted: u64 = sizes[run.chunks.clone()].iter().sum();
            assert!(
                run.chunks.len() == 1 || counted <= budget,
                "{compression:?}: a run of {counted} bytes"
            );
            if let Some(next) = sizes.get(run.chunks.end) {
                assert!(
                    counted + next > budget,
                    "{compression:?}: a run stopped short"
                );
            }
            (next_chunk, end) = (run.chunks.end, run.end);
        }
        assert!(next_chunk == chunk_count && end == data.len() as u64);
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written[..data.len()], data[..], "{compression:?}");
        assert!(written[data.len()..].iter().all(|&b| b == 0xee));
    }
}

#[test]
fn a_sink_that_cannot_be_written_ends_the_image_with_a_write_error() {
    let key = key(1);
    let data = image_data(11, 400_000);
    let bundle = build(&[("rootfs", &data)], Compression::None, &[&key]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slot");
    std::fs::write(&path, vec![0u8; data.len()]).unwrap();
    // Opened read-only: every positioned write fails with EBADF.
    let read_only = std::fs::File::open(&path).unwrap();
    let mut verified = BundleReader::open(&bundle[..], &keyring(&[&key])).unwrap();
    let mut image = verified.next_image().unwrap().unwrap();
    image.write_to(std::sync::Arc::new(read_only));
    let error = image.next_written_run().unwrap_err();
    assert!(matches!(error, Error::Write(_)), "{error:?}");
    assert!(image.next_written_run().is_err(), "the reader stays failed");
}

/// A delta install reads many ranges of one image with one pool of workers: every range comes
/// out verified and right, also after a reader was dropped half-way with runs in flight.
#[test]
fn ranges_read_with_one_lent_pool_match_the_image() {
    let key = key(1);
    let image = image_data(7, 3 << 20);
    let bundle = build(&[("rootfs", &image)], Compression::Zstd, &[&key]);
    let reader = BundleReader::open(&bundle[..], &keyring(&[&key])).unwrap();
    let verified = reader.verified_manifest().clone();
    let chunks = &verified.manifest().images[0].chunks;
    let options = ReadOptions {
        workers: 2,
        read_ahead: 3,
        ..ReadOptions::default()
    };
    let mut pool = VerifyPool::new(2);
    let count = chunks.len();
    for (round, range) in [0..count / 3, count / 3..count / 2, count / 2..count]
        .into_iter()
        .enumerate()
    {
        let start = verified.chunk_file_range(0, range.start).unwrap().start as usize;
        let end = verified.chunk_file_range(0, range.end - 1).unwrap().end as usize;
        let mut source = &bundle[start..end];
        let mut ranged = verified
            .image_range_reader_in(0, range.clone(), &mut source, &options, &mut pool)
            .unwrap();
        if round == 1 {
            // Dropped after one run: the pool goes back with nothing in flight.
            ranged.next_run().unwrap().unwrap();
            continue;
        }
        let mut out = Vec::new();
        ranged.copy_to(&mut out).unwrap();
        let from = chunks[range.start].offset as usize;
        assert_eq!(out, image[from..from + out.len()], "range {range:?}");
        assert_eq!(
            from + out.len(),
            (chunks[range.end - 1].offset + u64::from(chunks[range.end - 1].length)) as usize
        );
    }
}

/// Content that repeats across chunks (as files do in a root filesystem): prefixed frames find
/// it, independent frames cannot. Such bundles say format version 2; others stay version 1, so
/// updaters that predate prefixes still read them.
#[test]
fn prefixed_frames_find_repeats_across_chunks_and_make_a_version_2_bundle() {
    let key = key(1);
    let once = image_data(21, 200_000);
    let repeated: Vec<u8> = once.iter().chain(&once).chain(&once).copied().collect();
    let independent = build(&[("rootfs", &repeated)], Compression::Zstd, &[&key]);
    let prefixed = build(
        &[("rootfs", &repeated)],
        Compression::ZstdPrefixed { window: 256 << 10 },
        &[&key],
    );
    assert_eq!(independent[8..12], 1u32.to_le_bytes());
    assert_eq!(prefixed[8..12], 2u32.to_le_bytes());
    let payload = |bundle: &[u8]| manifest_of(bundle, &key).images[0].payload_length;
    assert!(
        payload(&prefixed) * 2 < payload(&independent),
        "prefixed {} bytes, independent {}",
        payload(&prefixed),
        payload(&independent)
    );
    assert_eq!(
        read_all(&prefixed, &keyring(&[&key])).unwrap()[0].1,
        repeated
    );

    // A chunk alone decompresses only at the image start, where its prefix is empty.
    let verified = BundleReader::open(&prefixed[..], &keyring(&[&key])).unwrap();
    let manifest = verified.verified_manifest().clone();
    let stored = |index| {
        let range = manifest.chunk_file_range(0, index).unwrap();
        &prefixed[range.start as usize..range.end as usize]
    };
    let first = &manifest.manifest().images[0].chunks[0];
    assert_eq!(
        manifest.verify_chunk(0, 0, stored(0)).unwrap(),
        repeated[..first.length as usize]
    );
    assert!(matches!(
        manifest.verify_chunk(0, 1, stored(1)),
        Err(Error::NeedsPrecedingBytes { index: 1, .. })
    ));
}

/// What `ImageReader::read_history` reads from: `bytes`, which start at image offset `at`.
fn read_from(bytes: &[u8], at: u64) -> impl FnMut(&mut [u8], u64) -> std::io::Result<()> + '_ {
    move |buffer, offset| {
        let from = (offset - at) as usize;
        buffer.copy_from_slice(&bytes[from..from + buffer.len()]);
        Ok(())
    }
}

/// A delta install fetches a range of a prefixed image and gives the reader the image bytes
/// before it from the slot it is writing: the reader asks for exactly the chunks the first
/// prefix reaches, checks them, and refuses to start without them or with wrong ones.
#[test]
fn a_prefixed_range_reads_after_the_history_it_asks_for() {
    let key = key(1);
    let image = image_data(22, 1_500_000);
    let window = 64usize << 10;
    let bundle = build(&[("rootfs", &image)], PREFIXED, &[&key]);
    let verified = BundleReader::open(&bundle[..], &keyring(&[&key])).unwrap();
    let manifest = verified.verified_manifest().clone();
    let chunks = manifest.manifest().images[0].chunks.clone();
    let mut pool = VerifyPool::new(2);
    let bytes_of = |range: std::ops::Range<usize>| {
        let from = chunks[range.start].offset as usize;
        let last = &chunks[range.end - 1];
        image[from..(last.offset + u64::from(last.length)) as usize].to_vec()
    };
    for start in [1, 2, chunks.len() / 2, chunks.len() - 1] {
        let range = start..chunks.len();
        let body = manifest.chunk_file_range(0, start).unwrap().start as usize;
        fn open<'a>(
            manifest: &VerifiedManifest,
            range: std::ops::Range<usize>,
            source: &'a mut &[u8],
            pool: &'a mut VerifyPool,
        ) -> ImageReader<'a> {
            manifest
                .image_range_reader_in(0, range, source, &ReadOptions::default(), pool)
                .unwrap()
        }

        let mut source = &bundle[body..];
        let mut without = open(&manifest, range.clone(), &mut source, &mut pool);
        let history = without.history_chunks();
        assert_eq!(history.end, start);
        let reach = chunks[start].offset - chunks[history.start].offset;
        assert!(reach as usize >= window.min(chunks[start].offset as usize));
        assert!(
            history.len() == 1 || (reach - u64::from(chunks[history.start].length)) < window as u64
        );
        assert!(matches!(
            without.next_run(),
            Err(Error::NeedsPrecedingBytes { index, .. }) if index == start
        ));
        drop(without);

        let mut source = &bundle[body..];
        let mut damaged = open(&manifest, range.clone(), &mut source, &mut pool);
        let mut wrong = bytes_of(history.clone());
        wrong[0] ^= 1;
        assert!(matches!(
            damaged.read_history(&mut read_from(&wrong, chunks[history.start].offset)),
            Err(Error::ChunkHashMismatch { index, .. }) if index == history.start
        ));
        drop(damaged);

        let mut source = &bundle[body..];
        let mut reader = open(&manifest, range.clone(), &mut source, &mut pool);
        let right = bytes_of(history.clone());
        reader
            .read_history(&mut read_from(&right, chunks[history.start].offset))
            .unwrap();
        let mut out = Vec::new();
        reader.copy_to(&mut out).unwrap();
        assert_eq!(
            out,
            image[chunks[start].offset as usize..],
            "from chunk {start}"
        );
    }
}

#[test]
fn a_prefix_window_outside_the_format_limits_is_refused_when_writing() {
    let key = key(1);
    for window in [1000, 2 << 10, 16 << 20] {
        let mut builder = builder(Compression::ZstdPrefixed { window }, &[&key]);
        builder.add_image("rootfs", SlotClass::Rootfs, &[1u8; 5000][..]);
        let error = builder.write_to(&mut Vec::new()).unwrap_err();
        assert!(
            error.to_string().contains("prefix window"),
            "{window}: {error}"
        );
    }
}
