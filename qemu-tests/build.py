"""Builds every input of a setup with the project's own tools: the robot binaries (aarch64 through
scripts/aarch64, the host's for x86_64), rootfs images (`rota-image rootfs`), signed bundles
(`rota-image bundle`) and the golden disk (`rota-image golden`).

Versions, all built from the same cached Debian base:
  1.0.0  the golden image's slot A
  2.0.0  a good update
  3.0.0  its health check fails (robot-app.service exits 1)
  4.0.0  its init exits at once, so the kernel panics ("Attempted to kill init")
  5.0.0  a good update, installed after power cuts interrupted it
  6.0.0  a good update whose commit is interrupted by power cuts

Built images are cached under the cache dir, keyed by everything that goes into them (base
rootfs, kernel, binaries, boot scripts, these recipes), so a warm run only boots.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cache
import images
import setups

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

VERSIONS = {
    "1.0.0": "good",
    "2.0.0": "good",
    "3.0.0": "bad-health",
    "4.0.0": "init-dies",
    "5.0.0": "good",
    "6.0.0": "good",
}

# Slot partitions hold the largest rootfs image; the data partition the updater's state.
SLOT_MIB = 320
BOOT_MIB = 64
DATA_MIB = 64


def log(msg):
    print(f"build: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run([str(c) for c in cmd], **kw)


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def host_tools():
    """rota-image (and the host's robot binaries, used by the x86_64 guests) in debug mode: the
    workspace tests build them anyway, and their dependencies are optimised (profile.dev)."""
    run(["cargo", "build", "--locked", "-q", "-p", "rota-image", "-p", "rota-bootctl",
         "-p", "rota-updater"], cwd=ROOT)
    return target_dir() / "debug"


def robot_binaries(arch):
    """Directory holding rota-bootctl and rota-updater for the guest architecture."""
    if arch == "arm64":
        run([ROOT / "scripts/aarch64", "build"], cwd=ROOT)
        d = ROOT / "target/aarch64-unknown-linux-gnu/release"
    else:
        d = host_tools()
    for b in ("rota-bootctl", "rota-updater"):
        if not (d / b).is_file():
            raise RuntimeError(f"{d / b} was not built")
    return d


def file_digest(*paths):
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(str(p.name).encode())
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    return h.hexdigest()[:16]


def keys(rota_image):
    """A signing key pair for the test bundles (any key works; cached so images stay cached)."""
    def build(tmp):
        run([rota_image, "keygen", "--out", tmp / "test"], stdout=subprocess.DEVNULL)
    return cache.entry("keys", "any", "v1", build)


def shipped_unit(name):
    """A systemd unit shipped by the updater crate, if it ships one."""
    found = sorted(ROOT.glob(f"updater/**/{name}"))
    found = [f for f in found if "target" not in f.parts]
    return found[0] if found else None


# Used only when the updater crate ships no unit of its own.
FALLBACK_COMMIT_UNIT = """[Unit]
Description=Rota: health-check and commit the trial boot, or record a rollback
RequiresMountsFor=/data {boot_mount}
Before=boot-complete.target
Wants=boot-complete.target

[Service]
Type=notify
ExecStart=/usr/bin/rota-updater commit
WatchdogSec=60
TimeoutStartSec=600
FailureAction=reboot

[Install]
WantedBy=multi-user.target
RequiredBy=boot-complete.target
"""

ROBOT_APP_UNIT = """[Unit]
Description=The robot's application (its start is this test image's health check)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/rota-test/robot-app

[Install]
WantedBy=multi-user.target
"""

# Test hooks around the commit: a failpoint armed for one boot from the data partition (moved to
# /run before the updater starts, so the next boot runs clean), the updater's log on the serial
# console, and a console line when the commit is decided (boot-to-commit time).
COMMIT_TEST_DROPIN = """[Service]
ExecStartPre=-/bin/sh -c 'mkdir -p /run/rota-test; mv /data/rota-test/commit.env /run/rota-test/ 2>/dev/null; sync; true'
EnvironmentFile=-/run/rota-test/commit.env
StandardOutput=journal+console
StandardError=journal+console
ExecStartPost=/bin/sh -c 'echo "ROTA-TEST commit-finished result=ready status=0" > /dev/console'
ExecStopPost=/bin/sh -c 'echo "ROTA-TEST commit-finished result=$SERVICE_RESULT status=$EXIT_STATUS" > /dev/console'
"""


def updater_toml(setup):
    return f"""# rota-updater config of the QEMU test robots
