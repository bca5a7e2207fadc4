//! What this robot is and has, for the fleet server: board, OS release, kernel, network
//! addresses, slot and data sizes, and the tags of its config.
//!
//! Everything comes from files the kernel and the OS already keep (`/proc`, `/sys`,
//! `/etc/os-release`) and one `statvfs`: no extra crate, no child process, a few small reads.
//! The daemon collects it at start-up and then every `server.inventory_interval`, and sends it
//! only when it changed ([`crate::daemon`]). A fact that cannot be read is left out rather than
//! failing the report: a VM has no device tree, a container may hide `/sys`.
//!
//! Parsers take `&str`; [`Probe`] does the reading, under a root directory that tests point
//! at a tree of their own.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rota_protocol::robot::{DiskInfo, Inventory};

use crate::config::Config;

/// Where the facts are read from: `/` on a robot.
pub struct Probe {
    root: PathBuf,
}

impl Default for Probe {
    fn default() -> Self {
        Probe { root: "/".into() }
    }
}

impl Probe {
    /// Reads `/proc`, `/sys` and `/etc` under `root` instead of `/` (slot devices and the
    /// state directory are the config's own paths).
    pub fn under(root: impl Into<PathBuf>) -> Probe {
        Probe { root: root.into() }
    }

    fn read(&self, path: &str) -> Option<String> {
        let path = self.root.join(path.trim_start_matches('/'));
        match fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(error) => {
                if error.kind() != io::ErrorKind::NotFound {
                    log::debug!("inventory: {}: {error}", path.display());
                }
                None
            }
        }
    }

    pub fn collect(&self, config: &Config) -> Inventory {
        let (os, os_version) = self
            .read("/etc/os-release")
            .or_else(|| self.read("/usr/lib/os-release"))
            .map(|text| parse_os_release(&text))
            .unwrap_or_default();
        let mut addresses: Vec<String> = self
            .read("/proc/net/fib_trie")
            .map(|text| parse_fib_trie(&text))
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        addresses.extend(
            self.read("/proc/net/if_inet6")
                .map(|text| parse_if_inet6(&text))
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string),
        );
        let data_dir = config.state_path.parent().unwrap_or(Path::new("/"));
        let (data_bytes, data_free_bytes) = file_system_size(data_dir).unzip();
        Inventory {
            board: Some(self.board().unwrap_or_else(|| config.compatible.clone())),
            os,
            os_version,
            kernel: self
                .read("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_owned())
                .filter(|text| !text.is_empty()),
            addresses,
            disk: Some(DiskInfo {
                slot_a_bytes: self.device_size(&config.slot_a),
                slot_b_bytes: self.device_size(&config.slot_b),
                data_bytes,
                data_free_bytes,
            }),
            tags: config
                .server
                .as_ref()
                .map(|server| server.tags.clone())
                .unwrap_or_default(),
            apps: crate::apps::inventory(&config.apps),
        }
    }

    /// The device tree's model (ARM boards), else DMI's product name (PCs, most VMs).
    fn board(&self) -> Option<String> {
        ["/proc/device-tree/model", "/sys/class/dmi/id/product_name"]
            .into_iter()
            .filter_map(|path| self.read(path))
            .map(|text| {
                text.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_owned()
            })
            .find(|model| !model.is_empty())
    }

    /// A regular file's length (tests, images) or a block device's size from sysfs.
    fn device_size(&self, path: &Path) -> Option<u64> {
        use std::os::unix::fs::FileTypeExt as _;
        let metadata = fs::metadata(path).ok()?;
        if metadata.is_file() {
            return Some(metadata.len());
        }
        if !metadata.file_type().is_block_device() {
            return None;
        }
        // /dev/disk/by-partlabel/rootfs-a -> /dev/mmcblk0p2 -> /sys/class/block/mmcblk0p2/size
        let device = fs::canonicalize(path).ok()?;
        let name = device.file_name()?.to_str()?;
        let sectors: u64 = self
            .read(&format!("/sys/class/block/{name}/size"))?
            .trim()
            .parse()
            .ok()?;
        // sysfs counts 512-byte sectors whatever the device's own block size.
        Some(sectors * 512)
    }
}

