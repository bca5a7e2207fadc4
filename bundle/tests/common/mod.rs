//! Fixtures shared by the integration tests: generated image data, fixed test keys, and
//! helpers that build bundles and read them back completely.
#![allow(dead_code)]

use rota_bundle::*;

/// Prefixed zstd frames with a window small enough that the test images' chunks reach back
/// across several chunks.
pub const PREFIXED: Compression = Compression::ZstdPrefixed { window: 64 << 10 };

/// Every way a writer stores chunks.
pub const ALL_COMPRESSIONS: [Compression; 3] = [Compression::None, Compression::Zstd, PREFIXED];

/// Deterministic test data that has both incompressible stretches (xorshift noise) and
/// compressible ones (repeated text), so zstd has something to do and chunk boundaries vary.
pub fn image_data(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(length);
    while data.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let stretch = 1024 + (state % 40_000) as usize;
        if state % 3 == 0 {
            let text = format!("line {state:x} of a config file that repeats\n");
            data.extend(text.bytes().cycle().take(stretch));
        } else {
            for _ in 0..stretch / 8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                data.extend_from_slice(&state.to_le_bytes());
            }
        }
    }
    data.truncate(length);
    data
}

/// A fixed test key; `n` tells keys apart.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_seed([n; 32])
}

pub fn keyring(keys: &[&SigningKey]) -> Keyring {
    Keyring::from_keys(keys.iter().map(|key| key.public_key()))
}

pub fn builder<'a>(compression: Compression, keys: &[&SigningKey]) -> BundleBuilder<'a> {
    let mut builder = BundleBuilder::new("test-board", "1.2.3-rc.1+build.7".parse().unwrap());
    builder
        .security_version(4)
        .build_time(1_700_000_000)
        .source(SourceInfo {
            git_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            git_branch: Some("main".into()),
        })
        .description("a test bundle")
        .compression(compression);
    for key in keys {
        builder.sign_with(key);
    }
    builder
}

/// Builds a bundle holding `images` (name, bytes), all of class rootfs.
pub fn build(images: &[(&str, &[u8])], compression: Compression, keys: &[&SigningKey]) -> Vec<u8> {
    let mut builder = builder(compression, keys);
    for (name, data) in images {
        builder.add_image(*name, SlotClass::Rootfs, *data);
    }
    let mut bundle = Vec::new();
    builder.write_to(&mut bundle).unwrap();
    bundle
}

/// Opens `bundle` and reads every image through `next_chunk`; returns the images read.
pub fn read_all(bundle: &[u8], keyring: &Keyring) -> Result<Vec<(String, Vec<u8>)>> {
    let mut verified = BundleReader::open(bundle, keyring)?;
    let mut images = Vec::new();
    while let Some(mut image) = verified.next_image()? {
        let name = image.entry().name.clone();
        let mut data = Vec::new();
        image.copy_to(&mut data)?;
        images.push((name, data));
    }
    verified.finish()?;
    Ok(images)
}

/// The manifest of a bundle signed by `key`, read through the verifying reader.
pub fn manifest_of(bundle: &[u8], key: &SigningKey) -> Manifest {
    BundleReader::open(bundle, &keyring(&[key]))
        .unwrap()
        .manifest()
        .clone()
}
