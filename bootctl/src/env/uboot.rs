//! U-Boot's binary environment format.
//!
//! A copy is `crc32 (little-endian u32) [flag byte] data`, where `data` fills the rest of the
//! copy: `name=value\0name=value\0\0` followed by padding. The CRC (zlib's CRC-32) covers all of
//! `data`, padding included. The flag byte exists only in redundant setups, where two copies
//! alternate: a write goes to the obsolete copy with `flag + 1` (wrapping at 255), and a reader
//! takes the valid copy with the newer flag. This is libubootenv's and U-Boot's "incremental"
//! flag scheme, used for files and block devices (MTD NOR flash uses a boolean scheme; Rota does
//! not write MTD).

use super::EnvVars;

/// Whether a copy carries the redundancy flag byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvLayout {
    Single,
    Redundant,
}

impl EnvLayout {
    /// Bytes before `data`: the CRC, plus the flag for redundant copies.
    pub fn header_len(self) -> usize {
        match self {
            EnvLayout::Single => 4,
            EnvLayout::Redundant => 5,
        }
    }
}

/// One decoded copy of the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvCopy {
    pub vars: EnvVars,
    /// The redundancy flag (`None` for a single env).
    pub flag: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UbootEnvError {
    #[error("{size} bytes is too small for an environment copy")]
    TooSmall { size: usize },
    #[error("CRC mismatch (stored {stored:#010x}, computed {computed:#010x}): the copy is corrupt or was torn by an interrupted write")]
    BadCrc { stored: u32, computed: u32 },
    #[error("variables are not terminated by an empty entry within the copy")]
    Unterminated,
    #[error("environment needs {needed} bytes but a copy holds only {capacity}")]
    TooBig { needed: usize, capacity: usize },
    #[error("variable name {name:?} is invalid (must not contain '=' or NUL)")]
    InvalidName { name: String },
    #[error("value of {name:?} contains a NUL byte")]
    InvalidValue { name: String },
}

fn crc32(data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(data);
    hasher.finalize()
}

/// Decodes one copy. Checks the CRC first: nothing of a copy whose CRC fails is trusted.
pub fn parse_copy(image: &[u8], layout: EnvLayout) -> Result<EnvCopy, UbootEnvError> {
    let header = layout.header_len();
    if image.len() < header + 2 {
        return Err(UbootEnvError::TooSmall { size: image.len() });
    }
    let stored = u32::from_le_bytes([image[0], image[1], image[2], image[3]]);
    let data = &image[header..];
    let computed = crc32(data);
    if stored != computed {
        return Err(UbootEnvError::BadCrc { stored, computed });
    }
    let flag = match layout {
        EnvLayout::Single => None,
        EnvLayout::Redundant => Some(image[4]),
    };
    Ok(EnvCopy {
        vars: parse_data(data)?,
        flag,
    })
}

/// Decodes `name=value\0...\0\0`. Entries without `=` are skipped, as libubootenv and U-Boot's
/// importer do; a repeated name keeps its last value, as U-Boot's importer does.
fn parse_data(data: &[u8]) -> Result<EnvVars, UbootEnvError> {
    let mut vars = EnvVars::new();
    let mut rest = data;
    loop {
        match rest.first() {
            None => return Err(UbootEnvError::Unterminated),
            Some(0) => return Ok(vars),
            Some(_) => {}
        }
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(UbootEnvError::Unterminated)?;
        let entry = &rest[..end];
        if let Some(eq) = entry.iter().position(|&b| b == b'=') {
            vars.set(&entry[..eq], &entry[eq + 1..]);
        }
        rest = &rest[end + 1..];
    }
}

/// Encodes `vars` into a copy of exactly `size` bytes (header included), padding with zeros as
/// U-Boot's own `saveenv` does. `flag` is written only for a redundant layout.
pub fn serialize_copy(
    vars: &EnvVars,
    size: usize,
    layout: EnvLayout,
    flag: u8,
) -> Result<Vec<u8>, UbootEnvError> {
    let header = layout.header_len();
    let capacity = size.saturating_sub(header);
    let mut data = Vec::with_capacity(capacity);
    for (name, value) in vars.iter() {
        if name.contains(&b'=') || name.contains(&0) {
            return Err(UbootEnvError::InvalidName {
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        if value.contains(&0) {
            return Err(UbootEnvError::InvalidValue {
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        data.extend_from_slice(name);
        data.push(b'=');
        data.extend_from_slice(value);
        data.push(0);
    }
    data.push(0);
    if data.len() > capacity {
        return Err(UbootEnvError::TooBig {
            needed: data.len(),
            capacity,
        });
    }
    data.resize(capacity, 0);
    let mut image = Vec::with_capacity(size);
    image.extend_from_slice(&crc32(&data).to_le_bytes());
    if layout == EnvLayout::Redundant {
        image.push(flag);
    }
    image.extend_from_slice(&data);
    Ok(image)
}

/// Which of two valid redundant copies is current (0 or 1), by U-Boot's incremental rule: the
/// higher flag wins, except that 0 follows 255 (wrap-around); equal flags pick copy 0.
pub fn current_copy(flag0: u8, flag1: u8) -> usize {
    match (flag0, flag1) {
        (255, 0) => 1,
        (0, 255) => 0,
        (a, b) if b > a => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> EnvVars {
        [("BOOT_ORDER", "A B"), ("bootdelay", "0")]
            .into_iter()
            .collect()
    }

    #[test]
    fn round_trip_both_layouts() {
        for layout in [EnvLayout::Single, EnvLayout::Redundant] {
            let image = serialize_copy(&vars(), 0x2000, layout, 7).unwrap();
            assert_eq!(image.len(), 0x2000);
            let copy = parse_copy(&image, layout).unwrap();
            assert_eq!(copy.vars, vars());
            assert_eq!(copy.flag, (layout == EnvLayout::Redundant).then_some(7));
        }
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let image = serialize_copy(&vars(), 64, EnvLayout::Single, 0).unwrap();
        for byte in 0..image.len() {
            let mut bad = image.clone();
            bad[byte] ^= 0x10;
            assert!(parse_copy(&bad, EnvLayout::Single).is_err(), "byte {byte}");
        }
    }

    #[test]
    fn too_big_is_reported() {
        let big: EnvVars = [("x", "y".repeat(100))].into_iter().collect();
        assert_eq!(
            serialize_copy(&big, 64, EnvLayout::Redundant, 0),
            Err(UbootEnvError::TooBig {
                needed: 104,
                capacity: 59
            })
        );
    }

    #[test]
    fn flag_rules() {
        assert_eq!(current_copy(1, 2), 1);
        assert_eq!(current_copy(2, 1), 0);
        assert_eq!(current_copy(255, 0), 1);
        assert_eq!(current_copy(0, 255), 0);
        assert_eq!(current_copy(5, 5), 0);
    }
}
