"""The two bootloader setups: what QEMU runs, what the boot partition holds, and how the host
reads a disk's boot env after a guest stopped.

1. `uboot-arm64`: Debian's qemu_arm64 U-Boot, bootctl's boot.cmd compiled to boot.scr, the env in
   a `uboot.env` file on the FAT boot partition (Linux: `/boot/firmware/uboot.env` via
   `/etc/fw_env.config`). U-Boot's own env in pflash only holds board settings (bootdelay=0).
2. `grub-x86_64`: OVMF, a standalone GRUB EFI binary whose embedded config loads bootctl's grub.cfg
   from the FAT boot partition, grubenv beside it (Linux: `/boot/efi/grub/grubenv`). The disk is
   the golden image converted to qcow2, as a VM would run it.
"""

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cache

ROOT = Path(__file__).resolve().parent.parent
BOOTCTL_BOOT = ROOT / "bootctl/boot"

UBOOT_BIN = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

# GRUB modules the standalone image needs: GPT, FAT/ext4, env, Linux, serial console.
GRUB_MODULES = "part_gpt fat ext2 search normal configfile loadenv linux echo test serial terminal" \
    " regexp true sleep reboot halt"

# First thing GRUB runs: talk on the serial port, find the boot partition, hand over to the
# grub.cfg that bootctl ships (which keeps the A/B logic in one reviewed place). The VM has no
# screen: the kernel's console is the serial port only (exported: configfile starts a new
# context that sees only exported variables).
GRUB_EMBEDDED_CFG = """serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set rota_bootargs="rootwait console=ttyS0,115200"
export rota_bootargs
search --no-floppy --file --set=root /grub/grub.cfg
set prefix=($root)/grub
configfile ($root)/grub/grub.cfg
"""


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run([str(c) for c in cmd], **kw)


class Setup:
    name = ""
    arch = ""  # Debian architecture of the guest
    layout_arch = ""  # rota-image layout's disk.arch
    console = ""
    boot_mount = ""  # where the robot mounts the FAT boot partition

    def qemu_argv(self, disk, state_dir):
        raise NotImplementedError

    def prepare_firmware(self, state_dir):
        """Per-machine firmware state (flash, NVRAM), created fresh for a new machine."""
        raise NotImplementedError

    def boot_files(self, workdir):
        """{path on the FAT partition: host file} for the golden image's boot partition."""
        raise NotImplementedError

    def robot_files(self):
        """{path in the rootfs: text}: how this robot finds its boot env and partitions."""
        raise NotImplementedError

    def read_boot_env(self, disk, boot_offset, workdir):
        """The boot env variables as a dict, read from the disk image on the host."""
        raise NotImplementedError

    def env_bootctl_args(self, disk, boot_offset, workdir):
        """rota-bootctl arguments that read this disk's boot env (copied out of the image) on
        the host, while the guest is off."""
        raise NotImplementedError


def boot_cmd_path():
    return BOOTCTL_BOOT / "uboot/boot.cmd"


def grub_cfg_path():
    return BOOTCTL_BOOT / "grub/grub.cfg"


