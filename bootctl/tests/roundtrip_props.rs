//! Property tests: serialise/parse round trips for the three formats, and parsers that never
//! panic on arbitrary input.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rota_bootctl::env::uboot::{self, EnvLayout};
use rota_bootctl::env::{fw_config, grub, EnvVars};

fn to_env(map: &BTreeMap<String, Vec<u8>>) -> EnvVars {
    map.iter()
        .map(|(k, v)| (k.as_bytes(), v.as_slice()))
        .collect()
}

/// U-Boot names: anything but '=' and NUL (U-Boot's own `.flags` and `serial#` included).
fn uboot_vars() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    prop::collection::btree_map(
        "[A-Za-z0-9_.#:/-]{1,16}",
        prop::collection::vec(1u8..=255, 0..48),
        0..24,
    )
}

/// GRUB names: no '=', newline or NUL, not starting with '#', not Rota's markers. Values: any
/// byte but NUL, so backslashes and newlines exercise GRUB's escaping.
fn grub_vars() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    prop::collection::btree_map(
        "[A-Za-z_][A-Za-z0-9_.-]{0,15}"
            .prop_filter("marker", |n| n != grub::GEN_HEAD && n != grub::GEN_TAIL),
        prop::collection::vec(
            prop_oneof![Just(b'\\'), Just(b'\n'), Just(b'#'), 1u8..=255],
            0..24,
        ),
        0..12,
    )
}

proptest! {
    #[test]
    fn uboot_copy_round_trips(vars in uboot_vars(), redundant: bool, flag: u8) {
        let layout = if redundant { EnvLayout::Redundant } else { EnvLayout::Single };
        let env = to_env(&vars);
        let image = uboot::serialize_copy(&env, 0x1000, layout, flag).unwrap();
        prop_assert_eq!(image.len(), 0x1000);
        let copy = uboot::parse_copy(&image, layout).unwrap();
        prop_assert_eq!(copy.vars, env);
        prop_assert_eq!(copy.flag, redundant.then_some(flag));
    }

    #[test]
    fn grubenv_round_trips(vars in grub_vars(), generation: u32, min_end in 0usize..700) {
        let env = to_env(&vars);
        match grub::serialize(&env, generation, min_end) {
            Ok(block) => {
                prop_assert_eq!(block.len(), grub::GRUBENV_SIZE);
                let parsed = grub::parse(&block).unwrap();
                prop_assert_eq!(parsed.vars, env);
                prop_assert_eq!(parsed.generation, Some(generation));
                prop_assert!(parsed.content_end >= min_end);
            }
            Err(grub::GrubEnvError::TooBig { needed }) => prop_assert!(needed > grub::GRUBENV_SIZE),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn fw_config_round_trips(
        entries in prop::collection::vec(("/[a-z0-9/._-]{1,24}", 0i64..1 << 40, 0u8..3), 1..=2),
        size in 8u64..=fw_config::MAX_ENV_SIZE,
        extra in prop::option::of((1u64..0x100000, 1u64..64)),
        comment: bool,
    ) {
        let mut text = String::new();
        if comment {
            text += "# device offset size sector-size sectors\n\n";
        }
        for (device, offset, style) in &entries {
            let offset = match style {
                0 => format!("{offset}"),
                1 => format!("{offset:#x}"),
                _ => format!("0{offset:o}"),
            };
            let size = if *style == 0 { format!("{size:x}") } else { format!("{size:#X}") };
            text += &format!("{device}\t{offset}  {size}");
            if let Some((sector, count)) = extra {
                text += &format!(" {sector:#x} {count:x}");
            }
            text += "\n";
        }
        let parsed = fw_config::parse(&text).unwrap();
        prop_assert_eq!(parsed.copies.len(), entries.len());
        for (copy, (device, offset, _)) in parsed.copies.iter().zip(&entries) {
            prop_assert_eq!(copy.device.to_str().unwrap(), device.as_str());
            prop_assert_eq!(copy.offset, *offset);
            prop_assert_eq!(copy.env_size, size);
            prop_assert_eq!(copy.sector_size, extra.map(|e| e.0));
            prop_assert_eq!(copy.sector_count, extra.map(|e| e.1));
        }
    }

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1100)) {
        let _ = uboot::parse_copy(&bytes, EnvLayout::Single);
        let _ = uboot::parse_copy(&bytes, EnvLayout::Redundant);
        let _ = grub::parse(&bytes);
        let _ = fw_config::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn grubenv_parser_never_panics_on_signed_blocks(tail in prop::collection::vec(any::<u8>(), 999)) {
        let mut block = grub::SIGNATURE.to_vec();
        block.extend_from_slice(&tail);
        let _ = grub::parse(&block);
    }
}
