//! Where each partition goes (the plan) and writing the protective MBR and GPT for it.

use super::layout::{Arch, DataSize, Layout, ALIGN};
use crate::size::human;
use gpt::disk::LogicalBlockSize;
use gpt::partition::Partition;
use gpt::partition_types::{self, Type};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use thiserror::Error;

/// Sector size of the images we build.
pub const SECTOR: u64 = 512;

/// Sectors the backup GPT needs at the end of the disk (header + 128 entries of 128 bytes).
const BACKUP_GPT_SECTORS: u64 = 33;

/// The role of a partition, in disk order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Boot,
    RootfsA,
    RootfsB,
    Data,
}

impl Role {
    /// The GPT partition name, which the updater and boot scripts look partitions up by.
    pub fn name(self) -> &'static str {
        match self {
            Role::Boot => "boot",
            Role::RootfsA => "rootfs-a",
            Role::RootfsB => "rootfs-b",
            Role::Data => "data",
        }
    }
}

/// One partition's place on the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placed {
    pub role: Role,
    pub name: &'static str,
    /// Byte offset from the start of the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// GPT partition type GUID.
    pub type_guid: String,
}

/// A layout that does not fit its disk.
#[derive(Debug, Error)]
pub enum PlanError {
    #[error("`rootfs-a.size`: the image {image} is {} but the slot is {}", human(*image_size), human(*slot_size))]
    ImageTooLarge {
        image: String,
        image_size: u64,
        slot_size: u64,
    },
    #[error("`disk.size`: the partitions need {} but the disk is {}", human(*needed), human(*disk))]
    DiskTooSmall { needed: u64, disk: u64 },
    #[error("cannot write the partition table")]
    Gpt(#[from] gpt::GptError),
    #[error("cannot write the protective MBR")]
    Mbr(#[from] gpt::mbr::MBRError),
}

/// The slots' partition type for `arch`.
pub fn slot_type(arch: Arch) -> Type {
    match arch {
        Arch::Arm64 => partition_types::LINUX_ROOT_ARM_64,
        Arch::X86_64 => partition_types::LINUX_ROOT_X64,
        Arch::Arm => partition_types::LINUX_ROOT_ARM_32,
        Arch::X86 => partition_types::LINUX_ROOT_X86,
    }
}

fn type_of(role: Role, arch: Arch) -> Type {
    match role {
        Role::Boot => partition_types::EFI,
        Role::RootfsA | Role::RootfsB => slot_type(arch),
        Role::Data => partition_types::LINUX_FS,
    }
}

/// Places boot, rootfs-a, rootfs-b and data one after the other from 1 MiB on, each starting on
/// a 1 MiB boundary; `data = "rest"` ends on the last whole MiB before the backup GPT.
pub fn plan(layout: &Layout, slot_a_image_size: u64) -> Result<Vec<Placed>, PlanError> {
    let image_rounded = slot_a_image_size.div_ceil(ALIGN).max(1) * ALIGN;
    let slot_a = layout.slot_a_size.unwrap_or(image_rounded);
    if slot_a_image_size > slot_a {
        return Err(PlanError::ImageTooLarge {
            image: layout.slot_a_image.display().to_string(),
            image_size: slot_a_image_size,
            slot_size: slot_a,
        });
    }
    let slot_b = layout.slot_b_size.unwrap_or(slot_a);
    // The usable area ends before the backup GPT; keep whole MiBs.
    let usable_end = (layout.disk_size.saturating_sub(BACKUP_GPT_SECTORS * SECTOR) / ALIGN) * ALIGN;
    let fixed_end = ALIGN + layout.boot_size + slot_a + slot_b;
    let data = match layout.data_size {
        DataSize::Bytes(size) => size,
        // At least one MiB must be left for "rest" to mean anything.
        DataSize::Rest => usable_end
            .saturating_sub(fixed_end)
            .max(ALIGN.min(usable_end)),
    };
    let needed = fixed_end + data;
    if needed > usable_end || (layout.data_size == DataSize::Rest && fixed_end + ALIGN > usable_end)
    {
        let needed = needed.max(fixed_end + ALIGN) + ALIGN;
        return Err(PlanError::DiskTooSmall {
            needed,
            disk: layout.disk_size,
        });
    }
    let mut offset = ALIGN;
    let mut placed = Vec::new();
    for (role, size) in [
        (Role::Boot, layout.boot_size),
        (Role::RootfsA, slot_a),
        (Role::RootfsB, slot_b),
        (Role::Data, data),
    ] {
        placed.push(Placed {
            role,
            name: role.name(),
            offset,
            size,
            type_guid: type_of(role, layout.arch).guid.to_string(),
        });
        offset += size;
    }
    Ok(placed)
}

/// A GUID derived from `seed` and a purpose, so the same inputs give the same disk.
pub fn derived_guid(seed: &[u8], purpose: &str) -> uuid::Uuid {
    let hash = Sha256::new()
        .chain_update(purpose.as_bytes())
        .chain_update(seed)
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Writes a protective MBR and a primary and backup GPT for `placed` onto `disk`, whose length
/// must already be the disk size. GUIDs are derived from `seed`.
pub fn write_table(
    disk: &mut File,
    arch: Arch,
    placed: &[Placed],
    seed: &[u8],
) -> Result<(), PlanError> {
    let disk_size = disk.metadata().map_err(gpt::GptError::Io)?.len();
    let last_lba = disk_size / SECTOR - 1;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(last_lba).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(disk)?;

    let mut table = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(&mut *disk, Some(derived_guid(seed, "disk")))?;
    let mut partitions = BTreeMap::new();
    for (index, part) in placed.iter().enumerate() {
        partitions.insert(
            index as u32 + 1,
            Partition {
                part_type_guid: type_of(part.role, arch),
                part_guid: derived_guid(seed, part.name),
                first_lba: part.offset / SECTOR,
                last_lba: (part.offset + part.size) / SECTOR - 1,
                flags: 0,
                name: part.name.to_string(),
            },
        );
    }
    table.update_partitions(partitions)?;
    table.write()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::layout::{parse, SlotBContents};
    use super::*;
    use std::path::Path;

    fn layout(disk: &str, data: &str) -> Layout {
        let text = format!(
            "[disk]\nsize = \"{disk}\"\narch = \"x86-64\"\n[boot]\nsize = \"64MiB\"\ndir = \"b\"\n\
             [rootfs-a]\nimage = \"r\"\nsize = \"256MiB\"\n[data]\nsize = \"{data}\"\n"
        );
        parse(&text, Path::new(".")).unwrap()
    }

    #[test]
    fn rest_fills_to_the_last_whole_mib() {
        let placed = plan(&layout("1GiB", "rest"), 100 << 20).unwrap();
        let names: Vec<_> = placed.iter().map(|p| p.name).collect();
        assert_eq!(names, ["boot", "rootfs-a", "rootfs-b", "data"]);
        assert_eq!(placed[0].offset, 1 << 20);
        assert_eq!(
            placed[2].size,
            256 << 20,
            "slot B defaults to slot A's size"
        );
        let data = &placed[3];
        assert_eq!(data.offset, (1 + 64 + 512) << 20);
        assert_eq!(data.offset + data.size, 1023 << 20);
        assert!(placed
            .iter()
            .all(|p| p.offset % ALIGN == 0 && p.size % ALIGN == 0));
        assert_eq!(
            placed[1].type_guid.to_uppercase(),
            "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
        );
    }

    #[test]
    fn too_small_disk_names_sizes() {
        let message = plan(&layout("512MiB", "rest"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("disk.size") && message.contains("512 MiB"),
            "{message}"
        );
        let message = plan(&layout("1GiB", "600MiB"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(message.contains("disk.size"), "{message}");
    }

    #[test]
    fn image_larger_than_slot_is_refused() {
        let message = plan(&layout("1GiB", "rest"), 300 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("rootfs-a.size") && message.contains("300 MiB"),
            "{message}"
        );
        let _ = SlotBContents::Empty;
    }
}