class UBootArm64(Setup):
    name = "uboot-arm64"
    arch = "arm64"
    layout_arch = "arm64"
    console = "ttyAMA0"
    boot_mount = "/boot/efi"
    # Size of the env file on the FAT partition: boot.cmd imports and exports exactly this much.
    env_size = 0x4000

    def qemu_argv(self, disk, state_dir):
        return ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg",
                "-smp", "1", "-m", "1024", "-display", "none", "-nodefaults", "-serial", "stdio",
                "-no-reboot", "-bios", str(UBOOT_BIN),
                "-drive", f"if=pflash,format=raw,index=1,file={state_dir / 'flash1.img'}",
                "-drive", f"if=none,id=disk,file={disk},format=raw,cache=writeback",
                "-device", "virtio-blk-pci,drive=disk",
                "-netdev", "user,id=net", "-device", "virtio-net-pci,netdev=net,romfile=",
                "-device", "virtio-rng-pci"]

    def prepare_firmware(self, state_dir):
        shutil.copy2(uboot_board_flash() / "flash1.img", state_dir / "flash1.img")

    def boot_files(self, workdir):
        scr = workdir / "boot.scr"
        run(["mkimage", "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none",
             "-n", "rota boot script", "-d", boot_cmd_path(), scr], stdout=subprocess.DEVNULL)
        env_txt = workdir / "uboot-env.txt"
        # A fresh robot: slot A good with the default attempts, slot B empty and unbootable.
        env_txt.write_text("BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=0\n")
        env = workdir / "uboot.env"
        run(["mkenvimage", "-s", hex(self.env_size), "-o", env, env_txt])
        return {"boot.scr": scr, "uboot.env": env}

    def robot_files(self):
        return {
            "etc/fw_env.config": f"{self.boot_mount}/uboot.env 0x0 {hex(self.env_size)}\n",
            "etc/rota/bootctl.toml": 'backend = "uboot"\nuboot_config = "/etc/fw_env.config"\n',
            "etc/fstab": f"PARTLABEL=boot {self.boot_mount} vfat defaults,nofail 0 0\n"
                         "PARTLABEL=data /data ext4 defaults,nofail 0 0\n",
        }

    def read_boot_env(self, disk, boot_offset, workdir):
        env = Path(workdir) / "uboot.env.read"
        run(["mcopy", "-o", "-n", "-i", f"{disk}@@{boot_offset}", "::/uboot.env", env])
        cfg = Path(workdir) / "fw_env.config.read"
        cfg.write_text(f"{env} 0x0 {hex(self.env_size)}\n")
        text = run(["fw_printenv", "-c", cfg], capture_output=True, text=True).stdout
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def env_bootctl_args(self, disk, boot_offset, workdir):
        env = Path(workdir) / "uboot.env.read"
        run(["mcopy", "-o", "-n", "-i", f"{disk}@@{boot_offset}", "::/uboot.env", env])
        cfg = Path(workdir) / "fw_env.config.read"
        cfg.write_text(f"{env} 0x0 {hex(self.env_size)}\n")
        return ["--uboot-config", cfg]


class GrubX86(Setup):
    name = "grub-x86_64"
    arch = "amd64"
    layout_arch = "x86-64"
    console = "ttyS0"
    boot_mount = "/boot/efi"

    def qemu_argv(self, disk, state_dir):
        fmt = "qcow2" if str(disk).endswith(".qcow2") else "raw"
        return ["qemu-system-x86_64", "-M", "q35", *x86_accel(), "-smp", "1", "-m", "1024",
                "-display", "none", "-nodefaults", "-serial", "stdio", "-no-reboot",
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={state_dir / 'OVMF_VARS.fd'}",
                "-drive", f"if=none,id=disk,file={disk},format={fmt},cache=writeback",
                "-device", "virtio-blk-pci,drive=disk,bootindex=0",
                "-netdev", "user,id=net", "-device", "virtio-net-pci,netdev=net,romfile=",
                "-device", "virtio-rng-pci",
                # A hardware watchdog for systemd to arm (RuntimeWatchdogSec in the images).
                "-device", "i6300esb", "-action", "watchdog=reset"]

    def prepare_firmware(self, state_dir):
        shutil.copy2(OVMF_VARS, state_dir / "OVMF_VARS.fd")

    def boot_files(self, workdir):
        efi = grub_efi() / "BOOTX64.EFI"
        env = workdir / "grubenv"
        if env.exists():
            env.unlink()
        run(["grub-editenv", env, "create"])
        run(["grub-editenv", env, "set", "ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0"])
        return {"EFI/BOOT/BOOTX64.EFI": efi, "grub/grub.cfg": grub_cfg_path(),
                "grub/grubenv": env}

    def robot_files(self):
        return {
            "etc/rota/bootctl.toml": f'backend = "grub"\ngrubenv = "{self.boot_mount}/grub/grubenv"\n',
            "etc/fstab": f"PARTLABEL=boot {self.boot_mount} vfat defaults,nofail 0 0\n"
                         "PARTLABEL=data /data ext4 defaults,nofail 0 0\n",
            # Armed by systemd: a hung userspace resets the VM through the i6300esb watchdog.
            "etc/systemd/system.conf.d/watchdog.conf": "[Manager]\nRuntimeWatchdogSec=30\n",
        }

    def read_boot_env(self, disk, boot_offset, workdir):
        env = Path(workdir) / "grubenv.read"
        raw = disk
        if str(disk).endswith(".qcow2"):
            raw = Path(workdir) / "disk-for-env.raw"
            run(["qemu-img", "convert", "-O", "raw", disk, raw])
        run(["mcopy", "-o", "-n", "-i", f"{raw}@@{boot_offset}", "::/grub/grubenv", env])
        text = run(["grub-editenv", env, "list"], capture_output=True, text=True).stdout
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def env_bootctl_args(self, disk, boot_offset, workdir):
        env = Path(workdir) / "grubenv.read"
        part = Path(workdir) / "boot-partition.raw"
        # Only the boot partition, not the whole disk (qemu-img dd counts in bs units).
        copy_range(disk, boot_offset, BOOT_PART_COPY, part)
        run(["mcopy", "-o", "-n", "-i", part, "::/grub/grubenv", env])
        part.unlink()
        return ["--grubenv", env]


