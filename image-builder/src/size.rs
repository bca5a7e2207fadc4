//! Human byte sizes (`64MiB`, `4G`, `1048576`) as the CLI and layout files write them.

use thiserror::Error;

/// A size string that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid size {input:?}: {reason} (write e.g. 4096, 64MiB, 2G; K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB powers of 1000)")]
pub struct SizeError {
    /// What was given.
    pub input: String,
    /// Why it was refused.
    pub reason: &'static str,
}

/// Parses `N[unit]`. Bare `K`, `M`, `G`, `T` and the `iB` forms are binary (as `truncate` and
/// `dd` read them); `KB`, `MB`, `GB`, `TB` are decimal.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return Err(err("it does not start with a number"));
    }
    let number: u64 = s[..digits_end]
        .parse()
        .map_err(|_| err("the number is too large"))?;
    let multiplier: u64 = match s[digits_end..].trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(err("unknown unit")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| err("the size overflows 64 bits"))
}

/// Formats bytes for people: `1.5 GiB`, `64 MiB`, `512 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Rounds `value` up to a multiple of `align` (a power of two or not).
pub fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_per_unit() {
        let cases = [
            ("4096", 4096),
            ("512B", 512),
            ("64MiB", 64 << 20),
            ("64M", 64 << 20),
            ("2G", 2 << 30),
            ("1 GiB", 1 << 30),
            ("3KB", 3000),
            ("1TiB", 1 << 40),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_sizes_say_why() {
        for (input, reason) in [
            ("", "it does not start with a number"),
            ("MiB", "it does not start with a number"),
            ("12 parsecs", "unknown unit"),
            ("99999999999999999999", "the number is too large"),
            ("20000000T", "the size overflows 64 bits"),
        ] {
            assert_eq!(parse_size(input).unwrap_err().reason, reason, "{input}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
