//! The golden disk's layout file (TOML), read in two stages: the raw file as written
//! ([`RawLayout`], unknown keys refused) and the validated [`Layout`] with sizes in bytes and
//! paths resolved against the layout file's directory. Every error names the key at fault.
//!
//! ```toml
//! [disk]
//! size = "4GiB"        # whole disk
//! arch = "arm64"       # arm64 | x86-64 | arm | x86: picks the slots' GPT type GUID
//!
//! [boot]               # FAT, EFI System Partition type
//! size = "64MiB"
//! dir = "boot"         # files copied to the FAT root (bootloader, boot script, boot env)
//! label = "BOOT"       # optional, default BOOT
//!
//! [rootfs-a]
//! image = "rootfs.img" # a file system image (`rota-image rootfs`)
//! size = "1GiB"        # optional, default: the image's size rounded up to 1 MiB
//!
//! [rootfs-b]
//! size = "1GiB"        # optional, default: rootfs-a's size
//! contents = "empty"   # empty | copy-of-a
//!
//! [data]               # ext4
//! size = "rest"        # a size, or rest: up to the end of the disk
//! label = "data"       # optional, default data
//! dir = "data"         # optional: files to put on it
//! ```

use crate::size::{align_up, parse_size};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Partition alignment: 1 MiB, what every partitioning tool uses and what flash media like.
pub const ALIGN: u64 = 1 << 20;

/// A layout file that cannot be used.
#[derive(Debug, Error)]
pub enum LayoutError {
    /// Not TOML, a missing table or key, an unknown key, a value of the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// A value that parsed but makes no sense.
    #[error("`{key}`: {message}")]
    Key { key: &'static str, message: String },
}

fn key_err(key: &'static str, message: impl Into<String>) -> LayoutError {
    LayoutError::Key {
        key,
        message: message.into(),
    }
}

/// The file exactly as written, one table per partition plus `[disk]`.
#[derive(Debug)]
pub struct RawLayout {
    pub disk: RawDisk,
    pub boot: RawBoot,
    pub rootfs_a: RawSlotA,
    pub rootfs_b: RawSlotB,
    pub data: RawData,
}

/// A size as written: a string with a unit (`"64MiB"`) or a plain number of bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

impl RawSize {
    fn text(&self) -> String {
        match self {
            RawSize::Bytes(bytes) => bytes.to_string(),
            RawSize::Text(text) => text.clone(),
        }
    }
}

const TABLES: [&str; 5] = ["disk", "boot", "rootfs-a", "rootfs-b", "data"];

/// Reads one table, prefixing errors with its name so they point at `table.key`.
fn table<T: serde::de::DeserializeOwned>(
    doc: &mut toml::Table,
    name: &'static str,
    required: bool,
) -> Result<Option<T>, LayoutError> {
    match doc.remove(name) {
        None if required => Err(LayoutError::Syntax(format!("missing table [{name}]"))),
        None => Ok(None),
        Some(value) => value.try_into().map(Some).map_err(|e: toml::de::Error| {
            LayoutError::Syntax(format!("in [{name}]: {}", e.message().trim()))
        }),
    }
}

impl RawLayout {
    /// Parses the TOML text; unknown tables and keys are errors (a typo must not be ignored).
    pub fn parse(text: &str) -> Result<Self, LayoutError> {
        let mut doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| LayoutError::Syntax(e.to_string()))?;
        if let Some(unknown) = doc.keys().find(|k| !TABLES.contains(&k.as_str())) {
            return Err(LayoutError::Syntax(format!(
                "unknown table or key `{unknown}` (expected {})",
                TABLES.join(", ")
            )));
        }
        Ok(RawLayout {
            disk: table(&mut doc, "disk", true)?.ok_or_else(|| missing("disk"))?,
            boot: table(&mut doc, "boot", true)?.ok_or_else(|| missing("boot"))?,
            rootfs_a: table(&mut doc, "rootfs-a", true)?.ok_or_else(|| missing("rootfs-a"))?,
            rootfs_b: table(&mut doc, "rootfs-b", false)?.unwrap_or_default(),
            data: table(&mut doc, "data", true)?.ok_or_else(|| missing("data"))?,
        })
    }
}

