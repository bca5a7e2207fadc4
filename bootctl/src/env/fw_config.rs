//! `fw_env.config`: where the U-Boot environment lives, in the format `fw_printenv` reads.
//!
//! Matches libubootenv and u-boot-tools, whose parser is
//! `sscanf(line, "%ms %lli %zx %zx %lx %d", device, offset, env_size, sector_size, sectors, ...)`:
//! - a line whose first character is `#` is a comment; blank lines are skipped;
//! - fields: device or file path, offset, env size, then optionally sector size, sector count
//!   and libubootenv's "disable MTD lock" flag;
//! - the offset is read like C's `strtoll(s, 0, 0)`: `0x` hex, leading `0` octal, else decimal,
//!   and may be negative (counted back from the end of the device);
//! - env size, sector size and sector count are always hexadecimal, with or without `0x`
//!   (`%x`): `4000` means 16 KiB, not 4000 bytes;
//! - the first entry is the env, a second one makes it redundant; later lines are not read.
//!
//! Where upstream silently skips a line it cannot fully convert (fewer than three fields, or
//! garbage in a number), this parser rejects it with its line number instead: a typo in this
//! file would otherwise make the updater write to the wrong place or lose its redundant copy.

use std::path::PathBuf;

/// Largest env size accepted (16 MiB).
pub const MAX_ENV_SIZE: u64 = 0x100_0000;

/// Where one copy of the environment is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvCopyLocation {
    /// File or block device holding the copy.
    pub device: PathBuf,
    /// Byte offset in `device`; negative counts back from the end of the device.
    pub offset: i64,
    /// Size of the copy in bytes, header included.
    pub env_size: u64,
    /// Erase-block size (only meaningful for MTD flash, which Rota does not write).
    pub sector_size: Option<u64>,
    /// Number of erase blocks (only meaningful for MTD flash).
    pub sector_count: Option<u64>,
    /// 1-based line of `fw_env.config` this entry came from.
    pub line: usize,
}

/// A parsed `fw_env.config`: one copy (single env) or two (redundant env).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwEnvConfig {
    pub copies: Vec<EnvCopyLocation>,
}

impl FwEnvConfig {
    pub fn is_redundant(&self) -> bool {
        self.copies.len() == 2
    }

    /// Size of each copy (both copies of a redundant env have the same size).
    pub fn env_size(&self) -> u64 {
        self.copies[0].env_size
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FwConfigError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error(
        "no environment entry (expected a line `DEVICE OFFSET ENV-SIZE [SECTOR-SIZE [SECTORS]]`)"
    )]
    NoEntries,
}

fn line_error(line: usize, message: impl Into<String>) -> FwConfigError {
    FwConfigError::Line {
        line,
        message: message.into(),
    }
}

/// Parses the text of an `fw_env.config`.
pub fn parse(text: &str) -> Result<FwEnvConfig, FwConfigError> {
    let mut copies: Vec<EnvCopyLocation> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fields: Vec<&str> = raw.split_ascii_whitespace().collect();
        // `#` in the first column is upstream's comment rule; a first field starting with `#`
        // after indentation is also skipped upstream (its offset never converts), so it is a
        // comment here too rather than an error.
        if raw.starts_with('#') || fields.is_empty() || fields[0].starts_with('#') {
            continue;
        }
        copies.push(parse_entry(line, &fields)?);
        if copies.len() == 2 {
            break;
        }
    }
    match copies.as_slice() {
        [] => Err(FwConfigError::NoEntries),
        [first, second] if first.env_size != second.env_size => Err(line_error(
            second.line,
            format!(
                "redundant copy has env size {:#x}, the first copy {:#x}; both copies must be the same size",
                second.env_size, first.env_size
            ),
        )),
        _ => Ok(FwEnvConfig { copies }),
    }
}

