"""Builds every input of a setup with the project's own tools: the Debian packages
(`scripts/package`: rota-robot for both guests, installed into every rootfs by the rootfs's own
dpkg in a chroot; rota-server and rota-cli for the x86_64 guest to install while it runs),
rootfs images (`rota-image rootfs`), signed bundles (`rota-image bundle`) and the golden disk
(`rota-image golden`).

Versions, all built from the same cached Debian base:
  1.0.0  the golden image's slot A
  2.0.0  a good update
  3.0.0  its health check fails (robot-app.service exits 1)
  4.0.0  its init exits at once, so the kernel panics ("Attempted to kill init")
  5.0.0  a good update, installed after power cuts interrupted it
  6.0.0  a good update whose commit is interrupted by power cuts

and the releases of an app beside the OS (`rota-image app`, scenario 7), the demo HTTP service
of `demo-app` (perl-base, in every Debian rootfs) on 127.0.0.1:8080:
  demo 1.0.0, 2.0.0  answer "demo version V: ok" (200); their check wants that version
  demo 3.0.0         answers 503 "demo version 3.0.0: motor controller missing": its check fails

Built images are cached under the cache dir, keyed by everything that goes into them (base
rootfs, kernel, the rota-robot package, boot scripts, these recipes), so a warm run only boots.
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

# The demo app's releases: version -> what its HEALTH file says ("ok", or why it answers 503).
APP_NAME = "demo"
APP_UNIT = "rota-demo.service"
APP_PORT = 8080
APP_VERSIONS = {
    "1.0.0": "ok",
    "2.0.0": "ok",
    "3.0.0": "motor controller missing",
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
    """rota-image and rota-bootctl for the host, in debug mode (their dependencies are optimised,
    profile.dev), built exactly as the workspace tests build them: after scripts/test's nextest
    run nothing compiles, and `scripts/package --dev` (the x86_64 packages) runs the same
    command. A `cargo build` resolves features without the dev-dependencies' and would rebuild
    most dependencies a second time."""
    # Quiet unless it fails: it lists every test executable on stderr.
    built = subprocess.run(["cargo", "test", "--locked", "-q", "--workspace", "--no-run"],
                           cwd=ROOT, capture_output=True, text=True)
    if built.returncode != 0:
        sys.stderr.write(built.stderr)
        raise RuntimeError("cargo test --no-run failed")
    return target_dir() / "debug"


def packages(arch, only):
    """scripts/package's Debian packages for the guest architecture: {name: path of the .deb}.

    arm64 packages are cross-built release builds (as shipped); the x86_64 guests get --dev
    packages of the host's debug build, which the workspace tests build anyway. A fixed
    SOURCE_DATE_EPOCH makes the packages depend on their contents only, so an image built from
    them stays cached across commits that change nothing in them."""
    cmd = [ROOT / "scripts/package", "--arch", arch]
    for o in only:
        cmd += ["--only", o]
    if arch == "amd64":
        cmd.append("--dev")
    out = run(cmd, cwd=ROOT, capture_output=True, text=True,
              env={**os.environ, "SOURCE_DATE_EPOCH": "0"}).stdout
    debs = {Path(line).name.split("_")[0]: ROOT / line for line in out.split()}
    for name, deb in debs.items():
        if not deb.is_file():
            raise RuntimeError(f"{deb} was not built")
    return debs


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


def robot_overlay(setup, robot_deb, pubkey, variant):
    """Returns overlay(root): the robot layer of a rootfs (the rota-robot package, config)."""

    def overlay(root):
        # As an image recipe would: the rootfs's own dpkg (arm64's through binfmt; the host's
        # would refuse a foreign architecture) installs it, and its maintainer scripts enable
        # rota-commit.service for the first boot and start nothing.
        shutil.copy2(robot_deb, root / "tmp" / robot_deb.name)
        run(["chroot", root, "dpkg", "-i", f"/tmp/{robot_deb.name}"], stdout=subprocess.DEVNULL)
        (root / "tmp" / robot_deb.name).unlink()
        images.write(root / "etc/rota/keys/test.pub", Path(pubkey).read_text())
        images.write(root / "etc/rota/updater.toml", updater_toml(setup))
        for path, text in setup.robot_files().items():
            images.write(root / path, text)
        (root / "data").mkdir(exist_ok=True)
        (root / setup.boot_mount.lstrip("/")).mkdir(parents=True, exist_ok=True)
        sd = root / "etc/systemd/system"
        for link in ("multi-user.target.wants", "boot-complete.target.requires"):
            if not (sd / link / "rota-commit.service").is_symlink():
                raise RuntimeError(f"rota-robot's postinst did not enable rota-commit.service"
                                   f" ({link})")
        # The scenarios install and resume by hand and check the state between steps; the fleet
        # daemon would resume an interrupted install at boot behind their back (there is no
        # server to poll here).
        images.symlink("/dev/null", sd / "rota-updater.service")
        images.write(sd / "rota-commit.service.d/test-hooks.conf", COMMIT_TEST_DROPIN)
        images.write(sd / "robot-app.service", ROBOT_APP_UNIT)
        images.symlink("../robot-app.service", sd / "multi-user.target.wants/robot-app.service")
        healthy = variant != "bad-health"
        images.write(root / "usr/lib/rota-test/robot-app",
                     "#!/bin/sh\n" + ("echo 'robot-app: running'\nexit 0\n" if healthy else
                                      "echo 'robot-app: cannot open /dev/motor0' >&2\nexit 1\n"),
                     0o755)

    return overlay


def app_spec(version, healthy):
    """rota-app.toml of a demo release: its unit restarted, and checks that it answers as this
    version (so a restart that kept the old process fails them) and that its unit runs. A
    failing check is asked again until the deadline: the unhealthy release's is short, so its
    switch back costs the scenario seconds, not half a minute."""
    return f"""name = "{APP_NAME}"