/// Size and free space of the file system holding `dir`. Free space moves all the time; it is
/// rounded down to a hundredth of the size (at least 1 MiB) so that a log line written does
/// not count as an inventory change to send.
fn file_system_size(dir: &Path) -> Option<(u64, u64)> {
    let stat = match rustix::fs::statvfs(dir) {
        Ok(stat) => stat,
        Err(error) => {
            log::debug!("inventory: statvfs {}: {error}", dir.display());
            return None;
        }
    };
    let size = stat.f_blocks * stat.f_frsize;
    let free = stat.f_bavail * stat.f_frsize;
    let granule = (size / 100).max(1 << 20);
    Some((size, free / granule * granule))
}

/// `PRETTY_NAME` and `VERSION_ID` of an os-release file (shell-like `KEY="value"` lines).
pub fn parse_os_release(text: &str) -> (Option<String>, Option<String>) {
    let mut pretty = None;
    let mut version = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        if value.is_empty() {
            continue;
        }
        match key {
            "PRETTY_NAME" => pretty = Some(value),
            "VERSION_ID" => version = Some(value),
            _ => {}
        }
    }
    (pretty, version)
}

/// os-release values may be in double or single quotes, with `\"`, `\\`, `\$`, `` \` `` escapes.
fn unquote(value: &str) -> String {
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'');
    let Some(quote) = quote else {
        return value.to_owned();
    };
    let inner = value[1..].strip_suffix(quote).unwrap_or(&value[1..]);
    if quote == '\'' {
        return inner.to_owned();
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The IPv4 addresses of this host's interfaces, from `/proc/net/fib_trie`: each address of
/// the local table is followed by a `/32 host LOCAL` line. Loopback is left out.
pub fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut found = BTreeSet::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(address) = line
            .strip_prefix("|-- ")
            .or_else(|| line.strip_prefix("+-- "))
        {
            // `+-- 10.0.0.0/8 2 0 2` names a subtree, `|-- 10.0.4.17` a leaf.
            last = address
                .split_whitespace()
                .next()
                .and_then(|word| word.parse().ok());
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(address) = last.filter(|address| !address.is_loopback()) {
                found.insert(address);
            }
        }
    }
    found.into_iter().collect()
}

