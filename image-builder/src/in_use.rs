//! Is a block device in use? Mounted (itself, one of its partitions, or a device stacked on it
//! such as dm-crypt or LVM), used as swap, or held by another block device. Flashing such a
//! device would destroy a running system, so `flash` refuses it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rota_bootctl::mountinfo;

/// A block device number as `major:minor`, the form sysfs and mountinfo use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    fn from_rdev(rdev: u64) -> Self {
        DevNum {
            major: rustix::fs::major(rdev),
            minor: rustix::fs::minor(rdev),
        }
    }

    /// Parses `"254:1"`.
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.trim().split_once(':')?;
        Some(DevNum {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    fn sysfs(self) -> PathBuf {
        PathBuf::from(format!("/sys/dev/block/{}:{}", self.major, self.minor))
    }
}

/// The device number of the block device at `path`, or `None` when it is not one.
pub fn block_dev_of(path: &Path) -> io::Result<Option<DevNum>> {
    let meta = fs::metadata(path)?;
    Ok(meta
        .file_type()
        .is_block_device()
        .then(|| DevNum::from_rdev(meta.rdev())))
}

/// One use of a block device: what it is and where it shows up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub device: DevNum,
    pub what: String,
}

/// Parses `/proc/self/mountinfo` text into (device number, mount source, mount point).
pub fn parse_mountinfo(text: &str) -> Vec<(DevNum, String, String)> {
    mountinfo::parse(text)
        .into_iter()
        .map(|mount| {
            let device = DevNum {
                major: mount.major,
                minor: mount.minor,
            };
            (device, mount.source, mount.mount_point)
        })
        .collect()
}

/// Every direct use of a block device on this system: mounts and swap.
fn direct_uses() -> io::Result<Vec<Use>> {
    let mut uses = Vec::new();
    for (dev, source, mount_point) in parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo")?)
    {
        let what = if mount_point == "/" {
            format!("{source} is mounted on / (it holds the running system)")
        } else {
            format!("{source} is mounted on {mount_point}")
        };
        uses.push(Use {
            device: dev,
            what: what.clone(),
        });
        // Some file systems (btrfs) report an anonymous device number: use the source too.
        if source.starts_with("/dev/") {
            if let Ok(Some(dev)) = block_dev_of(Path::new(&source)) {
                uses.push(Use { device: dev, what });
            }
        }
    }
    if let Ok(swaps) = fs::read_to_string("/proc/swaps") {
        for line in swaps.lines().skip(1) {
            if let Some(path) = line.split_whitespace().next() {
                if let Ok(Some(dev)) = block_dev_of(Path::new(path)) {
                    uses.push(Use {
                        device: dev,
                        what: format!("{path} is used as swap"),
                    });
                }
            }
        }
    }
    Ok(uses)
}

/// The devices under `dev`: its slaves (for dm, md, loop-on-device) recursively, and for a
/// partition, its whole disk.
fn underlying(dev: DevNum, out: &mut Vec<DevNum>) {
    if out.contains(&dev) {
        return;
    }
    out.push(dev);
    let Ok(dir) = fs::canonicalize(dev.sysfs()) else {
        return;
    };
    if dir.join("partition").exists() {
        if let Some(disk) = dir.parent().and_then(|p| read_dev(&p.join("dev"))) {
            underlying(disk, out);
        }
    }
    if let Ok(slaves) = fs::read_dir(dir.join("slaves")) {
        for slave in slaves.flatten() {
            if let Some(dev) = read_dev(&slave.path().join("dev")) {
                underlying(dev, out);
            }
        }
    }
}

fn read_dev(path: &Path) -> Option<DevNum> {
    DevNum::parse(&fs::read_to_string(path).ok()?)
}

/// The kernel's name for a device (`vda1`), for messages.
pub fn kernel_name(dev: DevNum) -> String {
    fs::canonicalize(dev.sysfs())
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| format!("{}:{}", dev.major, dev.minor))
}

/// Why `target` (a block device) must not be written, or `None` if nothing uses it.
pub fn why_in_use(target: DevNum) -> io::Result<Option<String>> {
    // Every device that a mount or swap depends on, mapped to the use that needs it.
    let mut needed: BTreeMap<DevNum, String> = BTreeMap::new();
    for direct in direct_uses()? {
        let mut devices = Vec::new();
        underlying(direct.device, &mut devices);
        for dev in devices {
            needed.entry(dev).or_insert_with(|| direct.what.clone());
        }
    }
    if let Some(what) = needed.get(&target) {
        return Ok(Some(what.clone()));
    }
    // A device stacked on the target or on one of its partitions (LVM, dm-crypt, RAID) uses it
    // even when nothing is mounted.
    if let Ok(dir) = fs::canonicalize(target.sysfs()) {
        let mut dirs = vec![dir.clone()];
        if let Ok(children) = fs::read_dir(&dir) {
            dirs.extend(
                children
                    .flatten()
                    .map(|c| c.path())
                    .filter(|p| p.join("partition").exists()),
            );
        }
        for dir in dirs {
            if let Some(holder) = fs::read_dir(dir.join("holders"))
                .ok()
                .and_then(|mut h| h.next())
                .and_then(Result::ok)
            {
                let name = dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                return Ok(Some(format!(
                    "{name} is held by {}",
                    holder.file_name().to_string_lossy()
                )));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    28 27 0:25 / /mnt/my\\040disk ro shared:1 - vfat /dev/sdb1 ro\n\
                    garbage\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(
            mounts,
            vec![
                (
                    DevNum {
                        major: 254,
                        minor: 0
                    },
                    "/dev/vda".to_string(),
                    "/".to_string()
                ),
                (
                    DevNum {
                        major: 0,
                        minor: 25
                    },
                    "/dev/sdb1".to_string(),
                    "/mnt/my disk".to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_root_device_is_in_use() {
        let root = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap())
            .into_iter()
            .find(|(_, _, mount_point)| mount_point == "/")
            .unwrap()
            .0;
        let why = why_in_use(root).unwrap().expect("/ is in use");
        assert!(why.contains("running system"), "{why}");
    }
}