fn missing(name: &str) -> LayoutError {
    LayoutError::Syntax(format!("missing table [{name}]"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisk {
    pub size: RawSize,
    pub arch: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoot {
    pub size: RawSize,
    pub dir: PathBuf,
    pub label: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlotA {
    pub image: PathBuf,
    pub size: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlotB {
    pub size: Option<RawSize>,
    pub contents: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    pub size: RawSize,
    pub label: Option<String>,
    pub dir: Option<PathBuf>,
}

/// The CPU architecture of the slots, which picks their GPT partition type (the Discoverable
/// Partitions Specification's "root" type per architecture).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Arch {
    #[serde(rename = "arm64")]
    Arm64,
    #[serde(rename = "x86-64")]
    X86_64,
    #[serde(rename = "arm")]
    Arm,
    #[serde(rename = "x86")]
    X86,
}

/// What slot B starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotBContents {
    /// Nothing (all zeros): the first update fills it.
    Empty,
    /// The same image as slot A.
    CopyOfA,
}

/// A size given in bytes or as "what is left of the disk".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSize {
    Bytes(u64),
    Rest,
}

/// A validated layout. Sizes are in bytes, rounded up to [`ALIGN`]; paths are absolute or
/// relative to the current directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_size: u64,
    pub arch: Arch,
    pub boot_size: u64,
    pub boot_dir: PathBuf,
    pub boot_label: String,
    pub slot_a_image: PathBuf,
    /// `None`: the image's size rounded up.
    pub slot_a_size: Option<u64>,
    /// `None`: the same as slot A.
    pub slot_b_size: Option<u64>,
    pub slot_b_contents: SlotBContents,
    pub data_size: DataSize,
    pub data_label: String,
    pub data_dir: Option<PathBuf>,
}

fn size_of(key: &'static str, value: &str) -> Result<u64, LayoutError> {
    let bytes = parse_size(value).map_err(|e| key_err(key, e.to_string()))?;
    if bytes == 0 {
        return Err(key_err(key, "must be larger than 0"));
    }
    Ok(align_up(bytes, ALIGN))
}

fn fat_label(key: &'static str, label: &str) -> Result<String, LayoutError> {
    if label.is_empty() || label.len() > 11 || !label.is_ascii() {
        return Err(key_err(
            key,
            format!("{label:?} is not a FAT label (1 to 11 ASCII characters)"),
        ));
    }
    Ok(label.to_string())
}

/// Parses and validates layout text. `base` is the directory relative paths are taken from
/// (the layout file's directory).
pub fn parse(text: &str, base: &Path) -> Result<Layout, LayoutError> {
    let raw = RawLayout::parse(text)?;
    let arch = match raw.disk.arch.as_str() {
        "arm64" | "aarch64" => Arch::Arm64,
        "x86-64" | "x86_64" | "amd64" => Arch::X86_64,
        "arm" | "armhf" => Arch::Arm,
        "x86" | "i386" => Arch::X86,
        other => {
            return Err(key_err(
                "disk.arch",
                format!("unknown architecture {other:?} (arm64, x86-64, arm or x86)"),
            ))
        }
    };
    let slot_b_contents = match raw.rootfs_b.contents.as_deref() {
        None | Some("empty") => SlotBContents::Empty,
        Some("copy-of-a") => SlotBContents::CopyOfA,
        Some(other) => {
            return Err(key_err(
                "rootfs-b.contents",
                format!("{other:?} is neither \"empty\" nor \"copy-of-a\""),
            ))
        }
    };
    let data_size = match raw.data.size.text().as_str() {
        "rest" => DataSize::Rest,
        value => DataSize::Bytes(size_of("data.size", value)?),
    };
    if raw.boot.dir.as_os_str().is_empty() {
        return Err(key_err("boot.dir", "is empty"));
    }
    Ok(Layout {
        disk_size: parse_size(&raw.disk.size.text())
            .map_err(|e| key_err("disk.size", e.to_string()))?,
        arch,
        boot_size: size_of("boot.size", &raw.boot.size.text())?,
        boot_dir: base.join(raw.boot.dir),
        boot_label: fat_label("boot.label", raw.boot.label.as_deref().unwrap_or("BOOT"))?,
        slot_a_image: base.join(raw.rootfs_a.image),
        slot_a_size: raw
            .rootfs_a
            .size
            .map(|s| size_of("rootfs-a.size", &s.text()))
            .transpose()?,
        slot_b_size: raw
            .rootfs_b
            .size
            .map(|s| size_of("rootfs-b.size", &s.text()))
            .transpose()?,
        slot_b_contents,
        data_size,
        data_label: raw.data.label.unwrap_or_else(|| "data".to_string()),
        data_dir: raw.data.dir.map(|d| base.join(d)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[disk]
size = "4GiB"
arch = "arm64"
[boot]
size = "64MiB"
dir = "boot"
[rootfs-a]
image = "rootfs.img"
[rootfs-b]
contents = "copy-of-a"
[data]
size = "rest"
"#;

    #[test]
    fn good_layout_resolves_paths_and_defaults() {
        let layout = parse(GOOD, Path::new("/srv/img")).unwrap();
        assert_eq!(layout.disk_size, 4 << 30);
        assert_eq!(layout.arch, Arch::Arm64);
        assert_eq!(layout.boot_dir, Path::new("/srv/img/boot"));
        assert_eq!(layout.boot_label, "BOOT");
        assert_eq!(layout.slot_a_image, Path::new("/srv/img/rootfs.img"));
        assert_eq!(layout.slot_b_contents, SlotBContents::CopyOfA);
        assert_eq!(layout.data_size, DataSize::Rest);
        assert_eq!(layout.data_label, "data");
    }

    #[test]
    fn sizes_round_up_to_alignment() {
        let text = GOOD.replace("\"64MiB\"", "\"63000000\"");
        assert_eq!(parse(&text, Path::new(".")).unwrap().boot_size, 61 << 20);
    }

    /// Each broken layout must name the key at fault.
    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                GOOD.replace("arch = \"arm64\"", "arch = \"sparc\""),
                "disk.arch",
            ),
            (
                GOOD.replace("size = \"4GiB\"", "size = \"4 parsecs\""),
                "disk.size",
            ),
            (
                GOOD.replace("size = \"64MiB\"", "size = \"0\""),
                "boot.size",
            ),
            (
                GOOD.replace("\"copy-of-a\"", "\"clone\""),
                "rootfs-b.contents",
            ),
            (
                GOOD.replace("size = \"rest\"", "size = \"lots\""),
                "data.size",
            ),
            (
                GOOD.replace(
                    "dir = \"boot\"",
                    "dir = \"boot\"\nlabel = \"A-VERY-LONG-LABEL\"",
                ),
                "boot.label",
            ),
            (GOOD.replace("[data]\nsize = \"rest\"", ""), "[data]"),
            (
                GOOD.replace(
                    "image = \"rootfs.img\"",
                    "image = \"rootfs.img\"\nimgae = 1",
                ),
                "imgae",
            ),
            (GOOD.replace("size = \"64MiB\"", "size = true"), "[boot]"),
            (GOOD.replace("[rootfs-b]", "[rootfs-c]"), "rootfs-c"),
            (
                GOOD.replace("image = \"rootfs.img\"", "image = 3"),
                "[rootfs-a]",
            ),
            ("[disk\n".to_string(), "line 1"),
        ];
        for (text, key) in cases {
            let message = parse(&text, Path::new(".")).unwrap_err().to_string();
            assert!(message.contains(key), "expected {key:?} in: {message}");
        }
    }

    #[test]
    fn example_layouts_parse() {
        for text in [
            include_str!("../../layouts/rpi5-arm64.toml"),
            include_str!("../../layouts/vm-x86-64.toml"),
        ] {
            parse(text, Path::new("layouts")).unwrap();
        }
    }
}