fn parse_entry(line: usize, fields: &[&str]) -> Result<EnvCopyLocation, FwConfigError> {
    if fields.len() < 3 {
        return Err(line_error(
            line,
            format!(
                "expected `DEVICE OFFSET ENV-SIZE [SECTOR-SIZE [SECTORS]]`, found {} field(s)",
                fields.len()
            ),
        ));
    }
    if fields.len() > 6 {
        return Err(line_error(
            line,
            format!("unexpected field {:?} after the sector count", fields[6]),
        ));
    }
    let device = fields[0];
    if device.starts_with("/dev/mtd") || device.starts_with("/dev/ubi") || device.contains(':') {
        return Err(line_error(
            line,
            format!(
                "{device}: MTD/UBI environments are not supported (they need erase and boolean \
                 redundancy flags); use a file or block device"
            ),
        ));
    }
    let offset = parse_c_integer(fields[1])
        .ok_or_else(|| line_error(line, format!("offset {:?} is not a number", fields[1])))?;
    let env_size = parse_hex(fields[2]).ok_or_else(|| {
        line_error(
            line,
            format!("env size {:?} is not a hex number", fields[2]),
        )
    })?;
    if env_size == 0 {
        return Err(line_error(line, "env size is zero"));
    }
    // A copy needs its 4-byte CRC, the redundant flag and at least the terminating NULs.
    if env_size < 8 {
        return Err(line_error(
            line,
            format!("env size {env_size:#x} is too small"),
        ));
    }
    // Real environments are a few KiB; a bound keeps buffers sane on 32-bit robots too.
    if env_size > MAX_ENV_SIZE {
        return Err(line_error(
            line,
            format!("env size {env_size:#x} is larger than the supported {MAX_ENV_SIZE:#x}"),
        ));
    }
    let hex_field = |i: usize, what: &str| -> Result<Option<u64>, FwConfigError> {
        fields
            .get(i)
            .map(|f| {
                parse_hex(f)
                    .ok_or_else(|| line_error(line, format!("{what} {f:?} is not a hex number")))
            })
            .transpose()
    };
    let sector_size = hex_field(3, "sector size")?;
    let sector_count = hex_field(4, "sector count")?;
    if let Some(flag) = fields.get(5) {
        flag.parse::<i32>().map_err(|_| {
            line_error(
                line,
                format!("MTD lock flag {flag:?} is not a decimal number"),
            )
        })?;
    }
    Ok(EnvCopyLocation {
        device: PathBuf::from(device),
        offset,
        env_size,
        sector_size,
        sector_count,
        line,
    })
}

/// `%x`: hexadecimal with an optional `0x`/`0X` prefix.
fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// `%lli` / `strtoll(s, NULL, 0)`: optional sign, then `0x` hex, `0` octal or decimal.
fn parse_c_integer(s: &str) -> Option<i64> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) =
        if let Some(hex) = rest.strip_prefix("0x").or_else(|| rest.strip_prefix("0X")) {
            (16, hex)
        } else if rest.len() > 1 && rest.starts_with('0') {
            (8, &rest[1..])
        } else {
            (10, rest)
        };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from(u64::from_str_radix(digits, radix).ok()?);
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_redundant() {
        let single = parse("# comment\n\n/dev/mmcblk0 0x3fe000 0x2000\n").unwrap();
        assert!(!single.is_redundant());
        assert_eq!(single.copies[0].offset, 0x3fe000);
        assert_eq!(single.copies[0].line, 3);

        let redundant =
            parse("/boot/uboot.env 0 4000 200 20\n/boot/uboot.env 040000 0x4000\nignored\n")
                .unwrap();
        assert!(redundant.is_redundant());
        assert_eq!(
            redundant.env_size(),
            0x4000,
            "env size is hex even without 0x"
        );
        assert_eq!(redundant.copies[0].sector_size, Some(0x200));
        assert_eq!(redundant.copies[0].sector_count, Some(0x20));
        assert_eq!(
            redundant.copies[1].offset, 0o40000,
            "leading 0 is octal, like strtoll"
        );
    }

    #[test]
    fn numbers_follow_c_conversions() {
        assert_eq!(parse_c_integer("4096"), Some(4096));
        assert_eq!(parse_c_integer("-0x2000"), Some(-0x2000));
        assert_eq!(parse_c_integer("0"), Some(0));
        assert_eq!(parse_c_integer("08"), None, "8 is not an octal digit");
        assert_eq!(parse_hex("10"), Some(16));
        assert_eq!(parse_hex("0x"), None);
        assert_eq!(parse_hex("-1"), None);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("/dev/sda 0\n", 1, "found 2 field"),
            ("# c\n/dev/sda zero 0x2000\n", 2, "offset \"zero\""),
            ("/dev/sda 0 0x20g0\n", 1, "env size"),
            ("/dev/sda 0 0\n", 1, "zero"),
            ("/f 0 0x2000\n/f 0x2000 0x4000\n", 2, "same size"),
            ("/dev/mtd0 0 0x2000\n", 1, "MTD"),
            ("/f 0 0x2000 0x200 1 0 extra\n", 1, "unexpected field"),
        ];
        for (text, line, needle) in cases {
            match parse(text) {
                Err(FwConfigError::Line { line: l, message }) => {
                    assert_eq!(l, line, "{text:?}");
                    assert!(message.contains(needle), "{text:?}: {message}");
                }
                other => panic!("{text:?}: unexpected {other:?}"),
            }
        }
        assert_eq!(parse("# only comments\n\n"), Err(FwConfigError::NoEntries));
    }
}
