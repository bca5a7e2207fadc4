//! `rota-image app`: packs an app's directory into a signed app release. The tree becomes one
//! reproducible tar image (sorted, owners root, every mtime the build time); the app's units,
//! checks and OS range come from `rota-app.toml` and go into the signed manifest.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rota_bundle::{AppCheck, AppProbe, AppSpec, BundleSummary, SlotClass};
use serde::Deserialize;
use thiserror::Error;

use crate::bundle_cmd::{self, BundleCmdError, BundleOptions, ImageSpec};
use crate::tree::{self, TreeError};

/// The spec file's name in an app's directory.
pub const SPEC_FILE_NAME: &str = "rota-app.toml";
const DEFAULT_CHECK_DEADLINE_SECS: u32 = 30;
const DEFAULT_ATTEMPT_TIMEOUT_SECS: u32 = 5;

/// `rota-app.toml`: what the robot restarts and checks when a release becomes current.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    pub name: String,
    #[serde(default)]
    pub units: Vec<String>,
    pub os_versions: Option<String>,
    pub check_deadline_secs: Option<u32>,
    #[serde(default)]
    pub checks: Vec<SpecCheck>,
}

/// One `[[checks]]` table: exactly one of `unit`, `http`, `command`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecCheck {
    pub name: String,
    pub unit: Option<String>,
    pub http: Option<String>,
    pub expect_status: Option<u16>,
    pub body_contains: Option<String>,
    pub command: Option<Vec<String>>,
    pub timeout_secs: Option<u32>,
}

#[derive(Debug, Error)]
pub enum AppCmdError {
    #[error("cannot read {path}")]
    ReadSpec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error("{path}: only regular files, directories and symlinks go into an app")]
    UnsupportedFile { path: PathBuf },
    #[error("cannot pack the app tree")]
    Tree(#[from] TreeError),
    #[error("cannot write the app image {path}")]
    Pack {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] BundleCmdError),
}

