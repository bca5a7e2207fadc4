//! `/proc/self/mountinfo` (see proc(5)): what is mounted where, from which device. The updater
//! reads it to never write a mounted slot, the image builder to never flash a device in use;
//! both use this one parser.

/// One line of mountinfo: `id parent major:minor root mount-point options [optional...] -
/// fstype source super-options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    /// Where it is mounted, unescaped.
    pub mount_point: String,
    /// What is mounted (a device path, or whatever the file system calls its source), unescaped.
    pub source: String,
}

/// Every line that parses; others (truncated, garbage) are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (major, minor) = fields.get(2)?.split_once(':')?;
            let separator = fields.iter().skip(6).position(|field| *field == "-")? + 6;
            Some(Mount {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                mount_point: unescape(fields.get(4)?),
                source: unescape(fields.get(separator + 2).unwrap_or(&"")),
            })
        })
        .collect()
}

/// The kernel escapes space, tab, newline and backslash as a backslash and three octal digits
/// (`\040`); anything else after a backslash is taken as it is.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| digits.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_and_without_optional_fields() {
        let text = "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
                    40 22 7:0 / /mnt/with\\040space rw - squashfs /data/slot\\040b.img ro\n\
                    garbage\n\
                    41 22 8:1 / /boot rw master:2 propagate_from:1 - vfat /dev/sda1 rw\n";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!((mounts[0].major, mounts[0].minor), (259, 2));
        assert_eq!(mounts[0].mount_point, "/");
        assert_eq!(mounts[0].source, "/dev/nvme0n1p2");
        assert_eq!(mounts[1].mount_point, "/mnt/with space");
        assert_eq!(mounts[1].source, "/data/slot b.img");
        assert_eq!(
            (mounts[2].mount_point.as_str(), mounts[2].source.as_str()),
            ("/boot", "/dev/sda1")
        );
    }

    /// Regression: the updater's parser took `\8` and `\9` digits for octal and produced `?`,
    /// the image builder's did not; the two disagreed on the same line.
    #[test]
    fn escapes_are_exactly_three_octal_digits() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("tab\\011nl\\012bs\\134"), "tab\tnl\nbs\\");
        assert_eq!(unescape("not\\089octal"), "not\\089octal");
        assert_eq!(unescape("short\\04"), "short\\04");
        assert_eq!(unescape("end\\"), "end\\");
    }
}
