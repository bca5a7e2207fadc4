"""Keyed cache of the slow inputs: Debian rootfs trees, kernels, initramfs images.

Every entry lives in a directory named after its kind, its architecture and a hash of its recipe
(the commands and files that produce it), so changing a recipe builds a new entry while an unchanged
one is reused. Entries are built in a temporary directory and renamed into place when complete, so
an interrupted build never leaves a half-made entry behind; a lock file serialises concurrent runs.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("ROTA_QEMU_CACHE", "/var/cache/rota-qemu-tests"))
SUITE = "bookworm"
MIRROR = os.environ.get("ROTA_DEBIAN_MIRROR", "http://deb.debian.org/debian")

# Bumping this rebuilds every entry (for changes to this file's recipes that the keys miss).
RECIPE_VERSION = "3"

ARCHES = {
    # debian arch -> facts the recipes need
    "arm64": {"kernel_pkg": "linux-image-arm64"},
    "amd64": {"kernel_pkg": "linux-image-amd64"},
}

ROOTFS_PACKAGES = ["systemd", "systemd-sysv", "udev", "kmod", "dbus"]

# Modules the initramfs loads to reach an ext4 root on virtio-blk (order from modules.dep).
INITRAMFS_MODULES = ["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"]

# Module trees copied into the rootfs: enough for the virtual hardware the tests use, so that
# slot images and bundles stay small (the whole Debian module tree is ~350 MB).
ROOTFS_MODULE_DIRS = [
    "kernel/drivers/virtio",
    "kernel/drivers/block",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/watchdog",
    "kernel/drivers/char/hw_random",
    "kernel/drivers/rtc",
    "kernel/fs/ext4",
    "kernel/fs/jbd2",
    "kernel/fs/mbcache.ko",
    "kernel/fs/fat",
    "kernel/fs/nls",
    "kernel/fs/efivarfs",
    "kernel/lib",
    "kernel/crypto",
]


def log(msg):
    print(f"cache: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    """Runs a command, failing loudly with the command line when it fails."""
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def out(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def entry(kind, arch, key, build):
    """Returns the cache directory for (kind, arch, key), building it with build(tmpdir) if absent."""
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / f"{kind}-{arch}-{key}"
    if (final / ".complete").exists():
        return final
    with open(CACHE / f".{kind}-{arch}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-{arch}-", dir=CACHE))
        tmp.chmod(0o755)  # apt-get download drops privileges to _apt
        log(f"building {final.name}")
        try:
            build(tmp)
            (tmp / ".complete").write_text(key + "\n")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Older entries of the same kind and arch are garbage once a new one exists.
        for old in CACHE.glob(f"{kind}-{arch}-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def apt_resolve(pkg, arch):
    """Returns 'name version' of the real package behind a meta package, e.g. the versioned kernel."""
    spec = f"{pkg}:{arch}"
    deps = out(["apt-cache", "depends", "--no-recommends", "--no-suggests", spec])
    for line in deps.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            spec = line.split()[1]
            break
    name = spec.split(":")[0]
    policy = out(["apt-cache", "policy", f"{name}:{arch}"])
    version = next(l.split()[1] for l in policy.splitlines() if "Candidate:" in l)
    return name, version


def download_deb(name, version, arch, into):
    run(["apt-get", "download", "-q", f"{name}:{arch}={version}"], cwd=into,
        stdout=subprocess.DEVNULL)
    return next(Path(into).glob(f"{name}_*.deb"))


def kernel(arch):
    """Debian's kernel unpacked: vmlinuz, System.map, lib/modules/VERSION with modules.dep."""
    name, version = apt_resolve(ARCHES[arch]["kernel_pkg"], arch)
    key = digest(RECIPE_VERSION, name, version)

    def build(tmp):
        deb = download_deb(name, version, arch, tmp)
        run(["dpkg", "-x", str(deb), str(tmp / "root")])
        deb.unlink()
        kver = name.removeprefix("linux-image-")
        run(["depmod", "-b", str(tmp / "root"), kver])
        (tmp / "version").write_text(kver + "\n")

    return entry("kernel", arch, key, build)


def kernel_version(kdir):
    return (kdir / "version").read_text().strip()


