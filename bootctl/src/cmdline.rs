//! Which slot is booted, from the kernel command line.
//!
//! The boot scripts pass `rota.slot=X`; RAUC's pass `rauc.slot=X`. Both are accepted so a robot
//! moved from RAUC keeps working before its boot script is replaced; `rota.slot=` wins when both
//! are present.

use std::path::Path;

use crate::{Error, Result, Slot};

/// Parses a command line (the contents of `/proc/cmdline`). `path` is only used in errors.
pub fn booted_slot_from_cmdline(cmdline: &str, path: &Path) -> Result<Slot> {
    let mut rota = None;
    let mut rauc = None;
    for word in cmdline.split_ascii_whitespace() {
        // Later occurrences win, as they do for the kernel's own parameters.
        if let Some(value) = word.strip_prefix("rota.slot=") {
            rota = Some(value);
        } else if let Some(value) = word.strip_prefix("rauc.slot=") {
            rauc = Some(value);
        }
    }
    match rota.or(rauc) {
        Some(value) => value.parse(),
        None => Err(Error::NoSlotOnCmdline {
            path: path.to_owned(),
        }),
    }
}

/// Reads `path` (normally `/proc/cmdline`) and returns the booted slot.
pub fn read_booted_slot(path: &Path) -> Result<Slot> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    booted_slot_from_cmdline(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Slot> {
        booted_slot_from_cmdline(s, Path::new("/proc/cmdline"))
    }

    #[test]
    fn finds_rota_and_rauc_markers() {
        assert_eq!(
            parse("root=PARTLABEL=rootfs-b rota.slot=B quiet\n").unwrap(),
            Slot::B
        );
        assert_eq!(parse("console=ttyS0 rauc.slot=A").unwrap(), Slot::A);
        assert_eq!(parse("rauc.slot=A rota.slot=B").unwrap(), Slot::B);
        assert_eq!(parse("rota.slot=A rota.slot=B").unwrap(), Slot::B);
    }

    #[test]
    fn missing_marker_is_a_specific_error() {
        assert!(matches!(
            parse("root=/dev/sda2 quiet"),
            Err(Error::NoSlotOnCmdline { .. })
        ));
        // A prefix of the marker is not the marker.
        assert!(matches!(
            parse("xrota.slot=A"),
            Err(Error::NoSlotOnCmdline { .. })
        ));
    }

    #[test]
    fn unknown_slot_names_the_value() {
        match parse("rauc.slot=R") {
            Err(Error::UnknownSlot(v)) => assert_eq!(v, "R"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