SETUPS = {s.name: s for s in (UBootArm64(), GrubX86())}

MIB = 1 << 20
BOOT_PART_COPY = 64 * MIB  # build.BOOT_MIB: the FAT boot partition


def copy_range(disk, offset, length, dest):
    """Copies bytes [offset, offset+length) of a raw or qcow2 disk image to the file dest."""
    disk = Path(disk)
    if not str(disk).endswith(".qcow2"):
        with open(disk, "rb") as src, open(dest, "wb") as out:
            src.seek(offset)
            left = length
            while left:
                data = src.read(min(left, 4 * MIB))
                if not data:
                    break
                out.write(data)
                left -= len(data)
        return
    assert offset % MIB == 0, f"partition offset {offset} is not MiB-aligned"
    # qemu-img dd's count is where it stops, counted from the start of the input (skip
    # included); and it exits 0 when it cannot skip, so the length is checked.
    skip = offset // MIB
    run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=1M", f"skip={skip}",
         f"count={skip + -(-length // MIB)}", f"if={disk}", f"of={dest}"],
        stdout=subprocess.DEVNULL)
    got = Path(dest).stat().st_size
    if got < length:
        raise RuntimeError(f"qemu-img dd copied {got} bytes of {disk} at {offset}, wanted {length}")


def range_sha256(disk, offset, length, workdir):
    """sha256 (hex) of bytes [offset, offset+length) of a raw or qcow2 disk image."""
    import hashlib
    tmp = Path(workdir) / "range.raw"
    if str(disk).endswith(".qcow2"):
        copy_range(disk, offset, length, tmp)
        src, start = tmp, 0
    else:
        src, start = Path(disk), offset
    h = hashlib.sha256()
    try:
        with open(src, "rb") as f:
            f.seek(start)
            left = length
            while left:
                data = f.read(min(left, 4 * MIB))
                if not data:
                    break
                h.update(data)
                left -= len(data)
    finally:
        tmp.unlink(missing_ok=True)
    return h.hexdigest()

# What the KVM probe waits for: the kernel reached userspace (the initramfs' init runs).
KVM_PROBE_MARKER = b"Run /init as init process"
KVM_PROBE_TIMEOUT = 15  # KVM reaches /init in ~2 s; TCG needs ~8.5 s


@functools.lru_cache(maxsize=None)
def x86_accel():
    """QEMU's accelerator options for the x86_64 guests: KVM when /dev/kvm works, else TCG.

    "Works" is measured, not assumed: /dev/kvm can exist where KVM cannot run a guest (nested
    virtualization without VMX gives "KVM internal error" or a kernel that hangs after
    decompression, see the README's host facts). The probe boots the cached Debian kernel and
    initramfs with -accel kvm and waits for the kernel to start /init. ROTA_QEMU_ACCEL=kvm|tcg
    skips the probe. The choice is printed once."""
    forced = os.environ.get("ROTA_QEMU_ACCEL", "")
    if forced in ("kvm", "tcg"):
        choice, why = forced, "ROTA_QEMU_ACCEL"
    else:
        choice, why = probe_kvm()
    print(f"qemu-tests: x86_64 guests use {choice.upper()} ({why})", file=sys.stderr, flush=True)
    # KVM runs the host's CPU model; under TCG QEMU's default model is the fastest (see notes).
    return ["-accel", "kvm", "-cpu", "host"] if choice == "kvm" else ["-accel", "tcg"]


