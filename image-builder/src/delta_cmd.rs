//! `rota-image delta`: a signed precomputed delta from one bundle to the next
//! (`rota_bundle::delta`), for robots that run the first and install the second.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rota_bundle::delta::{write_delta, DeltaInputs, DeltaSummary};
use rota_bundle::{BundleReader, Keyring, ReadOptions, SigningKey, SlotClass, VerifiedManifest};

/// What the delta is made from.
pub struct DeltaOptions {
    pub from: PathBuf,
    pub to: PathBuf,
    pub keys: Vec<PathBuf>,
    /// Trusted keys for the two bundles; default: the public keys of `keys`.
    pub keyring: Option<PathBuf>,
    /// Default: the first root filesystem image of the target bundle.
    pub image: Option<String>,
    pub level: i32,
    pub output: PathBuf,
}

/// Verifies both bundles, decompresses the image of each into a temporary file beside the
/// output, and writes the delta there (renamed into place once complete).
pub fn make(options: &DeltaOptions) -> Result<DeltaSummary> {
    let keys = options
        .keys
        .iter()
        .map(|path| SigningKey::load(path).with_context(|| format!("key {}", path.display())))
        .collect::<Result<Vec<_>>>()?;
    let keyring = match &options.keyring {
        Some(dir) => {
            Keyring::load_dir(dir).with_context(|| format!("keyring {}", dir.display()))?
        }
        None => Keyring::from_keys(keys.iter().map(SigningKey::public_key)),
    };
    let dir = options
        .output
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (base, base_image) = unpack(&options.from, &keyring, options.image.as_deref(), dir)?;
    let image = match &options.image {
        Some(name) => name.clone(),
        None => first_rootfs(&base)?,
    };
    let (target, target_image) = unpack(&options.to, &keyring, Some(&image), dir)?;
    if base.manifest().compatible != target.manifest().compatible {
        bail!(
            "{} is for {:?} and {} for {:?}: a delta joins bundles of one product",
            options.from.display(),
            base.manifest().compatible,
            options.to.display(),
            target.manifest().compatible
        );
    }
    let inputs = DeltaInputs {
        base: &base,
        base_image: base_image.as_file(),
        target: &target,
        target_image: target_image.as_file(),
        image: &image,
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut output = tempfile::NamedTempFile::new_in(dir).context("temporary delta file")?;
    let summary = {
        let mut out = BufWriter::new(output.as_file_mut());
        let summary = write_delta(&inputs, options.level, workers, &keys, &mut out)?;
        out.flush()?;
        summary
    };
    output.as_file().sync_all()?;
    output
        .persist(&options.output)
        .with_context(|| format!("cannot write {}", options.output.display()))?;
    Ok(summary)
}

fn first_rootfs(manifest: &VerifiedManifest) -> Result<String> {
    manifest
        .manifest()
        .images
        .iter()
        .find(|image| image.slot_class == SlotClass::Rootfs)
        .map(|image| image.name.clone())
        .context("the base bundle has no root filesystem image: name one with --image")
}

/// The verified manifest of `bundle` and its image `image` (default: the first rootfs image),
/// decompressed into a temporary file in `dir`.
fn unpack(
    bundle: &Path,
    keyring: &Keyring,
    image: Option<&str>,
    dir: &Path,
) -> Result<(VerifiedManifest, tempfile::NamedTempFile)> {
    let file = File::open(bundle).with_context(|| format!("cannot open {}", bundle.display()))?;
    let mut reader = BundleReader::open_with(BufReader::new(file), keyring, ReadOptions::default())
        .with_context(|| format!("{} does not verify", bundle.display()))?;
    let manifest = reader.verified_manifest().clone();
    let wanted = match image {
        Some(name) => manifest
            .image_index(name)
            .with_context(|| format!("{} has no image {name:?}", bundle.display()))?,
        None => manifest.image_index(&first_rootfs(&manifest)?)?,
    };
    let mut unpacked = tempfile::NamedTempFile::new_in(dir).context("temporary image file")?;
    while let Some(mut next) = reader.next_image()? {
        if next.image_index() == wanted {
            {
                let mut out = BufWriter::new(unpacked.as_file_mut());
                next.copy_to(&mut out)
                    .with_context(|| format!("{}: image does not verify", bundle.display()))?;
                out.flush()?;
            }
            return Ok((manifest, unpacked));
        }
        std::io::copy(&mut next, &mut std::io::sink())?;
    }
    bail!("{}: image {wanted} missing", bundle.display())
}