def module_order(kroot, kver, names):
    """Module files (relative to lib/modules/KVER) to load for names, dependencies first."""
    mdir = kroot / "lib/modules" / kver
    deps = {}
    by_name = {}
    for line in (mdir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        base = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[base] = path
    order = []

    def visit(path):
        if path in order:
            return
        # modules.dep lists the full dependency closure, deepest last.
        for dep in reversed(deps[path]):
            visit(dep)
        order.append(path)

    for n in names:
        visit(by_name[n])
    return order


def busybox(arch):
    name, version = "busybox-static", apt_resolve("busybox-static", arch)[1]
    key = digest(RECIPE_VERSION, name, version)

    def build(tmp):
        deb = download_deb(name, version, arch, tmp)
        run(["dpkg", "-x", str(deb), str(tmp / "root")])
        deb.unlink()
        shutil.copy2(tmp / "root/bin/busybox", tmp / "busybox")
        shutil.rmtree(tmp / "root")

    return entry("busybox", arch, key, build)


def initramfs(arch):
    """A small initramfs: busybox, the virtio/ext4 modules and init (see initramfs-init)."""
    kdir = kernel(arch)
    bdir = busybox(arch)
    init = (HERE / "initramfs-init").read_bytes()
    key = digest(RECIPE_VERSION, kdir.name, bdir.name, init, INITRAMFS_MODULES)

    def build(tmp):
        kver = kernel_version(kdir)
        root = tmp / "root"
        for d in ["bin", "dev", "proc", "sys", "newroot", "lib/modules"]:
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(bdir / "busybox", root / "bin/busybox")
        (root / "init").write_bytes(init)
        (root / "init").chmod(0o755)
        order = module_order(kdir / "root", kver, INITRAMFS_MODULES)
        names = []
        for rel in order:
            src = kdir / "root/lib/modules" / kver / rel
            dst = root / "lib/modules" / Path(rel).name
            data = src.read_bytes()
            # busybox insmod takes plain ELF; Debian may ship modules compressed.
            if rel.endswith(".xz"):
                data = out_bytes(["xz", "-dc", str(src)])
                dst = dst.with_suffix("")
            elif rel.endswith(".zst"):
                data = out_bytes(["zstd", "-dc", str(src)])
                dst = dst.with_suffix("")
            dst.write_bytes(data)
            names.append(dst.name)
        (root / "modules").write_text("\n".join(names) + "\n")
        files = run(["find", ".", "-print0"], cwd=root, capture_output=True).stdout
        cpio = run(["cpio", "--null", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root,
                   input=files, capture_output=True).stdout
        (tmp / "initrd.img").write_bytes(cpio)
        shutil.rmtree(root)

    return entry("initramfs", arch, key, build)


def out_bytes(cmd):
    return subprocess.run(cmd, check=True, capture_output=True).stdout


def base_rootfs(arch):
    """A minimal Debian with systemd and udev (udev: without it the serial getty waits 90 s)."""
    recipe = ["debootstrap", f"--arch={arch}", "--variant=minbase",
              "--include=" + ",".join(ROOTFS_PACKAGES), SUITE, MIRROR]
    key = digest(RECIPE_VERSION, *recipe)

    def build(tmp):
        root = tmp / "root"
        run(recipe[:-2] + [SUITE, str(root), MIRROR], stdout=subprocess.DEVNULL)
        # What a robot image does not need: documentation, locales, apt's caches.
        for d in ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                  "var/cache/apt", "var/lib/apt/lists"]:
            shutil.rmtree(root / d, ignore_errors=True)
            (root / d).mkdir(parents=True, exist_ok=True)

    return entry("rootfs", arch, key, build)


def kernel_modules_subset(kdir, dest_root):
    """Copies the modules the test VMs need into dest_root/lib/modules/KVER and runs depmod."""
    kver = kernel_version(kdir)
    src = kdir / "root/lib/modules" / kver
    dst = dest_root / "lib/modules" / kver
    dst.mkdir(parents=True, exist_ok=True)
    for rel in ROOTFS_MODULE_DIRS:
        s = src / rel
        if not s.exists():
            # Compressed module names carry a suffix.
            matches = list(s.parent.glob(s.name + ".*")) if s.parent.exists() else []
            if not matches:
                continue
            s = matches[0]
            rel = str(Path(rel).parent / s.name)
        d = dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True)
        else:
            shutil.copy2(s, d)
    for f in ["modules.order", "modules.builtin", "modules.builtin.modinfo"]:
        if (src / f).exists():
            shutil.copy2(src / f, dst / f)
    run(["depmod", "-b", str(dest_root), kver])
    return kver


if __name__ == "__main__":
    # `python3 cache.py [arch...]` warms the cache.
    for a in sys.argv[1:] or list(ARCHES):
        for f in (base_rootfs, kernel, initramfs):
            print(f(a))