def probe_kvm():
    """("kvm"|"tcg", reason): boots kernel + initramfs under KVM, at most KVM_PROBE_TIMEOUT s."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is missing or not accessible"
    kdir = cache.kernel("amd64")
    initrd = cache.initramfs("amd64") / "initrd.img"
    argv = ["qemu-system-x86_64", "-M", "q35", "-accel", "kvm", "-cpu", "host", "-smp", "1",
            "-m", "512", "-display", "none", "-nodefaults", "-serial", "stdio", "-no-reboot",
            "-kernel", str(kdir / "root/boot" / f"vmlinuz-{cache.kernel_version(kdir)}"),
            "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1"]
    t = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out = b""
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() - t < KVM_PROBE_TIMEOUT and proc.poll() is None:
            try:
                data = proc.stdout.read() or b""
            except BlockingIOError:
                data = b""
            out += data
            if KVM_PROBE_MARKER in out:
                return "kvm", f"probe booted a kernel to /init in {time.monotonic() - t:.1f}s"
            if b"KVM internal error" in out:
                break  # QEMU stops the guest and waits; no need to run out the clock
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = out.decode(errors="replace")
    error = next((line.strip() for line in text.splitlines() if "KVM" in line), "")
    what = error or f"no {KVM_PROBE_MARKER.decode()!r} within {KVM_PROBE_TIMEOUT}s"
    return "tcg", f"KVM probe failed: {what}"


def uboot_board_flash():
    """U-Boot's own env in pflash with bootdelay=0 (the board's setting, not Rota's state).

    Made by booting U-Boot once, stopping autoboot and `saveenv`, so the env is exactly what this
    U-Boot build writes."""
    import harness

    key = cache.digest(cache.RECIPE_VERSION, UBOOT_BIN.read_bytes(), "bootdelay=0 virtio0 console")

    def build(tmp):
        flash = tmp / "flash1.img"
        run(["truncate", "-s", "64M", flash])
        argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg",
                "-m", "256", "-display", "none", "-nodefaults", "-serial", "stdio", "-no-reboot",
                "-bios", str(UBOOT_BIN), "-drive", f"if=pflash,format=raw,index=1,file={flash}"]
        m = harness.Machine("uboot-flash", lambda _d: argv, flash, tmp / "logs")
        m.boot()
        try:
            m.expect("Hit any key to stop autoboot", 120)
            m.type(" ")
            m.expect("=> ", 30)
            # virtio0 only: the golden disk is the robot's one boot medium (skips qfw/usb/scsi).
            # rota_bootargs: this board's console, read by boot.cmd.
            m.type("setenv bootdelay 0; setenv boot_targets virtio0;"
                   " setenv rota_bootargs 'console=ttyAMA0 rootwait'; saveenv\n")
            m.expect(r"^OK$", 60)
        finally:
            m.power_cut()
        shutil.rmtree(tmp / "logs", ignore_errors=True)

    return cache.entry("uboot-flash", "arm64", key, build)


def grub_efi():
    """The standalone GRUB EFI binary (modules + embedded config), cached."""
    version = run(["dpkg-query", "-W", "-f=${Version}", "grub-efi-amd64-bin"],
                  capture_output=True, text=True).stdout
    key = cache.digest(cache.RECIPE_VERSION, version, GRUB_MODULES, GRUB_EMBEDDED_CFG)

    def build(tmp):
        cfg = tmp / "embedded.cfg"
        cfg.write_text(GRUB_EMBEDDED_CFG)
        run(["grub-mkstandalone", "-O", "x86_64-efi", f"--modules={GRUB_MODULES}", "--locales=",
             "--fonts=", "--themes=", "-o", tmp / "BOOTX64.EFI", f"boot/grub/grub.cfg={cfg}"])

    return cache.entry("grub-efi", "amd64", key, build)


def scratch():
    return Path(tempfile.mkdtemp(prefix="rota-qemu-"))