compatible = "rota-qemu-{setup.name}"
keyring_dir = "/etc/rota/keys"
state_path = "/data/rota/state"
bootctl_config = "/etc/rota/bootctl.toml"

[health]
deadline_secs = 120

[[health.checks]]
name = "robot-app"
unit = "robot-app.service"
"""


def robot_overlay(setup, bindir, pubkey, variant):
    """Returns overlay(root): the robot layer of a rootfs (binaries, units, config)."""

    def overlay(root):
        for b in ("rota-bootctl", "rota-updater"):
            if setup.arch == "amd64":
                # Host debug builds carry ~100 MB of debug info a slot image does not need
                # (the aarch64 release builds are stripped already).
                run(["strip", "--strip-debug", "-o", root / "usr/bin" / b, bindir / b])
            else:
                shutil.copy2(bindir / b, root / "usr/bin" / b)
            (root / "usr/bin" / b).chmod(0o755)
        images.write(root / "etc/rota/keys/test.pub", Path(pubkey).read_text())
        images.write(root / "etc/rota/updater.toml", updater_toml(setup))
        for path, text in setup.robot_files().items():
            images.write(root / path, text)
        (root / "data").mkdir(exist_ok=True)
        (root / setup.boot_mount.lstrip("/")).mkdir(parents=True, exist_ok=True)
        sd = root / "etc/systemd/system"
        unit = shipped_unit("rota-commit.service")
        if unit:
            shutil.copy2(unit, sd / "rota-commit.service")
        else:
            images.write(sd / "rota-commit.service",
                         FALLBACK_COMMIT_UNIT.format(boot_mount=setup.boot_mount))
        images.symlink("../rota-commit.service", sd / "multi-user.target.wants/rota-commit.service")
        images.symlink("../rota-commit.service", sd / "boot-complete.target.requires/rota-commit.service")
        images.write(sd / "rota-commit.service.d/test-hooks.conf", COMMIT_TEST_DROPIN)
        images.write(sd / "robot-app.service", ROBOT_APP_UNIT)
        images.symlink("../robot-app.service", sd / "multi-user.target.wants/robot-app.service")
        healthy = variant != "bad-health"
        images.write(root / "usr/lib/rota-test/robot-app",
                     "#!/bin/sh\n" + ("echo 'robot-app: running'\nexit 0\n" if healthy else
                                      "echo 'robot-app: cannot open /dev/motor0' >&2\nexit 1\n"),
                     0o755)

    return overlay


@dataclass
class Artifacts:
    setup: object
    golden: Path  # the golden disk as built (raw, or qcow2 for the GRUB VM)
    boot_offset: int  # byte offset of the FAT boot partition (for reading the env on the host)
    bundles: dict = field(default_factory=dict)  # version -> bundle path
    keyring: Path = None
    partitions: dict = field(default_factory=dict)  # name -> (byte offset, byte size)
    rota_image: Path = None

    def image_digest(self, version):
        """(size, sha256) of the rootfs image in version's bundle, from its verified manifest."""
        if version not in self._digests:
            out = run([self.rota_image, "inspect", self.bundles[version], "--keyring",
                       self.keyring, "--json"], capture_output=True, text=True).stdout
            self._digests[version] = rootfs_digest(json.loads(out))
        return self._digests[version]

    def __post_init__(self):
        self._digests = {}


