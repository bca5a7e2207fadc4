//! App releases (format version 3): the spec travels signed in the manifest, only app
//! releases are written as version 3, and a manifest that mixes classes is refused.

mod common;

use common::{builder, image_data, key, keyring, PREFIXED};
use rota_bundle::{
    AppCheck, AppProbe, AppSpec, BundleReader, Compression, Error, Header, SlotClass,
};

fn spec() -> AppSpec {
    AppSpec {
        units: vec!["nav.service".into()],
        checks: vec![AppCheck {
            name: "answers".into(),
            probe: AppProbe::Http {
                url: "http://127.0.0.1:8080/health".into(),
                expect_status: 200,
                body_contains: Some("{\"status\":\"healthy\"}".into()),
            },
            attempt_timeout_secs: 5,
        }],
        check_deadline_secs: 30,
        os_versions: Some(">=1.4, <2".into()),
    }
}

fn header_version(bundle: &[u8]) -> u32 {
    Header::read_from(&mut &bundle[..]).unwrap().0.version
}

#[test]
fn an_app_release_carries_its_spec_signed_in_format_version_3() {
    let signer = key(1);
    let data = image_data(5, 300_000);
    let mut bundle = Vec::new();
    let mut build = builder(PREFIXED, &[&signer]);
    build
        .app(spec())
        .add_image("nav", SlotClass::App, &data[..]);
    build.write_to(&mut bundle).unwrap();
    assert_eq!(header_version(&bundle), 3);
    let mut verified = BundleReader::open(&bundle[..], &keyring(&[&signer])).unwrap();
    assert_eq!(verified.manifest().app, Some(spec()));
    let mut image = Vec::new();
    std::io::Read::read_to_end(&mut verified.image("nav").unwrap(), &mut image).unwrap();
    assert_eq!(image, data);
}

#[test]
fn os_bundles_keep_the_format_versions_older_readers_read() {
    let signer = key(1);
    for (compression, expected) in [(Compression::Zstd, 1), (PREFIXED, 2)] {
        let mut bundle = Vec::new();
        let mut build = builder(compression, &[&signer]);
        build.add_image("rootfs", SlotClass::Rootfs, &[7u8; 5000][..]);
        build.write_to(&mut bundle).unwrap();
        assert_eq!(header_version(&bundle), expected, "{compression:?}");
        let verified = BundleReader::open(&bundle[..], &keyring(&[&signer])).unwrap();
        assert_eq!(verified.manifest().app, None);
    }
}

#[test]
fn an_app_image_without_a_spec_or_a_spec_beside_a_rootfs_is_refused() {
    let signer = key(1);
    let mut without_spec = builder(Compression::None, &[&signer]);
    without_spec.add_image("nav", SlotClass::App, &[1u8; 100][..]);
    let error = without_spec.write_to(&mut Vec::new()).unwrap_err();
    assert!(matches!(error, Error::ManifestInvalid { .. }), "{error}");

    let mut mixed = builder(Compression::None, &[&signer]);
    mixed
        .app(spec())
        .add_image("nav", SlotClass::App, &[1u8; 100][..])
        .add_image("rootfs", SlotClass::Rootfs, &[2u8; 100][..]);
    let error = mixed.write_to(&mut Vec::new()).unwrap_err();
    assert!(error.to_string().contains("exactly one image"), "{error}");

    let mut bad_name = builder(Compression::None, &[&signer]);
    bad_name
        .app(spec())
        .add_image("../etc", SlotClass::App, &[1u8; 100][..]);
    let error = bad_name.write_to(&mut Vec::new()).unwrap_err();
    assert!(error.to_string().contains("app name"), "{error}");
}