units = ["{APP_UNIT}"]
check_deadline_secs = {30 if healthy else 6}

[[checks]]
name = "answers"
http = "http://127.0.0.1:{APP_PORT}/"
expect_status = 200
body_contains = "demo version {version}:"

[[checks]]
name = "running"
unit = "{APP_UNIT}"
"""


def build_apps(setup, rota_image):
    """The demo app's signed releases for this setup's robots (same key and compatible string
    as the OS bundles): {version: path of demo-VERSION.rota}. Small and quick; cached anyway."""
    keydir = keys(rota_image)
    key = cache.digest(cache.RECIPE_VERSION, setup.name, sorted(APP_VERSIONS.items()),
                       file_digest(rota_image, keydir / "test.pub", HERE / "demo-app",
                                   HERE / "build.py"))

    def build(tmp):
        for version, health in APP_VERSIONS.items():
            tree = tmp / "tree"
            images.write(tree / "rota-app.toml", app_spec(version, health == "ok"))
            images.write(tree / "serve", (HERE / "demo-app").read_text(), 0o755)
            images.write(tree / "VERSION", f"{version}\n")
            images.write(tree / "HEALTH", f"{health}\n")
            run([rota_image, "app", tree, "--compatible", f"rota-qemu-{setup.name}",
                 "--version", version, "--key", keydir / "test.key",
                 "--description", f"qemu test app: {health}",
                 "-o", tmp / f"{APP_NAME}-{version}.rota"], stdout=subprocess.DEVNULL,
                env={**os.environ, "SOURCE_DATE_EPOCH": "0"})
            shutil.rmtree(tree)
        log(f"{setup.name}: built app {APP_NAME} {', '.join(APP_VERSIONS)}")

    entry = cache.entry(f"apps-{setup.name}", setup.arch, key, build)
    return {v: entry / f"{APP_NAME}-{v}.rota" for v in APP_VERSIONS}


@dataclass
class Artifacts:
    setup: object
    golden: Path  # the golden disk as built (raw, or qcow2 for the GRUB VM)
    boot_offset: int  # byte offset of the FAT boot partition (for reading the env on the host)
    bundles: dict = field(default_factory=dict)  # version -> bundle path
    keyring: Path = None
    partitions: dict = field(default_factory=dict)  # name -> (byte offset, byte size)
    rota_image: Path = None
    fleet_debs: list = field(default_factory=list)  # rota-server and rota-cli, where tested
    apps: dict = field(default_factory=dict)  # demo app version -> app release path

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


def build_setup(setup, rota_image, debs):
    """Builds (or takes from the cache) the bundles and the golden disk of one setup."""
    versions = build_versions(setup, rota_image, debs["rota-robot"], "rota-server" in debs)
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
                     rota_image=rota_image,
                     fleet_debs=[debs[n] for n in ("rota-server", "rota-cli") if n in debs],
                     apps=build_apps(setup, rota_image))


def build_versions(setup, rota_image, robot_deb, room_for_fleet):
    """Slot A's image of the golden disk (1.0.0) and the signed bundles of the other versions."""
    keydir = keys(rota_image)
    key = cache.digest(room_for_fleet, 
        cache.RECIPE_VERSION,
        cache.base_rootfs(setup.arch).name, cache.kernel(setup.arch).name,
        cache.initramfs(setup.arch).name,
        file_digest(robot_deb, rota_image, keydir / "test.pub", HERE / "build.py",
                    HERE / "images.py"),
        setup.name, sorted(setup.robot_files().items()), sorted(VERSIONS.items()))

    def build(tmp):
        pub = keydir / "test.pub"
        secret = keydir / "test.key"
        for version, variant in VERSIONS.items():
            tree = images.rootfs_tree(setup.arch, tmp / "tree", version, variant,
                                      robot_overlay(setup, robot_deb, pub, variant))
            img = tmp / f"rootfs-{version}.ext4"
            # The golden slot A, where the fleet's packages get installed while it runs, fills
            # its partition: sized from its tree, it has ~40 MiB free, less than they take.
            size = ["--size", f"{SLOT_MIB}MiB"] if version == "1.0.0" and room_for_fleet else []
            run([rota_image, "rootfs", tree, "-o", img, "--fs", "ext4", "--label", "rootfs",
                 *size], stdout=subprocess.DEVNULL)
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