def rootfs_digest(manifest):
    """(size, sha256) of the first image with both fields anywhere in inspect's JSON."""
    stack = [manifest]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            if isinstance(node.get("size"), int) and isinstance(node.get("sha256"), str):
                return node["size"], node["sha256"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise RuntimeError(f"no image size and sha256 in the bundle's manifest: {manifest}")


def build_setup(setup, rota_image, bindir):
    """Builds (or takes from the cache) the bundles and the golden disk of one setup."""
    versions = build_versions(setup, rota_image, bindir)
    golden = build_golden(setup, rota_image, versions)
    report = json.loads((golden / "golden.json").read_text())
    boot = next(p for p in report["partitions"] if p["name"] == "boot")
    fmt = "qcow2" if setup.arch == "amd64" else "raw"
    return Artifacts(setup=setup, golden=golden / f"golden.{fmt}",
                     boot_offset=int(boot["offset"]),
                     bundles={v: versions / f"rota-{v}.rota" for v in VERSIONS if v != "1.0.0"},
                     keyring=keys(rota_image),
                     partitions={p["name"]: (int(p["offset"]), int(p["size"]))
                                 for p in report["partitions"]},
                     rota_image=rota_image)


def build_versions(setup, rota_image, bindir):
    """Slot A's image of the golden disk (1.0.0) and the signed bundles of the other versions."""
    keydir = keys(rota_image)
    unit = shipped_unit("rota-commit.service")
    key = cache.digest(
        cache.RECIPE_VERSION,
        cache.base_rootfs(setup.arch).name, cache.kernel(setup.arch).name,
        cache.initramfs(setup.arch).name,
        file_digest(bindir / "rota-bootctl", bindir / "rota-updater", rota_image,
                    keydir / "test.pub", HERE / "build.py", HERE / "images.py",
                    *([unit] if unit else [])),
        setup.name, sorted(setup.robot_files().items()), sorted(VERSIONS.items()))

    def build(tmp):
        pub = keydir / "test.pub"
        secret = keydir / "test.key"
        for version, variant in VERSIONS.items():
            tree = images.rootfs_tree(setup.arch, tmp / "tree", version, variant,
                                      robot_overlay(setup, bindir, pub, variant))
            img = tmp / f"rootfs-{version}.ext4"
            run([rota_image, "rootfs", tree, "-o", img, "--fs", "ext4", "--label", "rootfs"],
                stdout=subprocess.DEVNULL)
            shutil.rmtree(tree)
            if version != "1.0.0":
                run([rota_image, "bundle", "--compatible", f"rota-qemu-{setup.name}",
                     "--version", version, "--key", secret, "--image", f"rootfs={img}",
                     "--zstd", "--description", f"qemu test {variant}",
                     "-o", tmp / f"rota-{version}.rota"], stdout=subprocess.DEVNULL)
                img.unlink()
            log(f"{setup.name}: built {version} ({variant})")

    return cache.entry(f"versions-{setup.name}", setup.arch, key, build)


def build_golden(setup, rota_image, versions):
    """The golden disk: boot partition (bootloader, boot script, fresh boot env) and 1.0.0 in A."""
    workdir = cache.CACHE / f".boot-files-{setup.name}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    boot_files = setup.boot_files(workdir)
    layout = f"""[disk]
size = "{BOOT_MIB + 2 * SLOT_MIB + DATA_MIB + 2}MiB"
arch = "{setup.layout_arch}"

[boot]
size = "{BOOT_MIB}MiB"
dir = "boot"

[rootfs-a]
image = "{versions / "rootfs-1.0.0.ext4"}"
size = "{SLOT_MIB}MiB"

[rootfs-b]
size = "{SLOT_MIB}MiB"
contents = "empty"

[data]
size = "{DATA_MIB}MiB"
label = "data"
"""
    key = cache.digest(cache.RECIPE_VERSION, versions.name, layout,
                       sorted((n, file_digest(p)) for n, p in boot_files.items()),
                       file_digest(rota_image))

    def build(tmp):
        bootdir = tmp / "boot"
        for name, src in boot_files.items():
            dst = bootdir / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        (tmp / "layout.toml").write_text(layout)
        fmt = "qcow2" if setup.arch == "amd64" else "raw"
        out = run([rota_image, "golden", "--layout", tmp / "layout.toml", "-o",
                   tmp / f"golden.{fmt}", "--format", fmt, "--json"],
                  capture_output=True, text=True).stdout
        (tmp / "golden.json").write_text(out)

    try:
        return cache.entry(f"golden-{setup.name}", setup.arch, key, build)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
