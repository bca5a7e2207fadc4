//! `rota-image bundle`: signs images into a `.rota` bundle. Reproducible: the build time comes
//! from `SOURCE_DATE_EPOCH`, and rota-bundle uses no clock or randomness, so the same inputs
//! give the same bytes.

use rota_bundle::{
    BundleBuilder, BundleSummary, ChunkSizes, Compression, SigningKey, SlotClass, SourceInfo,
};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// One `--image [CLASS:]NAME=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub name: String,
    pub slot_class: SlotClass,
    pub path: PathBuf,
}

/// A malformed `--image` argument.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("--image {0:?}: expected [rootfs:]NAME=PATH, e.g. rootfs=rootfs.img (app releases are built by `rota-image app DIR`)")]
pub struct ImageSpecError(pub String);

impl std::str::FromStr for ImageSpec {
    type Err = ImageSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ImageSpecError(text.to_string());
        let (head, path) = text.split_once('=').ok_or_else(err)?;
        let (slot_class, name) = match head.split_once(':') {
            None => (SlotClass::Rootfs, head),
            Some(("rootfs", name)) => (SlotClass::Rootfs, name),
            Some(_) => return Err(err()),
        };
        if name.is_empty() || path.is_empty() {
            return Err(err());
        }
        Ok(ImageSpec {
            name: name.to_string(),
            slot_class,
            path: PathBuf::from(path),
        })
    }
}

/// What goes into the bundle.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    pub compatible: String,
    pub version: semver::Version,
    pub keys: Vec<PathBuf>,
    pub images: Vec<ImageSpec>,
    pub zstd_level: Option<i32>,
    /// Prefix window of zstd frames (0: independent frames).
    pub zstd_window: u32,
    /// Average chunk size (see [`ChunkSizes::around`]).
    pub chunk_size: u64,
    pub security_version: u32,
    pub git_commit: Option<String>,
    pub git_branch: Option<String>,
    pub description: String,
    pub build_time: u64,
    pub output: PathBuf,
    /// Set for an app release (`rota-image app`).
    pub app: Option<rota_bundle::AppSpec>,
}

/// Why no bundle was written.
#[derive(Debug, Error)]
pub enum BundleCmdError {
    #[error("--git-branch needs --git-commit")]
    BranchWithoutCommit,
    #[error("at least one --image is needed")]
    NoImage,
    #[error("cannot load the signing key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: rota_bundle::KeyError,
    },
    #[error("cannot write {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] rota_bundle::Error),
}

/// Builds and signs the bundle, writing it to a temporary file beside the output and renaming
/// it into place, so a failed build never leaves a half-written bundle under the final name.
pub fn build(options: &BundleOptions) -> Result<BundleSummary, BundleCmdError> {
    if options.images.is_empty() {
        return Err(BundleCmdError::NoImage);
    }
    let keys = options
        .keys
        .iter()
        .map(|path| {
            SigningKey::load(path).map_err(|source| BundleCmdError::Key {
                path: path.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = BundleBuilder::new(options.compatible.clone(), options.version.clone());
    builder
        .security_version(options.security_version)
        .build_time(options.build_time)
        .description(options.description.clone());
    match (&options.git_commit, &options.git_branch) {
        (Some(commit), branch) => {
            builder.source(SourceInfo {
                git_commit: commit.clone(),
                git_branch: branch.clone(),
            });
        }
        (None, Some(_)) => return Err(BundleCmdError::BranchWithoutCommit),
        (None, None) => {}
    }
    if let Some(level) = options.zstd_level {
        let compression = match options.zstd_window {
            0 => Compression::Zstd,
            window => Compression::ZstdPrefixed { window },
        };
        builder.compression(compression).zstd_level(level);
    }
    builder.chunk_sizes(ChunkSizes::around(options.chunk_size)?);
    if let Some(spec) = &options.app {
        builder.app(spec.clone());
    }
    for key in &keys {
        builder.sign_with(key);
    }
    for image in &options.images {
        builder.add_image_file(image.name.clone(), image.slot_class, image.path.clone());
    }
    let dir = options
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    builder.spool_dir(dir);
    let out_err = |source| BundleCmdError::Output {
        path: options.output.clone(),
        source,
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".rota-bundle-")
        .tempfile_in(dir)
        .map_err(out_err)?;
    let summary = {
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, temp.as_file_mut());
        let summary = builder.write_to(&mut writer)?;
        std::io::Write::flush(&mut writer).map_err(out_err)?;
        summary
    };
    temp.as_file().sync_all().map_err(out_err)?;
    temp.persist(&options.output)
        .map_err(|e| out_err(e.error))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_specs_parse() {
        let spec: ImageSpec = "rootfs=out/rootfs.img".parse().unwrap();
        assert_eq!(
            spec,
            ImageSpec {
                name: "rootfs".into(),
                slot_class: SlotClass::Rootfs,
                path: "out/rootfs.img".into()
            }
        );
        for bad in ["rootfs", "=x", "rootfs=", "kernel:k=x", "app:web=web.tar"] {
            assert!(bad.parse::<ImageSpec>().is_err(), "{bad}");
        }
    }
}