/// The IPv6 addresses of `/proc/net/if_inet6` (`ADDRESS IFINDEX PREFIX SCOPE FLAGS NAME`)
/// other than loopback and link-local ones, which mean nothing off the robot's own link.
pub fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    const SCOPE_HOST: u32 = 0x10;
    const SCOPE_LINK: u32 = 0x20;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [hex, _, _, scope, _, _] = fields[..] else {
            continue;
        };
        let (Ok(bits), Ok(scope)) = (
            u128::from_str_radix(hex, 16),
            u32::from_str_radix(scope, 16),
        ) else {
            continue;
        };
        if hex.len() != 32 || scope & (SCOPE_HOST | SCOPE_LINK) != 0 {
            continue;
        }
        let address = Ipv6Addr::from(bits);
        if !address.is_loopback() {
            found.insert(address);
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n\
                    VERSION_ID=\"12\"\nID=debian\n# comment\n";
        assert_eq!(
            parse_os_release(text),
            (
                Some("Debian GNU/Linux 12 (bookworm)".into()),
                Some("12".into())
            )
        );
        let yocto = "PRETTY_NAME='Poky (Yocto Project Reference Distro) 5.0.4'\nVERSION_ID=5.0.4\n";
        assert_eq!(
            parse_os_release(yocto),
            (
                Some("Poky (Yocto Project Reference Distro) 5.0.4".into()),
                Some("5.0.4".into())
            )
        );
        assert_eq!(
            parse_os_release("PRETTY_NAME=\"say \\\"hi\\\"\"\nVERSION_ID=\n"),
            (Some("say \"hi\"".into()), None)
        );
    }

    #[test]
    fn fib_trie_yields_local_addresses_without_loopback() {
        // Trimmed from a Raspberry Pi with wlan0 and eth0 up.
        let text = "\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.4.0/24 2 0 2
        |-- 10.0.4.0
           /24 link UNICAST
        |-- 10.0.4.17
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     |-- 192.168.7.2
        /32 host LOCAL
     |-- 10.0.4.17
        /32 host LOCAL
";
        assert_eq!(
            parse_fib_trie(text),
            [Ipv4Addr::new(10, 0, 4, 17), Ipv4Addr::new(192, 168, 7, 2)]
        );
    }

    #[test]
    fn if_inet6_skips_loopback_and_link_local() {
        let text = "\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000b827ebfffe123456 03 40 20 80    wlan0
fd000000000000000000000000000017 02 40 00 80     eth0
garbage
";
        assert_eq!(
            parse_if_inet6(text),
            ["fd00::17".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn a_probe_reads_a_tree_and_falls_back_to_compatible() {
        let root = tempfile::tempdir().unwrap();
        let put = |path: &str, text: &str| {
            let path = root.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        put(
            "etc/os-release",
            "PRETTY_NAME=\"Rota OS 2.1\"\nVERSION_ID=2.1\n",
        );
        put("proc/sys/kernel/osrelease", "6.6.31-rota\n");
        put(
            "proc/net/if_inet6",
            "fd000000000000000000000000000017 02 40 00 80 eth0\n",
        );
        put("slot-a", &"a".repeat(4096));
        put("data/state", "");
        let text = format!(
            "compatible = \"lekiwi-rpi5\"\nstate_path = \"{data}/state\"\n\
             [slots]\nA = \"{root}/slot-a\"\nB = \"{root}/missing\"\n\
             [server]\nurl = \"http://fleet\"\ntags = {{ site = \"lab\" }}\n",
            root = root.path().display(),
            data = root.path().join("data").display(),
        );
        let raw = crate::config::RawConfig::parse(&text, Path::new("t.toml")).unwrap();
        let config = crate::config::merge_and_validate(vec![("t.toml".into(), raw)]).unwrap();

        let bare = Probe::under(root.path()).collect(&config);
        assert_eq!(bare.board.as_deref(), Some("lekiwi-rpi5"));
        assert_eq!(bare.os.as_deref(), Some("Rota OS 2.1"));
        assert_eq!(bare.os_version.as_deref(), Some("2.1"));
        assert_eq!(bare.kernel.as_deref(), Some("6.6.31-rota"));
        assert_eq!(bare.addresses, ["fd00::17"]);
        assert_eq!(bare.tags.get("site").map(String::as_str), Some("lab"));
        let disk = bare.disk.unwrap();
        assert_eq!(disk.slot_a_bytes, Some(4096));
        assert_eq!(disk.slot_b_bytes, None);
        let (size, free) = (disk.data_bytes.unwrap(), disk.data_free_bytes.unwrap());
        assert!(size > 0 && free <= size, "{size} {free}");

        // DMI names a PC; a device tree, when there is one, names the board first.
        put(
            "sys/class/dmi/id/product_name",
            "Standard PC (Q35 + ICH9, 2009)\n",
        );
        let pc = Probe::under(root.path()).collect(&config);
        assert_eq!(pc.board.as_deref(), Some("Standard PC (Q35 + ICH9, 2009)"));
        put("proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\0");
        let pi = Probe::under(root.path()).collect(&config);
        assert_eq!(pi.board.as_deref(), Some("Raspberry Pi 5 Model B Rev 1.0"));
    }
}
