//! grubenv blocks: parsing never panics, and whatever parses re-serialises (covering its old
//! content) to a block that parses to the same variables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rota_bootctl::env::grub::{self, GrubEnvError, SIGNATURE};

fuzz_target!(|data: &[u8]| {
    // Most interesting inputs carry the signature; give the fuzzer both shapes.
    let mut block = SIGNATURE.to_vec();
    block.extend_from_slice(data);
    block.resize(grub::GRUBENV_SIZE, b'#');
    for input in [data, &block[..]] {
        if let Ok(parsed) = grub::parse(input) {
            let generation = parsed.generation.unwrap_or(0).wrapping_add(1);
            match grub::serialize(&parsed.vars, generation, parsed.content_end) {
                Ok(again) => {
                    let reparsed = grub::parse(&again).unwrap();
                    assert_eq!(reparsed.vars, parsed.vars);
                    assert!(reparsed.content_end >= parsed.content_end);
                }
                // Markers and padding can push a full foreign block over 1024 bytes, and an
                // empty name (`=value`, which GRUB tolerates) is refused on write.
                Err(GrubEnvError::TooBig { .. } | GrubEnvError::InvalidName { .. }) => {}
                Err(e) => panic!("serialising parsed vars failed: {e}"),
            }
        }
    }
});
