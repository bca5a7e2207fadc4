"""Builds what the guests boot: per-version rootfs trees, filesystem images and disks.

A version's rootfs is the cached Debian base plus the kernel (in /boot, so it changes with its
slot), the modules the virtual hardware needs, the robot binaries and their units, and a small
test layer: root autologin on the serial console and DHCP through systemd-networkd without waiting
for the network. Variants break one thing on purpose (a failing health check, an init that dies).
"""

import os
import shutil
import subprocess
from pathlib import Path

import cache

# Console device of each architecture's QEMU machine.
CONSOLE = {"arm64": "ttyAMA0", "amd64": "ttyS0"}


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run([str(c) for c in cmd], **kw)


def write(path, text, mode=0o644):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def symlink(target, link):
    link = Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def rootfs_tree(arch, dest, version, variant="good", overlay=None):
    """Builds a version's rootfs tree at dest from the cached base; returns dest.

    overlay(root) adds the robot's own files (binaries, units, config) when given."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    base = cache.base_rootfs(arch) / "root"
    kdir = cache.kernel(arch)
    initrd = cache.initramfs(arch) / "initrd.img"
    run(["cp", "-a", base, dest])
    kver = cache.kernel_modules_subset(kdir, dest)
    # The boot scripts load /boot/vmlinuz and /boot/initrd.img from the slot's filesystem.
    shutil.copy2(kdir / "root/boot" / f"vmlinuz-{kver}", dest / "boot/vmlinuz")
    shutil.copy2(initrd, dest / "boot/initrd.img")

    write(dest / "etc/hostname", "robot\n")
    write(dest / "etc/hosts", "127.0.0.1 localhost\n127.0.1.1 robot\n")
    write(dest / "etc/rota-test/version", f"{version}\n")
    write(dest / "etc/rota-test/variant", f"{variant}\n")

    # Autologin on the serial console: the harness types commands there.
    write(dest / "etc/systemd/system/serial-getty@.service.d/autologin.conf",
          "[Service]\nExecStart=\n"
          "ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud"
          " 115200,57600,38400,9600 - $TERM\n")
    # Network by DHCP from QEMU's user networking; nothing waits for it.
    write(dest / "etc/systemd/network/10-dhcp.network",
          "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n")
    sd = dest / "etc/systemd/system"
    symlink("/lib/systemd/system/systemd-networkd.service",
            sd / "multi-user.target.wants/systemd-networkd.service")
    symlink("/lib/systemd/system/systemd-networkd.socket",
            sd / "sockets.target.wants/systemd-networkd.socket")
    # udev's coldplug of ~90 virtual terminals costs seconds under TCG; only the serial console
    # among them matters (its getty waits for the device unit).
    write(sd / "systemd-udev-trigger.service.d/lean.conf",
          "[Service]\nExecStart=\n"
          "ExecStart=-udevadm trigger --type=subsystems --action=add\n"
          "ExecStart=-udevadm trigger --type=devices --action=add --subsystem-nomatch=tty"
          " --subsystem-nomatch=vc --subsystem-nomatch=bdi --subsystem-nomatch=mem"
          " --subsystem-nomatch=memory --subsystem-nomatch=workqueue\n"
          f"ExecStart=-udevadm trigger --type=devices --action=add --subsystem-match=tty"
          f" --sysname-match={CONSOLE[arch]}\n")
    # Timers and jobs a test boot does not need, and which steal the single vCPU.
    for unit in ["apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
                 "e2scrub_all.timer", "fstrim.timer", "e2scrub_reap.service",
                 "systemd-networkd-wait-online.service", "getty@tty1.service"]:
        symlink("/dev/null", sd / unit)
    for wants in ["timers.target.wants", "multi-user.target.wants", "getty.target.wants"]:
        for link in (sd / wants).glob("*"):
            if (sd / link.name).is_symlink() and os.readlink(sd / link.name) == "/dev/null":
                link.unlink()

    if overlay:
        overlay(dest)

    if variant == "init-dies":
        # The kernel panics ("Attempted to kill init") as soon as this slot's init exits.
        init = dest / "sbin/init"
        init.unlink()
        write(init, "#!/bin/sh\necho 'rota-test: init of the broken slot exits'\nexit 1\n",
              0o755)
    return dest


def ext4_image(tree, path, size_mib, label):
    path = Path(path)
    if path.exists():
        path.unlink()
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, "-E", "root_owner=0:0", path,
         f"{size_mib}M"], stdout=subprocess.DEVNULL)
    return path


def fat_image(files, path, size_mib, label="BOOT"):
    """A FAT16 image holding files ({name_in_fat: host_path}) at its root."""
    path = Path(path)
    if path.exists():
        path.unlink()
    run(["truncate", "-s", f"{size_mib}M", path])
    run(["mkfs.vfat", "-F", "16" if size_mib < 512 else "32", "-n", label, path],
        stdout=subprocess.DEVNULL)
    for name, src in files.items():
        parent = Path(name).parent
        if str(parent) != ".":
            # mmd fails when the directory exists; create each level once.
            acc = ""
            for part in parent.parts:
                acc = f"{acc}/{part}"
                run(["mmd", "-D", "s", "-i", path, f"::{acc}"], check=False,
                    stderr=subprocess.DEVNULL)
        run(["mcopy", "-o", "-i", path, src, f"::/{name}"])
    return path


def gpt_disk(path, parts, total_mib):
    """Writes a GPT disk from [(label, typecode, size_mib, image_or_None)]; 1 MiB aligned."""
    path = Path(path)
    if path.exists():
        path.unlink()
    run(["truncate", "-s", f"{total_mib}M", path])
    args = ["sgdisk", "-o"]
    for i, (label, code, size, _) in enumerate(parts, start=1):
        args += [f"-n{i}:0:+{size}M", f"-t{i}:{code}", f"-c{i}:{label}"]
    run(args + [path], stdout=subprocess.DEVNULL)
    offset = 1  # MiB: sgdisk's default alignment puts partition 1 at 1 MiB
    for label, code, size, image in parts:
        if image:
            run(["dd", f"if={image}", f"of={path}", "bs=1M", f"seek={offset}", "conv=notrunc,sparse",
                 "status=none"])
        offset += size
    return path