impl SpecFile {
    pub fn load(path: &Path) -> Result<SpecFile, AppCmdError> {
        let text = fs::read_to_string(path).map_err(|source| AppCmdError::ReadSpec {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|error| AppCmdError::Spec {
            path: path.to_owned(),
            message: error.to_string(),
        })
    }

    /// The spec as it goes into the manifest; `path` only names the file in errors.
    pub fn to_spec(&self, path: &Path) -> Result<AppSpec, AppCmdError> {
        let spec_error = |message: String| AppCmdError::Spec {
            path: path.to_owned(),
            message,
        };
        rota_bundle::check_app_name(&self.name).map_err(|error| spec_error(error.to_string()))?;
        let checks = self
            .checks
            .iter()
            .map(|check| {
                let probe = match (&check.unit, &check.http, &check.command) {
                    (Some(unit), None, None) => AppProbe::Unit(unit.clone()),
                    (None, Some(url), None) => AppProbe::Http {
                        url: url.clone(),
                        expect_status: check.expect_status.unwrap_or(200),
                        body_contains: check.body_contains.clone(),
                    },
                    (None, None, Some(argv)) => AppProbe::Command(argv.clone()),
                    _ => {
                        return Err(spec_error(format!(
                            "check {:?}: set exactly one of unit, http, command",
                            check.name
                        )))
                    }
                };
                if check.http.is_none()
                    && (check.expect_status.is_some() || check.body_contains.is_some())
                {
                    return Err(spec_error(format!(
                        "check {:?}: expect_status and body_contains belong to http checks",
                        check.name
                    )));
                }
                Ok(AppCheck {
                    name: check.name.clone(),
                    probe,
                    attempt_timeout_secs: check
                        .timeout_secs
                        .unwrap_or(DEFAULT_ATTEMPT_TIMEOUT_SECS),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spec = AppSpec {
            units: self.units.clone(),
            checks,
            check_deadline_secs: self
                .check_deadline_secs
                .unwrap_or(DEFAULT_CHECK_DEADLINE_SECS),
            os_versions: self.os_versions.clone(),
        };
        spec.os_requirement()
            .map_err(|error| spec_error(error.to_string()))?;
        Ok(spec)
    }
}

/// What `pack_tree` put into the tar.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PackStats {
    pub entries: u64,
    pub file_bytes: u64,
}

/// Writes `root` as a reproducible tar: entries sorted by path, parents first, owner 0:0,
/// every mtime `mtime`, permissions as in the tree; only files, directories and symlinks.
pub fn pack_tree(root: &Path, mtime: u64, out: impl Write) -> Result<PackStats, AppCmdError> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut stats = PackStats::default();
    let mut failure = None;
    let pack_error = |path: &Path| {
        let path = path.to_owned();
        move |source| AppCmdError::Pack { path, source }
    };
    tree::walk(root, &mut |path, meta| {
        if failure.is_some() || path == root {
            return Ok(());
        }
        let relative = path.strip_prefix(root).expect("walk stays below its root");
        let result = (|| {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(mtime);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mode(meta.mode() & 0o7777);
            let file_type = meta.file_type();
            if file_type.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, relative, io::empty())
                    .map_err(pack_error(path))?;
            } else if file_type.is_file() {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(meta.len());
                let file = File::open(path).map_err(pack_error(path))?;
                builder
                    .append_data(&mut header, relative, file)
                    .map_err(pack_error(path))?;
                stats.file_bytes += meta.len();
            } else if file_type.is_symlink() {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                let target = fs::read_link(path).map_err(pack_error(path))?;
                builder
                    .append_link(&mut header, relative, target)
                    .map_err(pack_error(path))?;
            } else {
                return Err(AppCmdError::UnsupportedFile {
                    path: path.to_owned(),
                });
            }
            stats.entries += 1;
            Ok(())
        })();
        if let Err(error) = result {
            failure = Some(error);
        }
        Ok(())
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(pack_error(root))?;
    Ok(stats)
}

/// What goes into an app release besides the tree.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub dir: PathBuf,
    /// The spec file (default: `rota-app.toml` in `dir`).
    pub spec: Option<PathBuf>,
    /// Everything of the bundle but its images, which this fills in.
    pub bundle: BundleOptions,
}

#[derive(Debug)]
pub struct AppBuilt {
    pub name: String,
    pub pack: PackStats,
    pub summary: BundleSummary,
}

/// Packs the tree beside the output, signs it into an app release, and removes the tar.
pub fn build(options: &AppOptions) -> Result<AppBuilt, AppCmdError> {
    let spec_path = options
        .spec
        .clone()
        .unwrap_or_else(|| options.dir.join(SPEC_FILE_NAME));
    let spec_file = SpecFile::load(&spec_path)?;
    let spec = spec_file.to_spec(&spec_path)?;
    let dir = options
        .bundle
        .output
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tar = tempfile::Builder::new()
        .prefix(".rota-app-")
        .suffix(".tar")
        .tempfile_in(dir)
        .map_err(|source| AppCmdError::Pack {
            path: dir.to_owned(),
            source,
        })?;
    let pack = pack_tree(
        &options.dir,
        options.bundle.build_time,
        BufWriter::new(tar.as_file()),
    )?;
    let mut bundle = options.bundle.clone();
    bundle.images = vec![ImageSpec {
        name: spec_file.name.clone(),
        slot_class: SlotClass::App,
        path: tar.path().to_owned(),
    }];
    bundle.app = Some(spec);
    let summary = bundle_cmd::build(&bundle)?;
    Ok(AppBuilt {
        name: spec_file.name,
        pack,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_of(text: &str) -> Result<AppSpec, AppCmdError> {
        let file: SpecFile = toml::from_str(text).unwrap();
        file.to_spec(Path::new("rota-app.toml"))
    }

    #[test]
    fn a_check_names_exactly_one_probe() {
        let spec = spec_of(
            "name = \"nav\"\nunits = [\"nav.service\"]\n[[checks]]\nname = \"up\"\nhttp = \"http://127.0.0.1:1/\"\nbody_contains = \"ok\"\n",
        )
        .unwrap();
        assert_eq!(
            spec.checks[0].probe,
            AppProbe::Http {
                url: "http://127.0.0.1:1/".into(),
                expect_status: 200,
                body_contains: Some("ok".into())
            }
        );
        let both = spec_of(
            "name = \"nav\"\n[[checks]]\nname = \"x\"\nunit = \"a\"\ncommand = [\"true\"]\n",
        );
        assert!(both.unwrap_err().to_string().contains("exactly one of"));
        let body_on_unit = spec_of(
            "name = \"nav\"\n[[checks]]\nname = \"x\"\nunit = \"a\"\nbody_contains = \"y\"\n",
        );
        assert!(body_on_unit
            .unwrap_err()
            .to_string()
            .contains("http checks"));
    }

    #[test]
    fn a_bad_name_or_os_range_is_refused() {
        assert!(spec_of("name = \"../etc\"\n").is_err());
        assert!(spec_of("name = \"nav\"\nos_versions = \"not a range\"\n").is_err());
    }
}
