//! What is decided from the verified manifest and the state before a byte is written.

use rota_bootctl::Slot;
use rota_bundle::{Manifest, SlotClass, VerifiedManifest};

use super::{InstallOptions, Refusal};
use crate::config::Config;
use crate::state::{BundleInfo, State};

/// What the state file and denylist record of a bundle; its identity is the digest of the
/// signed manifest ([`VerifiedManifest::digest`]).
pub fn bundle_info(verified: &VerifiedManifest) -> BundleInfo {
    let manifest = verified.manifest();
    BundleInfo {
        digest: verified.digest(),
        version: manifest.version.to_string(),
        compatible: manifest.compatible.clone(),
        security_version: manifest.security_version,
    }
}

/// Everything decided from the verified manifest and the state, before a byte is written.
pub(super) fn check_bundle(
    config: &Config,
    state: &State,
    booted: Slot,
    info: &BundleInfo,
    options: &InstallOptions,
) -> Result<(), Refusal> {
    if info.compatible != config.compatible {
        return Err(Refusal::WrongCompatible {
            expected: config.compatible.clone(),
            found: info.compatible.clone(),
        });
    }
    if info.security_version < state.security_floor {
        return Err(Refusal::BelowSecurityFloor {
            bundle: info.security_version,
            floor: state.security_floor,
        });
    }
    if let Some(running) = state.slot(booted) {
        let newer_or_same = match (
            semver::Version::parse(&info.version),
            semver::Version::parse(&running.version),
        ) {
            (Ok(bundle), Ok(running)) => bundle >= running,
            // An unparsable recorded version cannot prove a downgrade.
            _ => true,
        };
        if !newer_or_same && !options.allow_downgrade {
            return Err(Refusal::Downgrade {
                bundle: info.version.clone(),
                running: running.version.clone(),
            });
        }
    } else {
        log::info!("no record of what slot {booted} runs: version check skipped");
    }
    if let Some(denied) = state.is_denied(&info.digest) {
        if !options.allow_denied {
            return Err(Refusal::Denied {
                digest: info.digest,
                version: info.version.clone(),
                reason: denied.reason.to_string(),
            });
        }
        log::warn!("installing denied bundle {} on request", info.digest);
    }
    check_apps_support(config, &info.version)
}

/// Every current app release must run on the new OS; an unreadable apps directory is logged,
/// not a reason to keep a robot off an OS fix.
fn check_apps_support(config: &Config, version: &str) -> Result<(), Refusal> {
    let Ok(os) = semver::Version::parse(version) else {
        return Ok(());
    };
    match crate::apps::apps_not_supporting(&config.apps, &os) {
        Ok(apps) if apps.is_empty() => Ok(()),
        Ok(apps) => Err(Refusal::AppsUnsupported {
            os: version.to_owned(),
            apps,
        }),
        Err(error) => {
            log::warn!("cannot check the installed apps against OS {version}: {error}");
            Ok(())
        }
    }
}

pub(super) fn rootfs_image(manifest: &Manifest) -> Result<usize, Refusal> {
    if manifest.app.is_some() {
        return Err(Refusal::AppRelease(manifest.images[0].name.clone()));
    }
    let rootfs: Vec<usize> = manifest
        .images
        .iter()
        .enumerate()
        .filter(|(_, image)| image.slot_class == SlotClass::Rootfs)
        .map(|(index, _)| index)
        .collect();
    for image in manifest
        .images
        .iter()
        .filter(|image| image.slot_class != SlotClass::Rootfs)
    {
        log::warn!(
            "image {:?} ({:?}) skipped: only rootfs images are installed",
            image.name,
            image.slot_class
        );
    }
    match rootfs.as_slice() {
        [] => Err(Refusal::NoRootfsImage),
        [index] => Ok(*index),
        several => Err(Refusal::SeveralRootfsImages(several.len())),
    }
}

/// Refuses a source whose length (when it tells one) is not the signed bundle length.
pub(super) fn check_length(
    length: Option<u64>,
    verified: &VerifiedManifest,
) -> Result<(), Refusal> {
    match length {
        Some(actual) if actual != verified.bundle_length() => Err(Refusal::WrongLength {
            expected: verified.bundle_length(),
            actual,
        }),
        _ => Ok(()),
    }
}
