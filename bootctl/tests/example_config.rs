//! `bootctl.toml`, shipped as the rota-robot package's example, says "the defaults are shown":
//! it must parse, and to exactly the defaults.

use std::path::Path;

use rota_bootctl::BootConfig;

#[test]
fn example_config_parses_to_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bootctl.toml");
    assert_eq!(BootConfig::load(&path).unwrap(), BootConfig::default());
}
