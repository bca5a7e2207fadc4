//! U-Boot env copies: parsing never panics, and whatever parses re-serialises to a copy that
//! parses to the same variables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rota_bootctl::env::uboot::{parse_copy, serialize_copy, EnvLayout};

fuzz_target!(|data: &[u8]| {
    for layout in [EnvLayout::Single, EnvLayout::Redundant] {
        if let Ok(copy) = parse_copy(data, layout) {
            let again = serialize_copy(&copy.vars, data.len(), layout, copy.flag.unwrap_or(0))
                .expect("a parsed env fits its own size");
            assert_eq!(parse_copy(&again, layout).unwrap().vars, copy.vars);
        }
    }
});
